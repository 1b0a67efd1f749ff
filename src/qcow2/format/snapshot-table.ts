/**
 * Internal snapshot table (qcow2.txt "Snapshots"): entries of a 40-byte
 * header, extra data, id string, name, padded to 8 bytes.
 */
import { InvalidImageError } from '../errors.js';
import { alignUp, decodeCString, encodeString, getU64, setU64, viewOf } from './bytes.js';
import { MAX_SNAPSHOT_EXTRA_DATA, SNAPSHOT_ENTRY_ALIGN, SNAPSHOT_ICOUNT_NONE, SNAPSHOT_EXTRA_V3_SIZE, SNAPSHOT_HEADER_SIZE } from './constants.js';

/** Offsets, inside an entry's fixed header, of the sizes a reader needs first (qcow2.txt "Snapshot table"). */
export const SNAPSHOT_ID_SIZE_AT = 12;
export const SNAPSHOT_NAME_SIZE_AT = 14;
export const SNAPSHOT_EXTRA_SIZE_AT = 36;

export interface SnapshotEntry {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  vmStateSize: number;
  /** From extra data; undefined when the entry has no such field. */
  vmStateSizeLarge?: number;
  diskSize?: number;
  /** -1 means "no icount recorded"; undefined when the field is absent. */
  icount?: bigint;
  /** Extra data beyond the fields known here, preserved on rewrite. */
  extraUnknown: Uint8Array;
}

export function snapshotEntrySize(e: SnapshotEntry): number {
  const extra = SNAPSHOT_EXTRA_V3_SIZE + e.extraUnknown.length;
  return alignUp(SNAPSHOT_HEADER_SIZE + extra + encodeString(e.id).length + encodeString(e.name).length, SNAPSHOT_ENTRY_ALIGN);
}

/** Decodes `count` entries from buf; throws on entries running past buf. */
export function decodeSnapshotTable(buf: Uint8Array, count: number): SnapshotEntry[] {
  const v = viewOf(buf);
  const out: SnapshotEntry[] = [];
  let pos = 0;
  for (let i = 0; i < count; i++) {
    if (pos + SNAPSHOT_HEADER_SIZE > buf.length) {
      throw new InvalidImageError(`snapshot table entry ${i} runs past the end of the table`);
    }
    const idSize = v.getUint16(pos + SNAPSHOT_ID_SIZE_AT);
    const nameSize = v.getUint16(pos + SNAPSHOT_NAME_SIZE_AT);
    const extraSize = v.getUint32(pos + SNAPSHOT_EXTRA_SIZE_AT);
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
      throw new InvalidImageError(`snapshot ${i} has ${extraSize} bytes of extra data (limit ${MAX_SNAPSHOT_EXTRA_DATA})`);
    }
    const end = pos + SNAPSHOT_HEADER_SIZE + extraSize + idSize + nameSize;
    if (end > buf.length) throw new InvalidImageError(`snapshot table entry ${i} runs past the end of the table`);
    const e: SnapshotEntry = {
      l1TableOffset: getU64(v, pos),
      l1Size: v.getUint32(pos + 8),
      dateSec: v.getUint32(pos + 16),
      dateNsec: v.getUint32(pos + 20),
      vmClockNsec: getU64(v, pos + 24),
      vmStateSize: v.getUint32(pos + 32),
      id: '',
      name: '',
      extraUnknown: new Uint8Array(0),
    };
    const ex = pos + SNAPSHOT_HEADER_SIZE;
    if (extraSize >= 8) e.vmStateSizeLarge = getU64(v, ex);
    if (extraSize >= 16) e.diskSize = getU64(v, ex + 8);
    if (extraSize >= 24) e.icount = v.getBigUint64(ex + 16);
    if (extraSize > 24) e.extraUnknown = buf.slice(ex + 24, ex + extraSize);
    const idStart = ex + extraSize;
    e.id = decodeCString(buf.subarray(idStart, idStart + idSize));
    e.name = decodeCString(buf.subarray(idStart + idSize, idStart + idSize + nameSize));
    out.push(e);
    pos = alignUp(end, SNAPSHOT_ENTRY_ALIGN);
  }
  return out;
}

export function snapshotTableSize(entries: SnapshotEntry[]): number {
  let n = 0;
  for (const e of entries) n += snapshotEntrySize(e);
  return n;
}

/** Encodes entries with the full v3 extra data (24 bytes + preserved unknown bytes). */
export function encodeSnapshotTable(entries: SnapshotEntry[]): Uint8Array {
  const buf = new Uint8Array(snapshotTableSize(entries));
  const v = viewOf(buf);
  let pos = 0;
  for (const e of entries) {
    const id = encodeString(e.id);
    const name = encodeString(e.name);
    const extraSize = SNAPSHOT_EXTRA_V3_SIZE + e.extraUnknown.length;
    setU64(v, pos, e.l1TableOffset);
    v.setUint32(pos + 8, e.l1Size);
    v.setUint16(pos + SNAPSHOT_ID_SIZE_AT, id.length);
    v.setUint16(pos + SNAPSHOT_NAME_SIZE_AT, name.length);
    v.setUint32(pos + 16, e.dateSec);
    v.setUint32(pos + 20, e.dateNsec);
    setU64(v, pos + 24, e.vmClockNsec);
    const vmState = e.vmStateSizeLarge ?? e.vmStateSize;
    v.setUint32(pos + 32, vmState > 0xffffffff ? 0 : vmState);
    v.setUint32(pos + SNAPSHOT_EXTRA_SIZE_AT, extraSize);
    const ex = pos + SNAPSHOT_HEADER_SIZE;
    setU64(v, ex, vmState);
    setU64(v, ex + 8, e.diskSize ?? 0);
    v.setBigUint64(ex + 16, e.icount ?? SNAPSHOT_ICOUNT_NONE);
    buf.set(e.extraUnknown, ex + 24);
    buf.set(id, ex + extraSize);
    buf.set(name, ex + extraSize + id.length);
    pos += snapshotEntrySize(e);
  }
  return buf;
}
