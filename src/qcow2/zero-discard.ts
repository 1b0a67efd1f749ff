/**
 * write-zeroes and discard (QEMU: qcow2_co_pwrite_zeroes →
 * qcow2_subcluster_zeroize, qcow2_co_pdiscard → qcow2_cluster_discard),
 * split as QEMU's block layer splits them, plus the full drop of a cluster
 * that shrinking needs. Entries change in the cached L2 table; the clusters
 * they held are freed after the next flush (freeEntryClusters).
 */
import { UnsupportedFeatureError } from './errors.js';
import { alignDown, alignUp } from './format/bytes.js';
import { OFLAG_ZERO_LO } from './format/constants.js';
import { ClusterType } from './format/entries.js';
import { entryFor, freeEntryClusters, setEntry, writableL2 } from './cluster-map.js';
import { zeroRawDataFile } from './data-file.js';
import { blockStatus, subclusterState } from './guest-read.js';
import { writeGuest } from './guest-write.js';
import { ALL_SUBCLUSTERS, UNALLOCATED_ENTRY, sameEntry, subclusterMask, type L2Entry } from './l2.js';
import type { ImageState } from './state.js';

/** Zero data is written in chunks of this many clusters (bounds the buffer, not the result). */
const ZERO_DATA_CHUNK_CLUSTERS = 4;

/**
 * write-zeroes over [offset, offset+length), split like QEMU's block layer
 * (aligned to the subcluster size); aligned parts become zero
 * clusters/subclusters on v3, the rest are written as zero data unless they
 * already read as zeros. The caller checked the range and called beforeChange.
 */
export function zeroRange(s: ImageState, offset: number, length: number, unmap: boolean): void {
  const unit = s.subclusterSize;
  const end = offset + length;
  // v2 cannot express zero clusters: without a backing file QEMU discards instead, with one it writes zeros.
  const asData = s.version < 3 && s.backingFile !== undefined;
  for (const [a, b] of splitAligned(offset, end, unit)) {
    if (asData) {
      writeZeroData(s, a, b);
    } else if (a % unit === 0 && (b % unit === 0 || b === s.virtualSize)) {
      zeroize(s, a, b, unmap);
    } else if (restOfSubclusterIsZero(s, a, b)) {
      zeroize(s, alignDown(a, unit), Math.min(alignUp(b, unit), s.virtualSize), unmap);
    } else {
      writeZeroData(s, a, b);
    }
  }
}

function writeZeroData(s: ImageState, a: number, b: number): void {
  const chunk = Math.min(b - a, ZERO_DATA_CHUNK_CLUSTERS * s.clusterSize);
  const zeros = new Uint8Array(chunk);
  for (let p = a; p < b; p += chunk) {
    const n = Math.min(chunk, b - p);
    writeGuest(s, p, n === chunk ? zeros : zeros.subarray(0, n));
  }
}

/** QEMU's is_zero check around an unaligned write-zeroes, plus its subcluster-type check. */
function restOfSubclusterIsZero(s: ImageState, a: number, b: number): boolean {
  const unit = s.subclusterSize;
  const start = alignDown(a, unit);
  const end = b === s.virtualSize ? b : Math.min(alignUp(b, unit), s.virtualSize);
  const zeroRun = (x: number, y: number) => y <= x || (blockStatus(s, x, y - x).length === y - x && blockStatus(s, x, y - x).zero);
  if (!zeroRun(start, a) || !zeroRun(b, end)) return false;
  const vc = Math.floor(start / s.clusterSize);
  const e = entryFor(s, vc);
  const type = s.layout.type(e);
  if (!s.layout.extended) return type !== ClusterType.Normal && type !== ClusterType.Compressed;
  if (type === ClusterType.Compressed) return false;
  const sc = Math.floor((start - vc * s.clusterSize) / unit);
  return subclusterState(s, e, type, sc, vc) !== 'normal';
}

/**
 * Refuses (before anything changes) zeroing from a onwards that
 * qcow2_subcluster_zeroize could not express: v2 has no zero clusters, and
 * part of a compressed cluster cannot be zeroed with extended L2.
 */
export function assertZeroizable(s: ImageState, a: number): void {
  const fail = (why: string) => {
    throw new UnsupportedFeatureError(`Failed to zero out new clusters: ${why}`);
  };
  if (s.version < 3) fail('version 2 images have no zero clusters');
  const cs = s.clusterSize;
  if (s.layout.extended && a % cs !== 0) {
    const e = entryFor(s, Math.floor(a / cs));
    if (s.layout.type(e) === ClusterType.Compressed) fail('part of a compressed cluster cannot be zeroed');
  }
}

