/**
 * Sizes of a qcow2 file before it exists, as QEMU 7.2's qcow2_measure
 * computes them (block/qcow2.c qcow2_calc_prealloc_size,
 * qcow2_refcount_metadata_size in block/qcow2-refcount.c, and
 * qcow2_get_persistent_dirty_bitmap_size in block/qcow2-bitmap.c): the
 * metadata of a fully allocated image of a virtual size, and the space
 * persistent bitmaps take when copied.
 */
import { alignUp } from './format/bytes.js';
import { dirEntrySize } from './format/bitmaps.js';
import { BITMAP_TABLE_ENTRY_SIZE, L1_ENTRY_SIZE, L2_ENTRY_SIZE, L2_EXTENDED_ENTRY_SIZE, REFTABLE_ENTRY_SIZE } from './format/constants.js';

/**
 * qcow2_refcount_metadata_size without the generous increase: refcount blocks
 * and table clusters that count `clusters` clusters and themselves, found as
 * the fixed point of the count.
 */
export function refcountMetadataBytes(clusters: number, clusterSize: number, refcountOrder: number): number {
  const blocksPerTableCluster = clusterSize / REFTABLE_ENTRY_SIZE;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / refcountsPerBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return (blocks + table) * clusterSize;
}

/** qcow2_calc_prealloc_size: header, L2 tables, L1 table, refcount metadata and every data cluster. */
export function fullyAllocatedBytes(virtualSize: number, clusterSize: number, refcountOrder: number, extendedL2: boolean): number {
  const aligned = alignUp(virtualSize, clusterSize);
  const l2e = extendedL2 ? L2_EXTENDED_ENTRY_SIZE : L2_ENTRY_SIZE;
  let meta = clusterSize; // the header cluster
  const nl2e = alignUp(aligned / clusterSize, clusterSize / l2e);
  meta += nl2e * l2e;
  const nl1e = alignUp((nl2e * l2e) / clusterSize, clusterSize / L1_ENTRY_SIZE);
  meta += nl1e * L1_ENTRY_SIZE;
  meta += refcountMetadataBytes((meta + aligned) / clusterSize, clusterSize, refcountOrder);
  return meta + aligned;
}

/** L2 tables a virtual size needs (qcow2_measure's check against QCOW_MAX_L1_SIZE). */
export function l2TablesFor(virtualSize: number, clusterSize: number, extendedL2: boolean): number {
  const l2e = extendedL2 ? L2_EXTENDED_ENTRY_SIZE : L2_ENTRY_SIZE;
  return Math.ceil(alignUp(virtualSize, clusterSize) / clusterSize / (clusterSize / l2e));
}

export interface MeasuredBitmap {
  name: string;
  granularity: number;
  /** The size of the disk the bitmap covers. */
  size: number;
}

/**
 * qcow2_get_persistent_dirty_bitmap_size: each bitmap wholly allocated, its
 * table in whole clusters, and the directory (rounded to a cluster) they share.
 */
export function bitmapsBytes(bitmaps: readonly MeasuredBitmap[], clusterSize: number): number {
  let total = 0;
  let dir = 0;
  for (const b of bitmaps) {
    const bytes = Math.ceil(Math.ceil(b.size / b.granularity) / 8);
    const clusters = Math.ceil(bytes / clusterSize);
    total += clusters * clusterSize;
    total += alignUp(clusters * BITMAP_TABLE_ENTRY_SIZE, clusterSize);
    dir += dirEntrySize(Buffer.byteLength(b.name), 0);
  }
  return total + alignUp(dir, clusterSize);
}
