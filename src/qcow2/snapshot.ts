/**
 * Internal snapshots (qcow2.txt "Snapshots"; QEMU block/qcow2-snapshot.c):
 * a snapshot is a copy of the active L1 table plus one more reference on
 * every L2 table and data cluster it reaches. OFLAG_COPIED is recomputed
 * from the refcounts after every change, so it stays exact.
 */
import { CorruptImageError, LimitError, RefcountTableLimitError, SnapshotError } from './errors.js';
import { snapshotL1Problem } from './snapshot-table-io.js';
import { L1_ENTRY_SIZE, MAX_REFTABLE_BYTES, MAX_SNAPSHOTS } from './format/constants.js';
import { ClusterType, decodeCompressed, withCopied } from './format/entries.js';
import { encodeSnapshotTable, type SnapshotEntry } from './format/snapshot-table.js';
import { registerActiveL2s, resizeL1 } from './cluster-map.js';
import { L1Table } from './l1-table.js';
import { MetaKind } from './overlap.js';
import type { ImageState } from './state.js';
import { walkTree } from './tree-walk.js';

export function findSnapshot(img: ImageState, nameOrId: string): number {
  // QEMU looks the argument up as an id first, then as a name.
  let i = img.snapshots.findIndex((s) => s.id === nameOrId);
  if (i < 0) i = img.snapshots.findIndex((s) => s.name === nameOrId);
  if (i < 0) throw new SnapshotError(`snapshot '${nameOrId}' not found`);
  return i;
}

function nextSnapshotId(img: ImageState): string {
  let max = 0;
  for (const s of img.snapshots) {
    const n = Number.parseInt(s.id, 10);
    if (Number.isFinite(n) && n > max) max = n;
  }
  return String(max + 1);
}

/**
 * Adds `addend` (+1, -1 or 0) to the refcount of every L2 table and data
 * cluster reached from l1 (QEMU: qcow2_update_snapshot_refcount), then sets
 * OFLAG_COPIED on the L2 entries and the L1 entries exactly where the
 * refcount is 1.
 */
export function updateTreeRefcounts(img: ImageState, l1: L1Table, addend: number): void {
  const cs = img.clusterSize;
  const layout = img.layout;
  walkTree(img, l1, {
    enter(i, l2Offset) {
      if (l2Offset % cs !== 0) img.corruption(`L2 table offset ${l2Offset} unaligned (L1 index ${i})`);
      return true;
    },
    entry(e, type, j, _table, l2Offset) {
      if (type === ClusterType.Compressed) {
        if (addend !== 0) {
          const c = decodeCompressed(e.hi, e.lo, img.clusterBits);
          img.refcounts.updateRange(c.offset, c.size, addend);
        }
        return;
      }
      if (type !== ClusterType.Normal && type !== ClusterType.ZeroAlloc) return;
      const off = layout.offset(e);
      if (off % cs !== 0) misalignedEntry(img, off, l2Offset, j);
      if (addend !== 0) img.refcounts.updateRange(off, cs, addend);
      const want = withCopied(e.hi, img.refcounts.getAt(off) === 1);
      // A table about to be freed needs no flag updates.
      if (want !== e.hi) {
        const t = img.l2Cache.peek(l2Offset) ?? img.l2Cache.get(l2Offset);
        layout.set(t, j, { ...e, hi: want });
      }
    },
    leave(i, l2Offset) {
      if (addend !== 0) img.refcounts.updateRange(l2Offset, cs, addend);
      const hi = l1.hiAt(i);
      const want = withCopied(hi, img.refcounts.getAt(l2Offset) === 1);
      if (want !== hi) l1.setHi(i, want);
    },
  });
}

/**
 * qcow2_update_snapshot_refcount stops at the first misaligned data entry
 * (qcow2_signal_corruption, -EIO): the image is marked corrupt and nothing
 * after it is counted.
 */
function misalignedEntry(img: ImageState, off: number, l2Offset: number, index: number): never {
  img.corruption(`Cluster allocation offset 0x${off.toString(16)} unaligned (L2 offset: 0x${l2Offset.toString(16)}, L2 index: 0x${index.toString(16)})`);
}