/** qcow2_subcluster_zeroize for [a, b), a subcluster aligned and b aligned or the image end. */
function zeroize(s: ImageState, a: number, b: number, unmap: boolean): void {
  const cs = s.clusterSize;
  // With data_file_raw the data file must stay the guest view: zero it first (qcow2_subcluster_zeroize).
  zeroRawDataFile(s, a, b);
  let pos = a;
  while (pos < b) {
    const vc = Math.floor(pos / cs);
    const clusterEnd = (vc + 1) * cs;
    const wholeCluster = pos === vc * cs && (b >= clusterEnd || b === s.virtualSize);
    if (s.version < 3) {
      discardCluster(s, vc);
      pos = Math.min(clusterEnd, b);
    } else if (wholeCluster || !s.layout.extended) {
      zeroCluster(s, vc, unmap);
      pos = Math.min(clusterEnd, b);
    } else {
      const until = Math.min(clusterEnd, b);
      zeroSubclusters(s, vc, pos, until);
      pos = until;
    }
  }
}

function isAllocated(type: ClusterType): boolean {
  return type === ClusterType.Normal || type === ClusterType.ZeroAlloc || type === ClusterType.Compressed;
}

function zeroCluster(s: ImageState, vc: number, unmap: boolean): void {
  const old = entryFor(s, vc);
  const type = s.layout.type(old);
  const drop = type === ClusterType.Compressed || (unmap && isAllocated(type));
  let next: L2Entry = drop ? { ...UNALLOCATED_ENTRY } : { ...old };
  if (s.layout.extended) next = { ...next, zero: ALL_SUBCLUSTERS, alloc: 0 };
  else next = { ...next, lo: (next.lo | OFLAG_ZERO_LO) >>> 0 };
  if (sameEntry(old, next)) return;
  const { table, index } = writableL2(s, vc);
  const current = s.layout.get(table, index);
  setEntry(s, table, index, next);
  if (drop) freeEntryClusters(s, current, true);
}

function zeroSubclusters(s: ImageState, vc: number, a: number, b: number): void {
  const old = entryFor(s, vc);
  if (s.layout.type(old) === ClusterType.Compressed) {
    // QEMU returns ENOTSUP here and the block layer writes zero data instead.
    writeZeroData(s, a, b);
    return;
  }
  const base = vc * s.clusterSize;
  const scs = s.subclusterSize;
  const first = Math.floor((a - base) / scs);
  const count = Math.ceil((b - base) / scs) - first;
  const mask = subclusterMask(first, count);
  const next = { ...old, zero: (old.zero | mask) >>> 0, alloc: (old.alloc & ~mask) >>> 0 };
  if (sameEntry(old, next)) return;
  const { table, index } = writableL2(s, vc);
  const current = s.layout.get(table, index);
  setEntry(s, table, index, { ...current, zero: (current.zero | mask) >>> 0, alloc: (current.alloc & ~mask) >>> 0 });
}

/**
 * discard: acts on whole clusters only (and on the last partial cluster of
 * an image whose size is not cluster aligned); v2 images with a backing
 * file cannot express it (QEMU: -ENOTSUP, ignored). The caller checked the
 * range and called beforeChange.
 */
export function discardRange(s: ImageState, offset: number, length: number): void {
  if (s.version < 3 && s.backingFile !== undefined) return;
  const cs = s.clusterSize;
  for (const [a, b] of splitAligned(offset, offset + length, cs)) {
    if (a % cs !== 0 || (b % cs !== 0 && b !== s.virtualSize)) continue;
    for (let vc = a / cs; vc * cs < b; vc++) discardCluster(s, vc);
  }
}

function discardCluster(s: ImageState, vc: number): void {
  const old = entryFor(s, vc);
  const type = s.layout.type(old);
  let next: L2Entry;
  if (s.backingFile !== undefined || isAllocated(type)) {
    next = s.layout.extended
      ? { hi: 0, lo: 0, zero: ALL_SUBCLUSTERS, alloc: 0 }
      : { hi: 0, lo: s.version >= 3 ? OFLAG_ZERO_LO : 0, zero: 0, alloc: 0 };
  } else {
    next = { ...UNALLOCATED_ENTRY };
  }
  if (sameEntry(old, next)) return;
  const { table, index } = writableL2(s, vc);
  const current = s.layout.get(table, index);
  setEntry(s, table, index, next);
  freeEntryClusters(s, current, true);
}

/** Full discard of one guest cluster (its entry becomes 0), for shrinking. */
export function dropCluster(s: ImageState, vc: number): void {
  const old = entryFor(s, vc);
  if (sameEntry(old, UNALLOCATED_ENTRY)) return;
  const { table, index } = writableL2(s, vc);
  const current = s.layout.get(table, index);
  setEntry(s, table, index, { ...UNALLOCATED_ENTRY });
  freeEntryClusters(s, current, true);
}

/**
 * Splits [a, b) the way QEMU's block layer splits discard and write-zeroes:
 * an unaligned head up to the first boundary, the aligned bulk, an unaligned tail.
 */
export function splitAligned(a: number, b: number, unit: number): [number, number][] {
  const out: [number, number][] = [];
  const headEnd = Math.min(b, alignUp(a, unit));
  if (headEnd > a) out.push([a, headEnd]);
  const tailStart = Math.max(headEnd, alignDown(b, unit));
  if (tailStart > headEnd) out.push([headEnd, tailStart]);
  if (b > tailStart) out.push([tailStart, b]);
  return out;
}
