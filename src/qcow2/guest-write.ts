/**
 * Guest writes with copy-on-write (QEMU: qcow2_co_pwritev_part and
 * handle_copied/handle_alloc; imago cow.rs): a cluster this layer owns
 * alone (COPIED) is written in place, anything else gets a fresh cluster
 * holding the old guest content with the new bytes laid over it, and the
 * L2 entry is switched to it. Compressed writes pack whole clusters.
 *
 * Ordering: the data is written first (ImageState.writeData notes it), the
 * L2 entry changes in the cache, and the cache writes that table only after
 * a barrier (ImageState.writeBackL2). The old cluster is freed after the
 * next flush (Refcounts.freeLater).
 */
import type { CachedTable } from './cache.js';
import { compressCluster } from './compress.js';
import { InvalidArgumentError, UnsupportedFeatureError } from './errors.js';
import { CRYPT_NONE } from './format/constants.js';
import { ClusterType, encodeCompressed, isCopied } from './format/entries.js';
import {
  entryFor,
  entryParts,
  entryWith,
  forEachClusterPiece,
  freeEntryClusters,
  ownedDataCluster,
  requireCountedSource,
  setEntry,
  writableL2,
} from './cluster-map.js';
import { allocDataCluster, refuseCompressedWithDataFile } from './data-file.js';
import { readGuest, subclusterState } from './guest-read.js';
import { ALL_SUBCLUSTERS, subclusterMask, type L2Entry } from './l2.js';
import type { ImageState } from './state.js';

/** Writes guest bytes cluster by cluster; the caller checked the range and called beforeChange. */
export function writeGuest(s: ImageState, offset: number, data: Uint8Array): void {
  forEachClusterPiece(s.clusterSize, offset, data.length, (vc, inOff, done, n) => writeInCluster(s, vc, inOff, data.subarray(done, done + n)));
}

function writeInCluster(s: ImageState, vc: number, inOff: number, data: Uint8Array): void {
  const cs = s.clusterSize;
  const { table, index } = writableL2(s, vc);
  const old = s.layout.get(table, index);
  const type = s.layout.type(old);
  const copied = isCopied(old.hi);
  if (!s.layout.extended) {
    if (copied && type === ClusterType.Normal) {
      s.writeData(ownedDataCluster(s, old, vc) + inOff, data, vc * cs + inOff);
      return;
    }
    if (copied && type === ClusterType.ZeroAlloc) {
      // Reused in place (QEMU: cluster_needs_new_alloc is false); the rest of it reads as zeros.
      const host = ownedDataCluster(s, old, vc);
      writeOverZeros(s, host, vc, inOff, data);
      setEntry(s, table, index, entryWith(host, true));
      return;
    }
    requireCountedSource(s, old, vc);
    let host: number;
    if (type === ClusterType.ZeroPlain || (type === ClusterType.Unallocated && !s.backing)) {
      host = allocDataCluster(s, vc);
      writeOverZeros(s, host, vc, inOff, data);
    } else {
      const buf = clusterWithOverlay(s, vc, inOff, data, false);
      host = allocDataCluster(s, vc);
      s.writeData(host, buf, vc * cs);
    }
    setEntry(s, table, index, entryWith(host, true));
    freeEntryClusters(s, old);
    return;
  }
  writeInClusterExtended(s, { vc, inOff, data, table, index, old, type, copied });
}

interface ExtendedWrite {
  vc: number;
  inOff: number;
  data: Uint8Array;
  table: CachedTable;
  index: number;
  old: L2Entry;
  type: ClusterType;
  copied: boolean;
}

/** Extended L2: only the subclusters the write touches change state; the others keep theirs. */
function writeInClusterExtended(s: ImageState, w: ExtendedWrite): void {
  const { vc, inOff, data, table, index, old, type, copied } = w;
  const scs = s.subclusterSize;
  const first = Math.floor(inOff / scs);
  const last = Math.floor((inOff + data.length - 1) / scs);
  const touched = subclusterMask(first, last - first + 1);
  if (copied && type === ClusterType.Normal) {
    const host = ownedDataCluster(s, old, vc);
    for (let sc = first; sc <= last; sc++) subclusterState(s, old, type, sc, vc);
    if ((old.alloc & touched) === touched) {
      s.writeData(host + inOff, data, vc * s.clusterSize + inOff);
    } else {
      // Partially written subclusters that were not allocated get their old content around the data.
      const start = first * scs;
      const buf = new Uint8Array((last + 1) * scs - start);
      readGuest(s, vc * s.clusterSize + start, buf);
      buf.set(data, inOff - start);
      s.writeData(host + start, buf, vc * s.clusterSize + start);
    }
    setEntry(s, table, index, { hi: old.hi, lo: old.lo, alloc: (old.alloc | touched) >>> 0, zero: (old.zero & ~touched) >>> 0 });
    return;
  }
  requireCountedSource(s, old, vc);
  const host = allocDataCluster(s, vc);
  let alloc: number;
  let zero: number;
  if (type === ClusterType.Compressed) {
    alloc = ALL_SUBCLUSTERS;
    zero = 0;
  } else {
    const kept = type === ClusterType.Normal ? old.alloc : 0;
    alloc = (kept | touched) >>> 0;
    zero = (old.zero & ~touched) >>> 0;
  }
  const buf = clusterWithOverlay(s, vc, inOff, data, false);
  s.writeData(host, buf, vc * s.clusterSize);
  setEntry(s, table, index, { ...entryParts(host, true), alloc, zero });
  freeEntryClusters(s, old);
}

