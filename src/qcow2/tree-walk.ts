/**
 * The one walk over every L2 entry reachable from an L1 table (QEMU has one
 * such loop too, qcow2_update_snapshot_refcount). Snapshot refcounts, the
 * snapshot ref-fits check, amend's zstd check and zero-cluster expansion
 * are visitors of it. check's OFLAG_COPIED pass has a loop of its own
 * (check-copied.ts): it meets every entry of a large image on every check.
 *
 * Each visitor decides what an unusable L1 entry means (enter), how the L2
 * table is read (load, default through the L2 cache) and whether it is read
 * once per table or again before every entry (refetch: for visitors whose
 * entry work allocates and may evict the table from the cache).
 */
import type { CachedTable } from './cache.js';
import type { ClusterType } from './format/entries.js';
import type { L1Table } from './l1-table.js';
import type { L2Entry } from './l2.js';
import type { ImageState } from './state.js';

/** Returned by a visitor's entry callback to end the whole walk. */
export const STOP_WALK = true;

export interface TreeVisitor {
  /** Before the L2 table of a nonzero L1 entry; false skips the table (its entries and leave). */
  enter?(l1Index: number, l2Offset: number): boolean;
  /** Reads the L2 table at l2Offset (default: the L2 cache). */
  load?(l2Offset: number): CachedTable;
  /** Re-read the table before each entry instead of once per table. */
  refetch?: boolean;
  /** Each entry of the table, in order; STOP_WALK ends the walk. */
  entry(e: L2Entry, type: ClusterType, index: number, table: CachedTable, l2Offset: number): boolean | void;
  /** After the table's entries. */
  leave?(l1Index: number, l2Offset: number): void;
}

/** Walks the tree under l1; true when a visitor stopped it early. */
export function walkTree(s: ImageState, l1: L1Table, v: TreeVisitor): boolean {
  const layout = s.layout;
  const load = v.load ?? ((off: number) => s.l2Cache.get(off));
  for (let i = 0; i < l1.entries; i++) {
    const l2Offset = l1.l2OffsetAt(i);
    if (l2Offset === 0) continue;
    if (v.enter && !v.enter(i, l2Offset)) continue;
    let table = v.refetch ? undefined : load(l2Offset);
    for (let j = 0; j < layout.entries; j++) {
      if (v.refetch) table = load(l2Offset);
      const e = layout.get(table!, j);
      if (v.entry(e, layout.type(e), j, table!, l2Offset) === STOP_WALK) return true;
    }
    v.leave?.(i, l2Offset);
  }
  return false;
}
