/**
 * Writing a complete refcount structure from a computed refcount array:
 * used by check -r all when a refcount block is missing (QEMU:
 * rebuild_refcount_structure) and by amend refcount_bits (a new width).
 * The new table and blocks go past every used cluster and describe
 * themselves; the header switches to them in one write, so an interruption
 * leaves the old structure in force. Linear in the number of clusters.
 */
import { LimitError } from './errors.js';
import { setU64, viewOf } from './format/bytes.js';
import { MAX_REFTABLE_BYTES, REFTABLE_ENTRY_SIZE } from './format/constants.js';
import { maxRefcount, refcountEntriesPerBlock, setRefcount } from './format/refcount-block.js';
import { Refcounts } from './refcount.js';
import type { ImageState } from './state.js';

export interface RefcountStructure {
  tableOffset: number;
  tableClusters: number;
  /** Bytes to write: [offset, data] pairs (blocks first, table last). */
  writes: [number, Uint8Array][];
}

/**
 * Lays out a structure for `counts` (index = cluster) in width 2^order,
 * starting at cluster `start`. Refcounts of the new clusters are added.
 * Throws LimitError when a refcount does not fit the width.
 */
export function layoutRefcountStructure(counts: ArrayLike<number>, nbClusters: number, order: number, clusterBits: number, start: number): RefcountStructure {
  const cs = 2 ** clusterBits;
  const perBlock = refcountEntriesPerBlock(clusterBits, order);
  const max = maxRefcount(order);
  for (let c = 0; c < nbClusters; c++) {
    if (counts[c] > max) {
      throw new LimitError(`cluster ${c} has refcount ${counts[c]}, which does not fit in ${2 ** order} bits`);
    }
  }
  // Blocks are needed for every block range holding a nonzero count, plus the new area itself.
  let newBlocks = 0;
  let tableClusters = 1;
  let usedBlocks: Set<number>;
  for (;;) {
    const areaEnd = start + newBlocks + tableClusters;
    usedBlocks = new Set<number>();
    for (let c = 0; c < nbClusters; c++) if (counts[c] > 0) usedBlocks.add(Math.floor(c / perBlock));
    for (let c = start; c < areaEnd; c++) usedBlocks.add(Math.floor(c / perBlock));
    let maxBlock = 0;
    for (const bi of usedBlocks) if (bi > maxBlock) maxBlock = bi;
    const tc = Math.ceil(((maxBlock + 1) * REFTABLE_ENTRY_SIZE) / cs);
    if (usedBlocks.size === newBlocks && tc === tableClusters) break;
    newBlocks = usedBlocks.size;
    tableClusters = Math.max(tc, 1);
  }
  if (tableClusters * cs > MAX_REFTABLE_BYTES) throw new LimitError('refcount table would be too large');
  const blockIndices = [...usedBlocks].sort((a, b) => a - b);
  const tableStart = start + newBlocks;
  const areaEnd = tableStart + tableClusters;
  const blocks = new Map<number, Uint8Array>();
  const table = new Uint8Array(tableClusters * cs);
  const tv = viewOf(table);
  blockIndices.forEach((bi, i) => {
    blocks.set(bi, new Uint8Array(cs));
    setU64(tv, bi * REFTABLE_ENTRY_SIZE, (start + i) * cs);
  });
  const put = (c: number, v: number) => {
    const b = blocks.get(Math.floor(c / perBlock))!;
    setRefcount(b, viewOf(b), c % perBlock, order, v);
  };
  for (let c = 0; c < nbClusters; c++) if (counts[c] > 0) put(c, counts[c]);
  for (let c = start; c < areaEnd; c++) put(c, 1);
  const writes: [number, Uint8Array][] = blockIndices.map((bi, i) => [(start + i) * cs, blocks.get(bi)!]);
  writes.push([tableStart * cs, table]);
  return { tableOffset: tableStart * cs, tableClusters, writes };
}

/**
 * Writes a fresh refcount structure of width 2^order for `counts` past
 * `start` and switches the header to it (blocks and table first, a barrier,
 * then the header). Returns nothing; the state's refcounts are replaced.
 * The old structure's clusters are left for a leak repair (check) or freed
 * by the caller (amend). A failure before the header write leaves the old
 * structure in force.
 */
export function installRefcountStructure(img: ImageState, counts: ArrayLike<number>, nbClusters: number, order: number, start: number): void {
  const cs = img.clusterSize;
  img.resetCaches();
  const s = layoutRefcountStructure(counts, nbClusters, order, img.clusterBits, start);
  for (const [off, data] of s.writes) img.storage.write(off, data);
  img.storage.flush();
  img.meta.remove(img.header.refcountTableOffset, img.header.refcountTableClusters * cs);
  for (const off of img.refcounts.table) if (off !== 0 && off % cs === 0) img.meta.remove(off, cs);
  img.header.refcountTableOffset = s.tableOffset;
  img.header.refcountTableClusters = s.tableClusters;
  img.header.refcountOrder = order;
  img.writeHeader();
  img.storage.flush();
  // The new cache keeps the old one's size (never below MIN_REFCOUNT_CACHE_TABLES, which the constructor enforces).
  const fresh = new Refcounts(img, order, s.tableOffset, s.tableClusters, img.refcounts.cache.capacity);
  fresh.load();
  img.replaceRefcounts(fresh);
}