/**
 * Writes data at inOff into host cluster `host`, whose guest content around
 * it is zeros. QEMU's handle_alloc_space: where the storage can zero the
 * cluster without a buffer (fallocate's zero range on a file), that happens
 * first and only the data is written; encrypted images always write the
 * whole cluster, their zeros being ciphertext (QEMU skips them too).
 * Otherwise the cluster goes out as one zero-filled buffer.
 */
function writeOverZeros(s: ImageState, host: number, vc: number, inOff: number, data: Uint8Array): void {
  const cs = s.clusterSize;
  if (data.length < cs && s.header.cryptMethod === CRYPT_NONE && zeroHostCluster(s, host)) {
    s.writeData(host + inOff, data, vc * cs + inOff);
    return;
  }
  s.writeData(host, clusterWithOverlay(s, vc, inOff, data, true), vc * cs);
}

/** Zeroes host cluster `host` through the storage's writeZeroes, behind the same checks as writeData; false when declined. */
function zeroHostCluster(s: ImageState, host: number): boolean {
  const target = s.data;
  if (!target.writeZeroes) return false;
  // The overlap check covers the whole cluster, as qcow2_pre_write_overlap_check does in handle_alloc_space.
  if (s.dataStorage) s.assertWritable();
  else s.overlapCheck(host, s.clusterSize, undefined);
  return target.writeZeroes(host, s.clusterSize);
}

/**
 * One COW buffer per image, reused: the caller writes it out (every storage
 * copies what it is given) before the next cluster needs it, so the hot path
 * of a random write allocates nothing cluster-sized.
 */
const cowBuffers = new WeakMap<ImageState, Uint8Array>();

/**
 * The guest content of cluster vc (zeros when the caller knows it reads as
 * zeros) with data laid over it at inOff: the COW buffer, valid until the next call.
 */
function clusterWithOverlay(s: ImageState, vc: number, inOff: number, data: Uint8Array, zeros: boolean): Uint8Array {
  const cs = s.clusterSize;
  let buf = cowBuffers.get(s);
  if (buf?.length !== cs) {
    buf = new Uint8Array(cs);
    cowBuffers.set(s, buf);
  }
  if (data.length < cs) {
    if (zeros) buf.fill(0);
    else readGuest(s, vc * cs, buf);
  }
  buf.set(data, inOff);
  return buf;
}

/**
 * Compressed write of whole clusters (the last one may end at the image
 * end); the caller checked the range. Refuses unaligned requests before
 * anything changes, then marks the change (beforeChange).
 */
export function writeCompressedGuest(s: ImageState, offset: number, data: Uint8Array): void {
  const cs = s.clusterSize;
  if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== s.virtualSize)) {
    throw new InvalidArgumentError('compressed writes must cover whole clusters (or reach the end of the image)');
  }
  // qcow2_co_pwritev_compressed_part: -ENOTSUP with an external data file.
  refuseCompressedWithDataFile(s);
  // QEMU 7.2 stores compressed clusters of encrypted images unencrypted; refuse rather than leak guest data.
  if (s.header.cryptMethod !== CRYPT_NONE) {
    throw new UnsupportedFeatureError('compressed writes to encrypted images are not supported (they would be stored unencrypted)');
  }
  s.beforeChange();
  for (let done = 0; done < data.length; done += cs) {
    const chunk = new Uint8Array(cs);
    chunk.set(data.subarray(done, Math.min(done + cs, data.length)));
    writeCompressedCluster(s, (offset + done) / cs, chunk);
  }
}

function writeCompressedCluster(s: ImageState, vc: number, chunk: Uint8Array): void {
  const packed = compressCluster(s.compressionType, chunk, s.clusterSize);
  if (!packed) {
    // Incompressible: QEMU writes the cluster uncompressed.
    writeInCluster(s, vc, 0, chunk);
    return;
  }
  const current = entryFor(s, vc);
  if (s.layout.offset(current) !== 0 || s.layout.type(current) === ClusterType.Compressed) {
    throw new InvalidArgumentError(`compressed write to guest cluster ${vc}, which is already allocated`);
  }
  const { table, index } = writableL2(s, vc);
  const host = s.refcounts.allocBytes(packed.length);
  s.writeData(host, packed);
  const [hi, lo] = encodeCompressed(host, packed.length, s.clusterBits);
  setEntry(s, table, index, { hi, lo, zero: 0, alloc: 0 });
}
