/**
 * Guest cluster → L2 entry mapping (QEMU block/qcow2-cluster.c, imago
 * mappings.rs): finding an entry, making the L2 table that holds it
 * writable (copy-on-write of a shared table), L1 updates and resizing, and
 * dropping the references an entry held.
 *
 * Ordering: a new L2 table is written and flushed before the L1 entry that
 * names it; the table it replaced is freed only after the next flush
 * (Refcounts.freeLater).
 */
import type { CachedTable } from './cache.js';
import { alignUp } from './format/bytes.js';
import { INCOMPAT_DIRTY, L1_ENTRY_SIZE } from './format/constants.js';
import { ClusterType, decodeCompressed, makeEntry } from './format/entries.js';
import { discardDataCluster } from './data-file.js';
import { L1Table } from './l1-table.js';
import { UNALLOCATED_ENTRY, type L2Entry } from './l2.js';
import { MetaKind, metaKindName } from './overlap.js';
import type { ImageState } from './state.js';

/** Reads the active L1 table at `offset` and records it in the metadata map. */
export function loadL1(s: ImageState, offset: number, entries: number): void {
  s.l1 = L1Table.read(s.storage, offset, entries);
  if (entries > 0) s.meta.add(offset, entries * L1_ENTRY_SIZE, MetaKind.ActiveL1);
}

/** Records every aligned L2 table of the active L1 table in the metadata map. */
export function registerActiveL2s(s: ImageState): void {
  for (let i = 0; i < s.l1Entries; i++) {
    const off = s.l1.l2OffsetAt(i);
    if (off !== 0 && off % s.clusterSize === 0) s.meta.add(off, s.clusterSize, MetaKind.ActiveL2);
  }
}

/** The L2 table offset of an L1 entry (0: none); a misaligned one or one on the header is corruption. */
function l2TableOffsetFor(s: ImageState, l1Index: number): number {
  const off = s.l1.l2OffsetAt(l1Index);
  if (off === 0) return 0;
  if (off % s.clusterSize !== 0) s.corruption(`L2 table offset ${off} unaligned (L1 index ${l1Index})`);
  if (off < s.clusterSize) s.corruption(`L2 table offset ${off} overlaps the image header (L1 index ${l1Index})`);
  return off;
}

/** The L2 entry for guest cluster `guestCluster`, without allocating anything. */
export function entryFor(s: ImageState, guestCluster: number): L2Entry {
  const l1Index = Math.floor(guestCluster / s.layout.entries);
  if (l1Index >= s.l1Entries) return UNALLOCATED_ENTRY;
  const off = l2TableOffsetFor(s, l1Index);
  if (off === 0) return UNALLOCATED_ENTRY;
  return s.layout.get(s.l2Cache.get(off), guestCluster % s.layout.entries);
}

export interface WritableEntry {
  table: CachedTable;
  index: number;
}

/**
 * The L2 table holding guestCluster's entry, allocated or copied so that it
 * may be written (refcount 1, QEMU: get_cluster_table + l2_allocate). A new
 * table reaches the file, behind a barrier, before the L1 entry naming it.
 */
export function writableL2(s: ImageState, guestCluster: number): WritableEntry {
  const l1Index = Math.floor(guestCluster / s.layout.entries);
  const index = guestCluster % s.layout.entries;
  const old = l2TableOffsetFor(s, l1Index);
  if (old !== 0 && s.l1.copiedAt(l1Index)) {
    const k = s.meta.kindAtCluster(old / s.clusterSize);
    if (k !== MetaKind.ActiveL2) {
      s.corruption(`L2 table at offset ${old} (L1 index ${l1Index}) overlaps the ${k === undefined ? 'free space' : metaKindName(k)}`);
    }
    return { table: s.l2Cache.get(old), index };
  }
  const data = old !== 0 ? s.l2Cache.get(old).data.slice() : new Uint8Array(s.clusterSize);
  const off = s.refcounts.allocClusters(1);
  s.claimNew(off, s.clusterSize, MetaKind.ActiveL2);
  // The new table's refcount is durable before the table is (l2_allocate flushes the refcount
  // cache whatever the lazy refcounts: only data clusters' refcounts may lag on a dirty image).
  s.refcounts.flush();
  const table = s.l2Cache.put(off, data, true);
  s.writeBackL2(table);
  table.dirty = false;
  s.barrier();
  setL1Entry(s, l1Index, off);
  if (old !== 0) {
    s.meta.remove(old, s.clusterSize);
    s.refcounts.freeLater(old, s.clusterSize);
  }
  return { table, index };
}