/**
 * Refuses, before anything is written, what would make the refcount walk
 * fail half-way (QEMU fails there and leaks what it had counted): a
 * misaligned L2 table or data entry, in walk order (marked corrupt, as
 * QEMU's walk does when it meets it); a host offset no refcount table can
 * cover (QEMU's alloc_refcount_block: -EFBIG past QCOW_MAX_REFTABLE_SIZE);
 * a refcount pushed past the width's maximum.
 */
function assertTreeReferenceFits(img: ImageState, l1: L1Table): void {
  const max = img.refcounts.max;
  const cs = img.clusterSize;
  const extra = new Map<number, number>();
  const add = (offset: number, bytes: number) => {
    for (let c = Math.floor(offset / cs); c <= Math.floor((offset + bytes - 1) / cs); c++) {
      if (!img.refcounts.coverable(c)) {
        throw new RefcountTableLimitError(`host cluster ${c} lies past what a refcount table of at most ${MAX_REFTABLE_BYTES} bytes covers`);
      }
      extra.set(c, (extra.get(c) ?? 0) + 1);
    }
  };
  const layout = img.layout;
  walkTree(img, l1, {
    enter(i, l2Offset) {
      if (l2Offset % cs !== 0) img.corruption(`L2 table offset 0x${l2Offset.toString(16)} unaligned (L1 index: 0x${i.toString(16)})`);
      add(l2Offset, cs);
      return true;
    },
    entry(e, type, j, _t, l2Offset) {
      if (type === ClusterType.Compressed) {
        const c = decodeCompressed(e.hi, e.lo, img.clusterBits);
        add(c.offset, c.size);
      } else if (type === ClusterType.Normal || type === ClusterType.ZeroAlloc) {
        const off = layout.offset(e);
        if (off % cs !== 0) misalignedEntry(img, off, l2Offset, j);
        add(off, cs);
      }
    },
  });
  if (max >= Number.MAX_SAFE_INTEGER) return;
  for (const [c, n] of extra) {
    const rc = img.refcounts.get(c);
    if (rc + n > max) {
      throw new LimitError(
        `cluster ${c} would need refcount ${rc + n}, more than refcount_bits=${2 ** img.refcounts.order} holds; amend refcount_bits first`,
      );
    }
  }
}

/** Writes the snapshot table to new clusters, points the header at it and frees the old one. */
export function writeSnapshotTable(img: ImageState, entries: SnapshotEntry[]): void {
  const h = img.header;
  const oldOffset = h.snapshotsOffset;
  const oldSize = h.nbSnapshots > 0 ? img.snapshotTableBytes : 0;
  const bytes = encodeSnapshotTable(entries);
  let offset = 0;
  if (entries.length > 0) {
    offset = img.refcounts.allocClusters(Math.ceil(bytes.length / img.clusterSize));
    img.claimNew(offset, bytes.length, MetaKind.SnapshotTable);
    img.flush();
    img.writeMeta(offset, bytes, MetaKind.SnapshotTable);
    img.storage.flush();
  }
  h.snapshotsOffset = offset;
  h.nbSnapshots = entries.length;
  img.writeHeader();
  img.storage.flush();
  img.snapshots = entries;
  img.snapshotTableBytes = bytes.length;
  img.snapshotTableIncompleteAt = undefined;
  if (oldOffset !== 0 && oldSize > 0) {
    img.meta.remove(oldOffset, oldSize);
    img.refcounts.updateRange(oldOffset, oldSize, -1);
  }
}

function writeActiveL1(img: ImageState): void {
  if (img.l1.byteLength === 0) return;
  img.writeMeta(img.header.l1TableOffset, img.l1.bytes, MetaKind.ActiveL1);
}

