/**
 * Loading and storing the internal snapshot table (qcow2.txt "Snapshots"),
 * reading entry by entry so a hostile count or size cannot force a huge
 * allocation (QEMU: qcow2_read_snapshots).
 */
import { InvalidImageError } from './errors.js';
import { alignUp, viewOf } from './format/bytes.js';
import {
  L1_ENTRY_SIZE,
  MAX_HOST_OFFSET,
  MAX_L1_BYTES,
  MAX_SNAPSHOTS_BYTES,
  MAX_SNAPSHOT_EXTRA_DATA,
  SNAPSHOT_ENTRY_ALIGN,
  SNAPSHOT_HEADER_SIZE,
  SNAPSHOT_ICOUNT_NONE,
} from './format/constants.js';
import {
  SNAPSHOT_EXTRA_SIZE_AT,
  SNAPSHOT_ID_SIZE_AT,
  SNAPSHOT_NAME_SIZE_AT,
  decodeSnapshotTable,
  type SnapshotEntry,
} from './format/snapshot-table.js';
import { MetaKind } from './overlap.js';
import type { ImageState } from './state.js';
import type { SnapshotInfo } from './types.js';

export interface LoadedSnapshots {
  entries: SnapshotEntry[];
  /** Set when the table ends before nb_snapshots entries (check reports it). */
  incompleteAt?: number;
  /** Bytes of the table that were read. */
  bytes: number;
}

/**
 * Reads the table entry by entry. An entry running past the end of the file
 * makes the table incomplete: an error on a normal open, a finding for check
 * (QEMU: qcow2_do_read_snapshots in repair mode).
 */
export function loadSnapshots(img: ImageState, lenient: boolean): LoadedSnapshots {
  const h = img.header;
  const out: SnapshotEntry[] = [];
  const fileSize = img.storage.size();
  let pos = h.snapshotsOffset;
  for (let i = 0; i < h.nbSnapshots; i++) {
    const incomplete = () => {
      if (!lenient) throw new InvalidImageError(`snapshot table entry ${i} is incomplete`);
      // QEMU still counts the entry's fixed header as part of the table.
      return { entries: out, incompleteAt: i, bytes: pos + SNAPSHOT_HEADER_SIZE - h.snapshotsOffset };
    };
    if (pos + SNAPSHOT_HEADER_SIZE > fileSize) return register(img, incomplete());
    const head = img.storage.read(pos, SNAPSHOT_HEADER_SIZE);
    const v = viewOf(head);
    const idSize = v.getUint16(SNAPSHOT_ID_SIZE_AT);
    const nameSize = v.getUint16(SNAPSHOT_NAME_SIZE_AT);
    const extraSize = v.getUint32(SNAPSHOT_EXTRA_SIZE_AT);
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
      throw new InvalidImageError(`too much extra metadata in snapshot table entry ${i} (${extraSize} bytes)`);
    }
    const len = SNAPSHOT_HEADER_SIZE + extraSize + idSize + nameSize;
    if (pos + len - h.snapshotsOffset > MAX_SNAPSHOTS_BYTES) throw new InvalidImageError('snapshot table is too large');
    if (pos + len > fileSize) return register(img, incomplete());
    const [e] = decodeSnapshotTable(img.storage.read(pos, len), 1);
    out.push(e);
    pos += alignUp(len, SNAPSHOT_ENTRY_ALIGN);
  }
  return register(img, { entries: out, bytes: pos - h.snapshotsOffset });
}

function register(img: ImageState, l: LoadedSnapshots): LoadedSnapshots {
  if (l.bytes > 0) img.meta.add(img.header.snapshotsOffset, l.bytes, MetaKind.SnapshotTable);
  for (const e of l.entries) if (snapshotL1Problem(img, e) === undefined && e.l1Size > 0) img.meta.add(e.l1TableOffset, e.l1Size * L1_ENTRY_SIZE, MetaKind.SnapshotL1);
  return l;
}

/** Why a snapshot's L1 table cannot be used, in QEMU's check wording, or undefined. */
export function snapshotL1Problem(img: ImageState, e: SnapshotEntry): string | undefined {
  if (e.l1TableOffset % img.clusterSize !== 0 || e.l1TableOffset >= MAX_HOST_OFFSET) {
    return `l1_offset=${'0x' + e.l1TableOffset.toString(16)}: L1 table is not cluster aligned; snapshot table entry corrupted`;
  }
  if (e.l1Size > MAX_L1_BYTES / L1_ENTRY_SIZE) {
    return `l1_size=${'0x' + e.l1Size.toString(16)}: L1 table is too large; snapshot table entry corrupted`;
  }
  return undefined;
}

export function snapshotInfos(entries: SnapshotEntry[]): SnapshotInfo[] {
  return entries.map((e) => ({
    id: e.id,
    name: e.name,
    vmStateSize: e.vmStateSizeLarge ?? e.vmStateSize,
    dateSec: e.dateSec,
    dateNsec: e.dateNsec,
    vmClockNsec: e.vmClockNsec,
    icount: e.icount === undefined || e.icount === SNAPSHOT_ICOUNT_NONE ? null : Number(e.icount),
    virtualSize: e.diskSize ?? 0,
  }));
}