/** Points active L1 entry i at an L2 table (COPIED when nonzero) and writes that entry. */
export function setL1Entry(s: ImageState, l1Index: number, l2Offset: number): void {
  const was = s.l1.entryBytes(l1Index);
  s.l1.set(l1Index, l2Offset);
  try {
    s.writeL1Entry(l1Index);
  } catch (e) {
    // The entry is written through, never again at flush: if this write fails
    // the table must keep the entry the disk has (QEMU's l2_allocate restores
    // l1_table[l1_index] on failure), or later writes land in an L2 table no
    // L1 entry on disk points to and are lost at close.
    s.l1.restore(l1Index, was);
    throw e;
  }
}

/**
 * Moves the active L1 table to a table of newEntries entries (grow or
 * shrink; QEMU: qcow2_grow_l1_table): the new table is written and flushed,
 * then the header switches to it, then the old one is released.
 */
export function resizeL1(s: ImageState, newEntries: number): void {
  if (newEntries === s.l1Entries && s.header.l1TableOffset !== 0) return;
  const table = L1Table.resizedCopy(s.l1.bytes, newEntries);
  const bytes = table.byteLength;
  const oldOffset = s.header.l1TableOffset;
  const oldBytes = s.l1.byteLength;
  let newOffset = 0;
  if (newEntries > 0) {
    newOffset = s.refcounts.allocClusters(Math.ceil(bytes / s.clusterSize));
    s.claimNew(newOffset, bytes, MetaKind.ActiveL1);
    s.refcounts.flush();
    s.writeMeta(newOffset, padToCluster(table.bytes, s.clusterSize), MetaKind.ActiveL1);
    s.storage.flush();
  }
  s.l1 = table;
  s.header.l1TableOffset = newOffset;
  s.header.l1Size = newEntries;
  s.writeHeader();
  s.storage.flush();
  if (oldOffset !== 0 && oldBytes > 0) {
    s.meta.remove(oldOffset, oldBytes);
    s.refcounts.updateRange(oldOffset, oldBytes, -1);
  }
}

/** Sets an entry, re-fetching the table in case reads since it was obtained evicted it. */
export function setEntry(s: ImageState, t: CachedTable, index: number, e: L2Entry): void {
  s.layout.set(s.l2Cache.peek(t.offset) ?? s.l2Cache.get(t.offset), index, e);
}

/**
 * Drops (after the next flush) the references an L2 entry held: normal,
 * zero-allocated or compressed data. With an external data file nothing is
 * refcounted; a guest request (discard, zero with unmap) passes the discard
 * through instead, a COW replacement does nothing (QEMU: qcow2_free_any_cluster,
 * QCOW2_DISCARD_REQUEST vs QCOW2_DISCARD_NEVER).
 */
export function freeEntryClusters(s: ImageState, e: L2Entry, passthrough = false): void {
  const type = s.layout.type(e);
  if (s.hasDataFile) {
    if (passthrough && (type === ClusterType.Normal || type === ClusterType.ZeroAlloc)) discardDataCluster(s, s.layout.offset(e));
    return;
  }
  if (type === ClusterType.Compressed) {
    const c = decodeCompressed(e.hi, e.lo, s.clusterBits);
    s.refcounts.freeLater(c.offset, c.size);
  } else if (type === ClusterType.Normal || type === ClusterType.ZeroAlloc) {
    const off = s.layout.offset(e);
    if (off % s.clusterSize === 0) s.refcounts.freeLater(off, s.clusterSize);
  }
}

/**
 * The host cluster an entry names, checked as qcow2_get_host_offset checks
 * every entry that has one (QCOW2_SUBCLUSTER_NORMAL, ZERO_ALLOC and
 * UNALLOCATED_ALLOC) before it looks at what the guest reads there: it must be
 * cluster aligned and, with a data file, sit at its guest offset; otherwise
 * qcow2_signal_corruption and -EIO, even for a zero cluster whose host
 * cluster is never read.
 */
export function checkedHostOffset(s: ImageState, e: L2Entry, guestCluster: number): number {
  const off = s.layout.offset(e);
  if (off % s.clusterSize !== 0) {
    s.corruption(`cluster allocation offset ${off} unaligned (guest cluster ${guestCluster})`);
  }
  // qcow2_get_host_offset: a data file cluster must sit at its guest offset.
  if (s.hasDataFile && off !== guestCluster * s.clusterSize) {
    s.corruption(
      `External data file host cluster offset 0x${off.toString(16)} does not match guest cluster offset: 0x${(guestCluster * s.clusterSize).toString(16)}`,
    );
  }
  return off;
}

