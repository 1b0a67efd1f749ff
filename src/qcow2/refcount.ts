/**
 * Host cluster reference counting (qcow2.txt "Host cluster management"):
 * the in-memory refcount table, cached refcount blocks, cluster and byte
 * allocation, and growth of the refcount table.
 *
 * Ordering rules (after block/qcow2-refcount.c): a new refcount block is
 * written, describing itself where it can, before the table entry that
 * points to it; a grown table is written in full, with refcounts for itself,
 * before the header switches to it, and the old one is freed only after.
 */
import { MIN_REFCOUNT_CACHE_TABLES, TableCache, type CachedTable } from './cache.js';
import { LimitError, RefcountTableLimitError } from './errors.js';
import { getU64, setU64, viewOf } from './format/bytes.js';
import { MAX_HOST_OFFSET, MAX_REFTABLE_BYTES, REFTABLE_ENTRY_SIZE, REFTABLE_OFFSET_ALIGN } from './format/constants.js';
import { getRefcount, getRefcounts, maxRefcount, refcountEntriesPerBlock, setRefcount } from './format/refcount-block.js';
import { MetaKind, type MetadataMap } from './overlap.js';
import type { BlockStorage } from './storage/types.js';

export interface RefcountHost {
  readonly storage: BlockStorage;
  readonly clusterBits: number;
  readonly meta: MetadataMap;
  /** Writes metadata after the overlap check. */
  writeMeta(offset: number, data: Uint8Array, kind: MetaKind): void;
  /** A cluster's refcount reached zero: cached tables at it must go. */
  clusterFreed(offset: number): void;
  /** Points the header at a new refcount table. */
  commitReftable(offset: number, clusters: number): void;
  /** Records metadata placed in fresh clusters; an overlap marks the image corrupt and throws. */
  claimNew(offset: number, bytes: number, kind: MetaKind): void;
  /** Marks the image corrupt (when writable) and throws. */
  corruption(message: string): never;
  /** Barrier between dependent writes: everything written before is durable after. */
  barrier(): void;
}

export class Refcounts {
  readonly order: number;
  readonly max: number;
  readonly clusterSize: number;
  readonly entriesPerBlock: number;
  /** Refblock host offsets by block index (reserved bits 0..8 masked off, as QEMU does); 0 = no block. */
  table: number[];
  /**
   * The reserved low bits (0..8) of the entries loaded with them set, by
   * index: check reports them. An entry this process writes is written
   * without them, so it leaves this record; most images have none at all.
   */
  private readonly reservedBits = new Map<number, number>();
  tableOffset: number;
  tableClusters: number;
  readonly cache: TableCache;
  /** Lowest cluster index that may be free. */
  private freeHint = 0;
  /** One past the highest cluster index handed out, which may not be on disk yet. */
  private allocEnd = 0;
  /** Byte-granular allocation point for compressed clusters (qcow2_alloc_bytes). */
  private freeByteOffset = 0;
  private deferredFrees: [number, number][] = [];
  /** Refcount decrements that would have gone below zero (a damaged image); the cluster is left alone. */
  underflows = 0;

  constructor(
    private readonly host: RefcountHost,
    order: number,
    tableOffset: number,
    tableClusters: number,
    cacheTables: number,
  ) {
    this.order = order;
    this.max = maxRefcount(order);
    this.clusterSize = 2 ** host.clusterBits;
    this.entriesPerBlock = refcountEntriesPerBlock(host.clusterBits, order);
    this.tableOffset = tableOffset;
    this.tableClusters = tableClusters;
    this.table = [];
    this.cache = new TableCache(
      Math.max(MIN_REFCOUNT_CACHE_TABLES, cacheTables),
      (off) => host.storage.read(off, this.clusterSize),
      (t) => host.writeMeta(t.offset, t.data, MetaKind.Refblock),
    );
    this.allocEnd = Math.ceil(host.storage.size() / this.clusterSize);
  }

