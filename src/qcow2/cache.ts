/**
 * A bounded LRU cache of cluster-sized metadata tables (L2 tables or refcount
 * blocks), keyed by host offset. Dirty tables reach the storage only through
 * `writeBack`, which the owner wires to respect write ordering: an L2 cache
 * flushes the refcount cache first, as QEMU's cache dependency does
 * (block/qcow2-cache.c), so no L2 entry on disk can point at a cluster whose
 * refcount is not yet on disk.
 */
import { viewOf } from './format/bytes.js';

export interface CachedTable {
  readonly offset: number;
  readonly data: Uint8Array;
  readonly view: DataView;
  dirty: boolean;
}

export class TableCache {
  /** Map iteration order is insertion order: the first key is the least recently used. */
  private readonly tables = new Map<number, CachedTable>();

  constructor(
    readonly capacity: number,
    private readonly load: (offset: number) => Uint8Array,
    private readonly writeBack: (table: CachedTable) => void,
  ) {
    if (capacity < 1) throw new RangeError('cache capacity must be at least one table');
  }

  get(offset: number): CachedTable {
    const hit = this.tables.get(offset);
    if (hit) {
      this.tables.delete(offset);
      this.tables.set(offset, hit);
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
  }

  private insert(offset: number, data: Uint8Array, dirty: boolean): CachedTable {
    while (this.tables.size >= this.capacity) this.evictOne();
    const t: CachedTable = { offset, data, view: viewOf(data), dirty };
    this.tables.set(offset, t);
    return t;
  }

  private evictOne(): void {
    const [offset, t] = this.tables.entries().next().value as [number, CachedTable];
    if (t.dirty) {
      this.writeBack(t);
      t.dirty = false;
    }
    this.tables.delete(offset);
  }
}