/** The host cluster of a data entry; misaligned or on the header is corruption (QEMU: qcow2_get_host_offset). */
export function dataClusterOffset(s: ImageState, e: L2Entry, guestCluster: number): number {
  const off = checkedHostOffset(s, e, guestCluster);
  if (!s.hasDataFile && off < s.clusterSize) s.corruption(`data cluster at offset ${off} overlaps the image header (guest cluster ${guestCluster})`);
  return off;
}

/**
 * The host cluster of a COPIED data entry, for a write in place. COPIED
 * promises refcount 1; a refcount of 0 means the refcount structure does not
 * know the cluster is in use, so the allocator may hand it to another guest
 * cluster (or a refcount block) and two owners would overwrite each other.
 * That is corruption: the image is marked corrupt and the write refused, as
 * QEMU does for the inconsistencies it meets during I/O (qcow2_signal_corruption).
 */
export function ownedDataCluster(s: ImageState, e: L2Entry, guestCluster: number): number {
  const off = dataClusterOffset(s, e, guestCluster);
  // The hot path of a rewrite: one cached refcount lookup; the rarer conditions only when it reads 0.
  // Data file clusters are not refcounted (dataStorage is set exactly when the image has one open).
  if (s.dataStorage === null && s.refcounts.get(off / s.clusterSize) === 0) requireCounted(s, off, s.clusterSize, guestCluster);
  return off;
}

/**
 * Before a copy-on-write replaces entry e: every host cluster it points to
 * must be counted, or the allocation about to happen may return one of them
 * while it still holds data (a compressed cluster's neighbours, a snapshot's
 * copy). Same corruption as ownedDataCluster.
 */
export function requireCountedSource(s: ImageState, e: L2Entry, guestCluster: number): void {
  if (s.dataStorage !== null) return;
  const type = s.layout.type(e);
  if (type === ClusterType.Compressed) {
    const c = decodeCompressed(e.hi, e.lo, s.clusterBits);
    requireCounted(s, c.offset, c.size, guestCluster);
  } else if (type === ClusterType.Normal || type === ClusterType.ZeroAlloc) {
    const off = s.layout.offset(e);
    // A misaligned one is refused where its data is read (dataClusterOffset).
    if (off % s.clusterSize === 0) requireCounted(s, off, s.clusterSize, guestCluster);
  }
}

function requireCounted(s: ImageState, offset: number, bytes: number, guestCluster: number): void {
  const c = s.refcounts.firstUncounted(offset, bytes);
  if (c < 0 || s.hasDataFile) return;
  // A dirty image's stored refcounts may lag its L2 tables (lazy refcounts): nothing follows from a 0.
  if (s.header.incompatibleFeatures & INCOMPAT_DIRTY) return;
  s.corruption(`guest cluster ${guestCluster} maps to host cluster ${c}, whose refcount is 0 (it could be allocated again while in use; run check -r all)`);
}

/** Unhooks and frees the L2 table of an L1 entry past the end of a shrunk image: L1 entry first, then the free. */
export function dropL2Table(s: ImageState, l1Index: number): void {
  const off = s.l1.l2OffsetAt(l1Index);
  if (off === 0) return;
  s.l2Cache.flush();
  setL1Entry(s, l1Index, 0);
  s.storage.flush();
  s.meta.remove(off, s.clusterSize);
  s.refcounts.updateRange(off, s.clusterSize, -1);
}

export function entryParts(host: number, copied: boolean): { hi: number; lo: number } {
  const [hi, lo] = makeEntry(host, copied);
  return { hi, lo };
}

/** A standard data entry for a host cluster (no subcluster bits). */
export function entryWith(host: number, copied: boolean): L2Entry {
  // Built in one literal, not spread from entryParts: it runs once per allocating write.
  const [hi, lo] = makeEntry(host, copied);
  return { hi, lo, zero: 0, alloc: 0 };
}

function padToCluster(buf: Uint8Array, cs: number): Uint8Array {
  if (buf.length % cs === 0) return buf;
  const out = new Uint8Array(alignUp(buf.length, cs));
  out.set(buf);
  return out;
}

/** Calls fn for each piece of [offset, offset+length) that lies in one guest cluster. */
export function forEachClusterPiece(
  clusterSize: number,
  offset: number,
  length: number,
  fn: (guestCluster: number, inOff: number, done: number, n: number) => void,
): void {
  let done = 0;
  while (done < length) {
    const pos = offset + done;
    const vc = Math.floor(pos / clusterSize);
    const inOff = pos - vc * clusterSize;
    const n = Math.min(clusterSize - inOff, length - done);
    fn(vc, inOff, done, n);
    done += n;
  }
}