  /** Reads and validates the refcount table (QEMU: qcow2_refcount_init + validation in qcow2_do_open). */
  load(): void {
    const bytes = this.tableClusters * this.clusterSize;
    const buf = this.host.storage.read(this.tableOffset, bytes);
    const v = viewOf(buf);
    const n = bytes / REFTABLE_ENTRY_SIZE;
    // Most of a table is zeros past its last block (one 2 MiB cluster holds 262144 entries): those are filled natively.
    let used = n;
    while (used > 0 && v.getUint32((used - 1) * REFTABLE_ENTRY_SIZE) === 0 && v.getUint32((used - 1) * REFTABLE_ENTRY_SIZE + 4) === 0) used--;
    const table = new Array<number>(n).fill(0);
    this.reservedBits.clear();
    for (let i = 0; i < used; i++) {
      const raw = getU64(v, i * REFTABLE_ENTRY_SIZE);
      const low = raw % REFTABLE_OFFSET_ALIGN;
      table[i] = raw - low;
      if (low !== 0) this.reservedBits.set(i, low);
    }
    // Trailing zero entries are kept: they are part of the on-disk table.
    this.table = table;
    this.host.meta.add(this.tableOffset, bytes, MetaKind.Reftable);
    for (let i = 0; i < used; i++) {
      const off = table[i]!;
      if (off !== 0 && off % this.clusterSize === 0) this.host.meta.add(off, this.clusterSize, MetaKind.Refblock);
    }
  }

  /** Refcount table entry i as it is on disk, reserved bits included. */
  rawEntry(i: number): number {
    return (this.table[i] ?? 0) + (this.reservedBits.get(i) ?? 0);
  }

  /**
   * Whether a refcount table within QEMU's limit can hold the refcount of this
   * cluster (alloc_refcount_block: -EFBIG once the blocks needed exceed
   * QCOW_MAX_REFTABLE_SIZE / REFTABLE_ENTRY_SIZE).
   */
  coverable(clusterIndex: number): boolean {
    return this.blockOf(clusterIndex) < MAX_REFTABLE_BYTES / REFTABLE_ENTRY_SIZE;
  }

  private blockOf(clusterIndex: number): number {
    return Math.floor(clusterIndex / this.entriesPerBlock);
  }

  private validBlockOffset(blockIndex: number): number {
    const off = this.table[blockIndex];
    // As QEMU: only misalignment is caught here; a block past the end reads as zeros and
    // a write to one overlapping other metadata is refused by the overlap check.
    if (off % this.clusterSize !== 0) {
      this.host.corruption(`refblock offset ${off} unaligned (reftable index ${blockIndex})`);
    }
    return off;
  }

  private block(blockIndex: number): CachedTable | undefined {
    if (blockIndex >= this.table.length || this.table[blockIndex] === 0) return undefined;
    return this.cache.get(this.validBlockOffset(blockIndex));
  }

  get(clusterIndex: number): number {
    const b = this.block(this.blockOf(clusterIndex));
    if (!b) return 0;
    return getRefcount(b.data, b.view, clusterIndex % this.entriesPerBlock, this.order);
  }

  /**
   * The refcounts of `count` clusters of one block from its first entry on, into out[at..]:
   * get() for each of them with one block lookup (check's pass over every cluster).
   * Zeros for a block the table does not point to.
   */
  readBlock(blockIndex: number, count: number, out: Float64Array, at: number): void {
    const b = this.block(blockIndex);
    if (!b) {
      out.fill(0, at, at + count);
      return;
    }
    getRefcounts(b.data, b.view, this.order, count, out, at);
  }

  getAt(offset: number): number {
    return this.get(Math.floor(offset / this.clusterSize));
  }

