/**
 * Loading and storing the internal snapshot table (qcow2.txt "Snapshots"),
 * reading entry by entry so a hostile count or size cannot force a huge
 * allocation (QEMU: qcow2_read_snapshots).
 */
import { InvalidImageError } from './errors.js';
import { viewOf } from './format/bytes.js';
import {
  L1_ENTRY_SIZE,
  MAX_HOST_OFFSET,
  MAX_L1_BYTES,
  MAX_SNAPSHOTS_BYTES,
  MAX_SNAPSHOT_EXTRA_DATA,
  SNAPSHOT_HEADER_SIZE,
} from './format/constants.js';
import { decodeSnapshotTable, type SnapshotEntry } from './format/snapshot-table.js';
import type { Qcow2Image } from './image.js';
import { MetaKind } from './overlap.js';
import type { SnapshotInfo } from './types.js';

export function loadSnapshots(img: Qcow2Image): SnapshotEntry[] {
  const h = img.header;
  const out: SnapshotEntry[] = [];
  let pos = h.snapshotsOffset;
  for (let i = 0; i < h.nbSnapshots; i++) {
    const head = img.storage.read(pos, SNAPSHOT_HEADER_SIZE);
    const v = viewOf(head);
    const idSize = v.getUint16(12);
    const nameSize = v.getUint16(14);
    const extraSize = v.getUint32(36);
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
      throw new InvalidImageError(`too much extra metadata in snapshot table entry ${i} (${extraSize} bytes)`);
    }
    const len = SNAPSHOT_HEADER_SIZE + extraSize + idSize + nameSize;
    if (pos + len - h.snapshotsOffset > MAX_SNAPSHOTS_BYTES) throw new InvalidImageError('snapshot table is too large');
    const [e] = decodeSnapshotTable(img.storage.read(pos, len), 1);
    if (e.l1Size > MAX_L1_BYTES / L1_ENTRY_SIZE) throw new InvalidImageError(`snapshot ${i} L1 table is too large`);
    if (e.l1Size > 0 && (e.l1TableOffset % img.clusterSize !== 0 || e.l1TableOffset === 0 || e.l1TableOffset >= MAX_HOST_OFFSET)) {
      throw new InvalidImageError(`snapshot ${i} L1 table offset ${e.l1TableOffset} is invalid`);
    }
    out.push(e);
    pos += Math.ceil(len / 8) * 8;
  }
  img.meta.add(h.snapshotsOffset, pos - h.snapshotsOffset, MetaKind.SnapshotTable);
  for (const e of out) if (e.l1Size > 0) img.meta.add(e.l1TableOffset, e.l1Size * L1_ENTRY_SIZE, MetaKind.SnapshotL1);
  return out;
}

export function snapshotInfos(entries: SnapshotEntry[]): SnapshotInfo[] {
  return entries.map((e) => ({
    id: e.id,
    name: e.name,
    vmStateSize: e.vmStateSizeLarge ?? e.vmStateSize,
    dateSec: e.dateSec,
    dateNsec: e.dateNsec,
    vmClockNsec: e.vmClockNsec,
    icount: e.icount === undefined || e.icount === 0xffffffffffffffffn ? null : Number(e.icount),
    virtualSize: e.diskSize ?? 0,
  }));
}
