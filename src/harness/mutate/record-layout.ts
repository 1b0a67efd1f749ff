/**
 * Field positions inside a header extension record and a snapshot table
 * entry. Header fields have a table in format/header.ts (HEADER_FIELDS);
 * these two structures do not (yet), so their positions are learnt from the
 * codecs by encoding sentinel values: the layout stays defined in
 * src/qcow2/format only. When format/ exports offset tables for them, this
 * file goes.
 */
import { alignDown, encodeExtensions, encodeSnapshotTable, viewOf, type SnapshotEntry } from '../../qcow2/format/index.js';
import type { FieldWidth } from './common.js';

export interface FieldPos {
  offset: number;
  width: FieldWidth;
}

/** Indices where two equally long prefixes differ. */
function diffIndices(a: Uint8Array, b: Uint8Array): number[] {
  const out: number[] = [];
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

function findU32(buf: Uint8Array, value: number): number {
  const v = viewOf(buf);
  for (let i = 0; i + 4 <= buf.length; i++) if (v.getUint32(i) === value) return i;
  throw new Error(`probe value ${value} not found`);
}

function findU16(buf: Uint8Array, value: number): number {
  const v = viewOf(buf);
  for (let i = 0; i + 2 <= buf.length; i++) if (v.getUint16(i) === value) return i;
  throw new Error(`probe value ${value} not found`);
}

export interface ExtRecordLayout {
  typePos: number;
  lengthPos: number;
  dataPos: number;
}
let extLayout: ExtRecordLayout | undefined;

/** Position of type, length and data inside one header extension record. */
export function extensionRecordLayout(): ExtRecordLayout {
  if (extLayout) return extLayout;
  const type = 0x5a3c1e0f;
  const len = 0x1b;
  const enc = encodeExtensions({ unknown: [{ type, data: new Uint8Array(len).fill(0xee) }] });
  extLayout = { typePos: findU32(enc, type), lengthPos: findU32(enc, len), dataPos: enc.indexOf(0xee) };
  return extLayout;
}

export interface SnapshotEntryLayout {
  l1TableOffset: FieldPos;
  l1Size: FieldPos;
  idSize: FieldPos;
  nameSize: FieldPos;
  extraSize: FieldPos;
  diskSize: FieldPos;
}
let snapLayout: SnapshotEntryLayout | undefined;

function probeSnapshot(): SnapshotEntry {
  return {
    l1TableOffset: 0,
    l1Size: 0,
    id: '',
    name: '',
    dateSec: 0,
    dateNsec: 0,
    vmClockNsec: 0,
    vmStateSize: 0,
    vmStateSizeLarge: 0,
    diskSize: 0,
    icount: 0n,
    extraUnknown: new Uint8Array(0),
  };
}

/** Positions of the snapshot table entry fields mutations touch. */
export function snapshotEntryLayout(): SnapshotEntryLayout {
  if (snapLayout) return snapLayout;
  const base = encodeSnapshotTable([probeSnapshot()]);
  const at = (e: Partial<SnapshotEntry>, field: 'u64' | 'u32'): FieldPos => {
    const enc = encodeSnapshotTable([{ ...probeSnapshot(), ...e }]);
    const d = diffIndices(base, enc);
    return field === 'u64' ? { offset: alignDown(d[0], 8), width: 8 } : { offset: alignDown(d[0], 4), width: 4 };
  };
  const idProbe = 'i'.repeat(0x0131);
  const nameProbe = 'n'.repeat(0x0257);
  const withStrings = encodeSnapshotTable([{ ...probeSnapshot(), id: idProbe, name: nameProbe }]);
  const extraProbe = encodeSnapshotTable([{ ...probeSnapshot(), extraUnknown: new Uint8Array(0x0345) }]);
  // extra_data_size = known extra fields + 0x345 unknown bytes; find the u32 that grew by 0x345.
  const grownAt = diffIndices(base, extraProbe).filter((i) => i < base.length);
  snapLayout = {
    l1TableOffset: at({ l1TableOffset: 0xff000000 * 2 ** 32 }, 'u64'),
    l1Size: at({ l1Size: 0xffffffff }, 'u32'),
    idSize: { offset: findU16(withStrings, 0x0131), width: 2 },
    nameSize: { offset: findU16(withStrings, 0x0257), width: 2 },
    extraSize: { offset: alignDown(grownAt[0], 4), width: 4 },
    diskSize: at({ diskSize: 0xff000000 * 2 ** 32 }, 'u64'),
  };
  return snapLayout;
}