  /** The first cluster overlapping [offset, offset+bytes) whose refcount is 0, or -1 when every one is counted. */
  firstUncounted(offset: number, bytes: number): number {
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + Math.max(bytes, 1) - 1) / this.clusterSize);
    for (let c = first; c <= last; c++) if (this.get(c) === 0) return c;
    return -1;
  }

  /** Adds delta to the refcount of every cluster overlapping [offset, offset+bytes). */
  updateRange(offset: number, bytes: number, delta: number): void {
    if (bytes <= 0) return;
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + bytes - 1) / this.clusterSize);
    for (let c = first; c <= last; c++) this.update(c, delta);
  }

  update(clusterIndex: number, delta: number): void {
    const bi = this.blockOf(clusterIndex);
    let b = this.block(bi);
    if (!b) {
      if (delta < 0) {
        this.underflows++;
        return;
      }
      this.ensureBlock(bi);
      b = this.block(bi)!;
    }
    const idx = clusterIndex % this.entriesPerBlock;
    const old = getRefcount(b.data, b.view, idx, this.order);
    const now = old + delta;
    if (now < 0) {
      this.underflows++;
      return;
    }
    if (now > this.max) {
      throw new LimitError(`refcount of cluster ${clusterIndex} would exceed ${this.max} (refcount_bits=${2 ** this.order})`);
    }
    setRefcount(b.data, b.view, idx, this.order, now);
    b.dirty = true;
    if (now === 0) {
      if (clusterIndex < this.freeHint) this.freeHint = clusterIndex;
      const off = clusterIndex * this.clusterSize;
      if (this.freeByteOffset !== 0 && Math.floor(this.freeByteOffset / this.clusterSize) === clusterIndex) {
        this.freeByteOffset = 0;
      }
      this.host.clusterFreed(off);
    }
  }

  /**
   * Free means refcount zero, nothing else: on a damaged image that can name a
   * cluster holding metadata, and the overlap check then refuses the write
   * and marks the image corrupt, as QEMU does.
   */
  private isFree(clusterIndex: number): boolean {
    return this.get(clusterIndex) === 0;
  }

  /** First run of n free clusters at or after the hint (clusters past every refblock are free). */
  private findFree(n: number): number {
    let start = Math.max(this.freeHint, 1);
    let run = 0;
    let c = start;
    for (;;) {
      const bi = this.blockOf(c);
      if (bi >= this.table.length || this.table[bi] === 0) {
        // A missing block: its whole range is free.
        const end = (bi + 1) * this.entriesPerBlock;
        if (end - start >= n) return start;
        run = end - start;
        c = end;
        continue;
      }
      if (this.isFree(c)) {
        if (++run === n) return start;
      } else {
        run = 0;
        start = c + 1;
      }
      c++;
      if (c * this.clusterSize >= MAX_HOST_OFFSET) throw new LimitError('no free host clusters below 2^56');
    }
  }

  /**
   * Allocates n contiguous clusters with refcount 1; returns the host offset.
   *
   * Terminates: a retry happens only when ensureBlock took clusters from the
   * candidate run to build a missing refcount block, and after that attempt
   * every block covering the run exists. So each retry adds at least one
   * refcount block, and there are finitely many below MAX_HOST_OFFSET
   * (findFree throws LimitError there). On failure (LimitError, or an
   * overlap marking the image corrupt) blocks built so far stay allocated and
   * counted; the clusters of the run are not.
   */
  allocClusters(n: number): number {
    for (;;) {
      const start = this.findFree(n);
      // Making sure refblocks exist may itself take clusters from the candidate run.
      for (let bi = this.blockOf(start); bi <= this.blockOf(start + n - 1); bi++) this.ensureBlock(bi);
      let ok = true;
      for (let c = start; c < start + n; c++) if (!this.isFree(c)) ok = false;
      if (!ok) continue;
      for (let c = start; c < start + n; c++) this.update(c, 1);
      this.freeHint = start + n;
      this.allocEnd = Math.max(this.allocEnd, start + n);
      return start * this.clusterSize;
    }
  }

  /**
   * Allocates `bytes` (≤ one cluster) for compressed data, packing successive
   * allocations into the same cluster as QEMU does; every cluster the range
   * touches gets one reference.
   */
  allocBytes(bytes: number): number {
    const cs = this.clusterSize;
    let off = this.freeByteOffset;
    if (off !== 0 && off % cs !== 0) {
      const c = Math.floor(off / cs);
      const fitsInCluster = (off % cs) + bytes <= cs;
      const rc = this.get(c);
      if (rc > 0 && rc < this.max) {
        if (fitsInCluster) {
          this.update(c, 1);
          this.freeByteOffset = off + bytes;
          return off;
        }
        // Spills into the next cluster: only if that one is free.
        if (this.isFree(c + 1)) {
          this.ensureBlock(this.blockOf(c + 1));
          if (this.isFree(c + 1) && this.get(c) > 0) {
            this.update(c, 1);
            this.update(c + 1, 1);
            this.allocEnd = Math.max(this.allocEnd, c + 2);
            this.freeByteOffset = off + bytes;
            return off;
          }
        }
      }
    }
    off = this.allocClusters(Math.ceil(bytes / cs));
    this.freeByteOffset = off + bytes;
    return off;
  }

  /** Ends byte packing (e.g. after reopen or metadata rewrites). */
  resetBytePacking(): void {
    this.freeByteOffset = 0;
  }

  /**
   * Makes sure the refcount block with index bi exists, allocating it
   * (QEMU: alloc_refcount_block). Returns once table[bi] names a block whose
   * own refcount is durable and the table entry is written.
   *
   * Terminates: the block goes to the first free cluster. If that cluster
   * lies in block bi, the block describes itself and we return. If it lies
   * in a block that exists, that block counts it and we return. Otherwise
   * (its block cbi is missing) the nested ensureBlock(cbi) finds the same
   * first free cluster, now inside the block it builds, so it returns at
   * once; the loop then sees one more existing block. Growing the table
   * (growTable) covers its own new area with blocks, so it adds no missing
   * block for the next round.
   * On failure (LimitError from growTable, an overlap that marks the image
   * corrupt) the table and cache are as the last completed step left them.
   */
  ensureBlock(bi: number): void {
    for (;;) {
      if (bi >= this.table.length) this.growTable(bi + 1);
      if (this.table[bi] !== 0) return;
      const candidate = this.findFree(1);
      const cbi = this.blockOf(candidate);
      if (cbi === bi) {
        // Self-describing block: it holds its own refcount.
        const data = new Uint8Array(this.clusterSize);
        const off = candidate * this.clusterSize;
        setRefcount(data, viewOf(data), candidate % this.entriesPerBlock, this.order, 1);
        this.installBlock(bi, off, data);
        return;
      }
      if (cbi >= this.table.length || this.table[cbi] === 0) {
        this.ensureBlock(cbi);
        continue;
      }
      const off = candidate * this.clusterSize;
      this.update(candidate, 1);
      this.installBlock(bi, off, new Uint8Array(this.clusterSize));
      return;
    }
  }

  private installBlock(bi: number, off: number, data: Uint8Array): void {
    const c = off / this.clusterSize;
    this.allocEnd = Math.max(this.allocEnd, c + 1);
    if (c + 1 > this.freeHint && c === this.freeHint) this.freeHint = c + 1;
    this.host.claimNew(off, this.clusterSize, MetaKind.Refblock);
    // The block's own refcount (wherever it lives) must be durable before the table entry.
    this.cache.flush();
    this.host.writeMeta(off, data, MetaKind.Refblock);
    this.cache.put(off, data, false);
    this.host.barrier();
    this.table[bi] = off;
    this.reservedBits.delete(bi);
    this.writeTableEntry(bi);
  }

  private writeTableEntry(bi: number): void {
    const entry = new Uint8Array(REFTABLE_ENTRY_SIZE);
    setU64(viewOf(entry), 0, this.table[bi]);
    this.host.writeMeta(this.tableOffset + bi * REFTABLE_ENTRY_SIZE, entry, MetaKind.Reftable);
  }

  /**
   * Moves the refcount table to a bigger one at the end of the allocated
   * area, with fresh refcount blocks for whatever part of the new area no
   * block covers yet (QEMU: qcow2_refcount_area).
   *
   * Returns with at least minEntries entries in the table, every cluster of
   * the new area (new blocks, then the new table) at refcount 1, the header
   * pointing at the new table and the old table's clusters released.
   * The size loop reaches a fixed point: table clusters and new blocks only
   * grow, and each table cluster adds cs/8 entries while each block covers
   * many clusters, so one more round adds fewer clusters than the last.
   * On failure: a LimitError comes before any write and changes nothing; a
   * failed write before the header switch leaves the old table in force and
   * the new area leaked (check -r leaks reclaims it), never a dangling entry.
   */
  private growTable(minEntries: number): void {
    const cs = this.clusterSize;
    const perTableCluster = cs / REFTABLE_ENTRY_SIZE;
    const start = Math.max(this.allocEnd, Math.ceil(this.host.storage.size() / cs), 1);
    let tableClusters = Math.max(this.tableClusters, 1);
    let newBlocks: number[] = [];
    for (;;) {
      const areaEnd = start + newBlocks.length + tableClusters; // exclusive
      const entries = Math.max(minEntries, this.blockOf(areaEnd - 1) + 1, this.table.length);
      // Grow by half again so repeated growth stays amortised.
      const wanted = Math.max(Math.ceil(entries / perTableCluster), Math.ceil((this.tableClusters * 3) / 2));
      const blocks: number[] = [];
      for (let bi = this.blockOf(start); bi <= this.blockOf(areaEnd - 1); bi++) {
        if (bi >= this.table.length || this.table[bi] === 0) blocks.push(bi);
      }
      if (wanted === tableClusters && blocks.length === newBlocks.length) break;
      tableClusters = Math.max(wanted, tableClusters);
      newBlocks = blocks;
    }
    if (tableClusters * cs > MAX_REFTABLE_BYTES) {
      throw new RefcountTableLimitError(`refcount table would exceed ${MAX_REFTABLE_BYTES} bytes`);
    }
    const blocksStart = start;
    const tableStart = start + newBlocks.length;
    const areaEnd = tableStart + tableClusters;
    const newTable = this.table.slice();
    while (newTable.length < tableClusters * perTableCluster) newTable.push(0);
    // Build the new blocks in memory, then account every cluster of the area.
    const fresh = new Map<number, Uint8Array>();
    newBlocks.forEach((bi, i) => {
      const off = (blocksStart + i) * cs;
      newTable[bi] = off;
      fresh.set(bi, new Uint8Array(cs));
    });
    for (let c = blocksStart; c < areaEnd; c++) {
      const bi = this.blockOf(c);
      const f = fresh.get(bi);
      if (f) {
        setRefcount(f, viewOf(f), c % this.entriesPerBlock, this.order, 1);
      } else {
        const b = this.cache.get(this.validBlockOffset(bi));
        setRefcount(b.data, b.view, c % this.entriesPerBlock, this.order, 1);
        b.dirty = true;
      }
    }
    this.cache.flush();
    for (const [bi, data] of fresh) {
      this.host.claimNew(newTable[bi], cs, MetaKind.Refblock);
      this.host.writeMeta(newTable[bi], data, MetaKind.Refblock);
      this.cache.put(newTable[bi], data, false);
    }
    const tableBytes = new Uint8Array(tableClusters * cs);
    const tv = viewOf(tableBytes);
    newTable.forEach((off, i) => setU64(tv, i * REFTABLE_ENTRY_SIZE, off));
    this.host.claimNew(tableStart * cs, tableClusters * cs, MetaKind.Reftable);
    this.host.writeMeta(tableStart * cs, tableBytes, MetaKind.Reftable);
    this.host.barrier();
    const oldOffset = this.tableOffset;
    const oldClusters = this.tableClusters;
    this.table = newTable;
    // The new table went to disk from newTable: no entry of it has reserved bits.
    this.reservedBits.clear();
    this.tableOffset = tableStart * cs;
    this.tableClusters = tableClusters;
    this.allocEnd = Math.max(this.allocEnd, areaEnd);
    this.host.commitReftable(this.tableOffset, tableClusters);
    this.host.meta.remove(oldOffset, oldClusters * cs);
    if (oldClusters > 0) this.updateRange(oldOffset, oldClusters * cs, -1);
  }

  flush(): void {
    this.cache.flush();
  }

  /**
   * Frees a range once the L2/L1 change that dropped its last reference is
   * durable: a decrement must never reach the file before the table update
   * it follows (QEMU orders the caches the same way, refcount after L2).
   */
  freeLater(offset: number, bytes: number): void {
    this.deferredFrees.push([offset, bytes]);
  }

  /** Applies deferred frees; true when there were any. */
  applyDeferredFrees(): boolean {
    if (this.deferredFrees.length === 0) return false;
    const frees = this.deferredFrees;
    this.deferredFrees = [];
    for (const [off, bytes] of frees) this.updateRange(off, bytes, -1);
    return true;
  }

  get hasDeferredFrees(): boolean {
    return this.deferredFrees.length > 0;
  }

  /** One past the highest cluster known to be in use or handed out. */
  get allocatedEnd(): number {
    return this.allocEnd;
  }

  noteAllocatedEnd(clusterEnd: number): void {
    this.allocEnd = Math.max(this.allocEnd, clusterEnd);
  }
}