export function createSnapshot(img: ImageState, name: string): void {
  // An empty name is a name (qcow2.txt sets no minimum; qemu-img snapshot -c '' makes one).
  if (img.snapshots.length >= MAX_SNAPSHOTS) throw new SnapshotError('too many snapshots');
  img.flush();
  assertTreeReferenceFits(img, img.l1);
  const l1Bytes = img.l1.byteLength;
  let l1Offset = 0;
  if (l1Bytes > 0) {
    l1Offset = img.refcounts.allocClusters(Math.ceil(l1Bytes / img.clusterSize));
    img.claimNew(l1Offset, l1Bytes, MetaKind.SnapshotL1);
    img.flush();
    img.writeMeta(l1Offset, img.l1.bytes, MetaKind.SnapshotL1);
  }
  updateTreeRefcounts(img, img.l1, 1);
  img.flush();
  writeActiveL1(img);
  const now = Date.now();
  const entry: SnapshotEntry = {
    l1TableOffset: l1Offset,
    l1Size: l1Bytes / L1_ENTRY_SIZE,
    id: nextSnapshotId(img),
    name,
    dateSec: Math.floor(now / 1000),
    dateNsec: (now % 1000) * 1_000_000,
    vmClockNsec: 0,
    vmStateSize: 0,
    vmStateSizeLarge: 0,
    diskSize: img.virtualSize,
    icount: 0n,
    extraUnknown: new Uint8Array(0),
  };
  writeSnapshotTable(img, [...img.snapshots, entry]);
  img.flush();
}

function readSnapshotL1(img: ImageState, sn: SnapshotEntry): L1Table {
  const problem = snapshotL1Problem(img, sn);
  if (problem) throw new CorruptImageError(`snapshot ${sn.id} (${sn.name}): ${problem}`);
  return L1Table.read(img.storage, sn.l1TableOffset, sn.l1Size);
}

export function applySnapshot(img: ImageState, nameOrId: string): void {
  const sn = img.snapshots[findSnapshot(img, nameOrId)];
  img.flush();
  const snL1 = readSnapshotL1(img, sn);
  assertTreeReferenceFits(img, snL1);
  const diskSize = sn.diskSize ?? img.virtualSize;
  const needed = Math.max(sn.l1Size, Math.ceil(diskSize / img.bytesPerL1Entry));
  if (needed > img.l1Entries) resizeL1(img, needed);
  // The snapshot's tree gains the active reference before the old active tree loses it.
  updateTreeRefcounts(img, snL1, 1);
  img.flush();
  const oldL1 = new L1Table(img.l1.bytes.slice());
  // In place: the active table keeps its offset and size, only its entries change.
  img.l1.bytes.set(L1Table.resizedCopy(snL1.bytes, img.l1Entries).bytes);
  writeActiveL1(img);
  img.storage.flush();
  oldL1.forEachL2((_i, off) => img.meta.remove(off, img.clusterSize));
  updateTreeRefcounts(img, oldL1, -1);
  registerActiveL2s(img);
  updateTreeRefcounts(img, img.l1, 0);
  img.flush();
  writeActiveL1(img);
  if (diskSize !== img.virtualSize) {
    img.header.size = diskSize;
    img.writeHeader();
  }
  img.flush();
}

export function deleteSnapshot(img: ImageState, nameOrId: string): void {
  const idx = findSnapshot(img, nameOrId);
  const sn = img.snapshots[idx];
  img.flush();
  const snL1 = readSnapshotL1(img, sn);
  writeSnapshotTable(img, img.snapshots.filter((_, i) => i !== idx));
  updateTreeRefcounts(img, snL1, -1);
  if (sn.l1Size > 0) {
    img.meta.remove(sn.l1TableOffset, sn.l1Size * L1_ENTRY_SIZE);
    img.refcounts.updateRange(sn.l1TableOffset, sn.l1Size * L1_ENTRY_SIZE, -1);
  }
  updateTreeRefcounts(img, img.l1, 0);
  img.flush();
  writeActiveL1(img);
  img.flush();
}

/** Exposes a snapshot read-only in place of the active layer (qemu-img convert -l / open with snapshot). */
export function viewSnapshot(img: ImageState, nameOrId: string): void {
  const sn = img.snapshots[findSnapshot(img, nameOrId)];
  img.readOnly = true;
  img.viewingSnapshot = sn.name;
  const l1 = readSnapshotL1(img, sn);
  const size = sn.diskSize ?? img.virtualSize;
  const needed = Math.ceil(size / img.bytesPerL1Entry);
  img.l1 = L1Table.resizedCopy(l1.bytes, Math.max(needed, sn.l1Size));
  img.header = { ...img.header, size };
}
