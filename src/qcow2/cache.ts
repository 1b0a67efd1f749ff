/**
 * A bounded LRU cache of cluster-sized metadata tables (L2 tables or refcount
 * blocks), keyed by host offset. Dirty tables reach the storage only through
 * `writeBack`, which the owner wires to respect write ordering: an L2 cache
 * flushes the refcount cache first, as QEMU's cache dependency does
 * (block/qcow2-cache.c), so no L2 entry on disk can point at a cluster whose
 * refcount is not yet on disk.
 */
import { viewOf } from './format/bytes.js';

/**
 * Smallest L2 cache: two tables, so that a copy-on-write of an L2 table can
 * hold the old and the new one at once (QEMU: MIN_L2_CACHE_SIZE, "cover COW").
 */
export const MIN_L2_CACHE_TABLES = 2;
/**
 * Smallest refcount block cache: four blocks, enough for the blocks a
 * refcount table growth touches at once (QEMU: MIN_REFCOUNT_CACHE_SIZE).
 */
export const MIN_REFCOUNT_CACHE_TABLES = 4;
/** QEMU's default l2-cache-size upper bound (DEFAULT_L2_CACHE_MAX_SIZE). */
export const DEFAULT_L2_CACHE_BYTES = 32 * 1024 * 1024;
/** QEMU sizes the default refcount cache at a quarter of the L2 cache (DEFAULT_L2_REFCOUNT_SIZE_RATIO). */
export const L2_TO_REFCOUNT_CACHE_RATIO = 4;

export interface CachedTable {
  readonly offset: number;
  readonly data: Uint8Array;
  readonly view: DataView;
  dirty: boolean;
}

export class TableCache {
  /** Map iteration order is insertion order: the first key is the least recently used. */
  private readonly tables = new Map<number, CachedTable>();
  /** The most recently used table: a hit on it is already in LRU order (most gets are repeats). */
  private mru: CachedTable | undefined;

  constructor(
    readonly capacity: number,
    private readonly load: (offset: number) => Uint8Array,
    private readonly writeBack: (table: CachedTable) => void,
  ) {
    if (capacity < 1) throw new RangeError('cache capacity must be at least one table');
  }

  get(offset: number): CachedTable {
    if (this.mru?.offset === offset) return this.mru;
    const hit = this.tables.get(offset);
    if (hit) {
      this.tables.delete(offset);
      this.tables.set(offset, hit);
      this.mru = hit;
      return hit;
    }
    return this.insert(offset, this.load(offset), false);
  }

  /** Installs a freshly built table (e.g. a new L2 table) without reading it from disk. */
  put(offset: number, data: Uint8Array, dirty = true): CachedTable {
    this.tables.delete(offset);
    return this.insert(offset, data, dirty);
  }

  peek(offset: number): CachedTable | undefined {
    return this.tables.get(offset);
  }

  /** Drops a table without writing it: its cluster was freed and may be reused as data. */
  discard(offset: number): void {
    this.tables.delete(offset);
    if (this.mru?.offset === offset) this.mru = undefined;
  }

  hasDirty(): boolean {
    for (const t of this.tables.values()) if (t.dirty) return true;
    return false;
  }

  /** Writes every dirty table, in ascending offset order for sequential I/O. */
  flush(): void {
    const dirty = [...this.tables.values()].filter((t) => t.dirty).sort((a, b) => a.offset - b.offset);
    for (const t of dirty) {
      this.writeBack(t);
      t.dirty = false;
    }
  }

  clear(): void {
    this.tables.clear();
    this.mru = undefined;
  }

  private insert(offset: number, data: Uint8Array, dirty: boolean): CachedTable {
    while (this.tables.size >= this.capacity) this.evictOne();
    const t: CachedTable = { offset, data, view: viewOf(data), dirty };
    this.tables.set(offset, t);
    this.mru = t;
    return t;
  }

  private evictOne(): void {
    const [offset, t] = this.tables.entries().next().value as [number, CachedTable];
    if (t.dirty) {
      this.writeBack(t);
      t.dirty = false;
    }
    this.tables.delete(offset);
    if (this.mru === t) this.mru = undefined;
  }
}
