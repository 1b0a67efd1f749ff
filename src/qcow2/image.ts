/**
 * Qcow2Image: the public face of the engine. Guest I/O (read, write,
 * compressed write, write-zeroes, discard) with QEMU 7.2's semantics, over
 * the L1 table kept in memory and L2 tables in a bounded cache.
 *
 * Write ordering (qcow2.txt leaves it to implementations; QEMU's rules):
 * guest data reaches the file before the L2 entry that points to it; a
 * refcount block before the L2 table that needs it (the L2 cache flushes the
 * refcount cache first); a new L2 table before the L1 entry that names it.
 */
import { TableCache, type CachedTable } from './cache.js';
import { compressCluster, decompressCluster } from './compress.js';
import {
  CorruptImageError,
  InvalidArgumentError,
  ReadOnlyError,
  UnsupportedFeatureError,
} from './errors.js';
import { alignDown, alignUp, viewOf } from './format/bytes.js';
import { BITMAP_FLAG_AUTO, BITMAP_FLAG_IN_USE, decodeBitmapDirectory } from './format/bitmaps.js';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_KNOWN,
  COMPAT_LAZY_REFCOUNTS,
  COMPRESSION_ZSTD,
  CRYPT_NONE,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  L1_ENTRY_SIZE,
  SUBCLUSTERS_PER_CLUSTER,
} from './format/constants.js';
import {
  ClusterType,
  decodeCompressed,
  encodeCompressed,
  entryOffset,
  isCopied,
  makeEntry,
} from './format/entries.js';
import type { HeaderExtensions } from './format/extensions.js';
import type { Qcow2Header } from './format/header.js';
import type { SnapshotEntry } from './format/snapshot-table.js';
import { encodeFirstCluster, readFirstCluster } from './header-io.js';
import { ALL_SUBCLUSTERS, L2Layout, UNALLOCATED_ENTRY, sameEntry, subclusterMask, type L2Entry } from './l2.js';
import { MetaKind, MetadataMap, metaKindName } from './overlap.js';
import { OverlapError } from './errors.js';
import { Refcounts, type RefcountHost } from './refcount.js';
import type { BlockStorage } from './storage/types.js';
import type {
  CheckResult,
  CompressionType,
  GuestDevice,
  ImageInfo,
  OpenOptions,
  RepairMode,
  SnapshotInfo,
  CreateOptions,
} from './types.js';
import { validateBitmapDirectory, validateFeatureExtensions, validateHeader } from './validate.js';
import { createLayout } from './create.js';
import { loadSnapshots, snapshotInfos } from './snapshot-table-io.js';
import { applySnapshot, createSnapshot, deleteSnapshot, viewSnapshot } from './snapshot.js';
import { amendImage } from './amend.js';
import { resizeImage } from './resize.js';
import { checkImage } from './check.js';

/** QEMU's default l2-cache-size upper bound (DEFAULT_L2_CACHE_MAX_SIZE). */
const DEFAULT_L2_CACHE_BYTES = 32 * 1024 * 1024;

export interface BlockStatus {
  length: number;
  zero: boolean;
  allocated: boolean;
}

export class Qcow2Image implements GuestDevice, RefcountHost {
  readonly storage: BlockStorage;
  header: Qcow2Header;
  ext: HeaderExtensions;
  backingFile: string | undefined;
  readonly clusterBits: number;
  readonly clusterSize: number;
  layout: L2Layout;
  l1: Uint8Array;
  l1View: DataView;
  readonly meta: MetadataMap;
  refcounts!: Refcounts;
  l2Cache!: TableCache;
  backing: GuestDevice | null = null;
  readOnly: boolean;
  snapshots: SnapshotEntry[] = [];
  /** Index of the first snapshot table entry that runs past the end of the file (check reports it). */
  snapshotTableIncompleteAt: number | undefined;
  snapshotTableBytes = 0;
  /** Name of the snapshot exposed instead of the active layer (read-only opens). */
  viewingSnapshot: string | undefined;
  private dirtyMarked = false;
  /** Guest data written since the last storage flush (an L2 table pointing at it must wait). */
  private unsyncedData = false;
  private closed = false;
  private lastDecompressed: { offset: number; data: Uint8Array } | undefined;
  private readonly openOptions: OpenOptions;

  private constructor(storage: BlockStorage, opts: OpenOptions) {
    this.storage = storage;
    this.openOptions = opts;
    this.readOnly = opts.readOnly ?? storage.readOnly;
    const fc = readFirstCluster(storage);
    validateHeader(fc.header, fc.ext.featureNames, opts.forCheck ?? false);
    validateFeatureExtensions(fc.header, fc.ext);
    this.header = fc.header;
    this.ext = fc.ext;
    this.backingFile = fc.backingFile;
    this.clusterBits = fc.header.clusterBits;
    this.clusterSize = 2 ** this.clusterBits;
    this.layout = new L2Layout(this.clusterSize, (fc.header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n);
    this.meta = new MetadataMap(this.clusterBits);
    this.l1 = new Uint8Array(0);
    this.l1View = viewOf(this.l1);
  }

  static open(storage: BlockStorage, opts: OpenOptions = {}): Qcow2Image {
    const img = new Qcow2Image(storage, opts);
    img.load();
    return img;
  }

  static create(storage: BlockStorage, opts: CreateOptions, open: OpenOptions = {}): Qcow2Image {
    const resolved = createLayout(storage, opts);
    const img = Qcow2Image.open(storage, { ...open, readOnly: false });
    img.initialiseAfterCreate(opts, resolved.size);
    return img;
  }

  // ---------------------------------------------------------------- open

  private load(): void {
    const h = this.header;
    if (h.incompatibleFeatures & INCOMPAT_CORRUPT && !this.readOnly && !this.openOptions.forCheck) {
      throw new CorruptImageError('image is marked corrupt; open it read-only, or repair it with check -r all');
    }
    this.meta.add(0, this.clusterSize, MetaKind.Header);
    this.loadL1(h.l1TableOffset, h.l1Size);
    const l2Tables = Math.max(2, Math.min(h.l1Size, Math.floor(this.cacheBudget('l2') / this.clusterSize)));
    this.l2Cache = new TableCache(
      l2Tables,
      (off) => this.storage.read(off, this.clusterSize),
      (t) => this.writeBackL2(t),
    );
    const refTables = Math.max(4, Math.floor(this.cacheBudget('refcount') / this.clusterSize));
    this.refcounts = new Refcounts(this, h.refcountOrder, h.refcountTableOffset, h.refcountTableClusters, refTables);
    this.refcounts.load();
    if (h.nbSnapshots > 0) {
      const loaded = loadSnapshots(this, this.openOptions.forCheck ?? false);
      this.snapshots = loaded.entries;
      this.snapshotTableIncompleteAt = loaded.incompleteAt;
      this.snapshotTableBytes = loaded.bytes;
    }
    this.registerActiveL2s();
    // check never needs the backing chain (qemu-img check opens with BDRV_O_NO_BACKING).
    if (this.backingFile !== undefined && this.openOptions.openBacking && !this.openOptions.forCheck) {
      const fmt = this.ext.backingFormat;
      if (fmt !== undefined && fmt !== 'raw' && fmt !== 'qcow2') {
        throw new UnsupportedFeatureError(`backing file format '${fmt}' is not supported (only qcow2 and raw)`);
      }
      this.backing = this.openOptions.openBacking(this.backingFile, fmt);
    }
    this.validateBitmaps();
    if (!this.readOnly) this.prepareReadWrite();
    if (this.openOptions.snapshot !== undefined) this.viewSnapshot(this.openOptions.snapshot);
  }

  private cacheBudget(which: 'l2' | 'refcount'): number {
    if (which === 'l2') return this.openOptions.l2CacheSize ?? DEFAULT_L2_CACHE_BYTES;
    return this.openOptions.refcountCacheSize ?? Math.max(4 * this.clusterSize, DEFAULT_L2_CACHE_BYTES / 4);
  }

  loadL1(offset: number, entries: number): void {
    this.l1 = entries > 0 ? this.storage.read(offset, entries * L1_ENTRY_SIZE) : new Uint8Array(0);
    this.l1View = viewOf(this.l1);
    if (entries > 0) this.meta.add(offset, entries * L1_ENTRY_SIZE, MetaKind.ActiveL1);
  }

  registerActiveL2s(): void {
    for (let i = 0; i < this.l1Entries; i++) {
      const off = this.l2OffsetAt(i);
      if (off !== 0 && off % this.clusterSize === 0) this.meta.add(off, this.clusterSize, MetaKind.ActiveL2);
    }
  }

  private prepareReadWrite(): void {
    const h = this.header;
    if (h.cryptMethod !== CRYPT_NONE) throw new UnsupportedFeatureError('encrypted images cannot be opened read-write');
    if (h.incompatibleFeatures & INCOMPAT_DATA_FILE) {
      throw new UnsupportedFeatureError('images with an external data file are not supported for writing');
    }
    let rewrite = false;
    if (h.autoclearFeatures & ~0n) {
      // Autoclear bits promise consistency of features we do not maintain (bitmaps included):
      // clear every one we will not keep up to date, as the spec asks of a writer.
      h.autoclearFeatures = 0n;
      rewrite = true;
    }
    if (rewrite) this.writeHeader();
    if (h.incompatibleFeatures & INCOMPAT_DIRTY && !this.openOptions.forCheck && (this.openOptions.repairDirty ?? true)) {
      this.repairDirty();
    }
  }

  /** Repairs the refcounts of an image left dirty by lazy refcounts (QEMU does this on open). */
  private repairDirty(): void {
    this.checkImpl('all');
    this.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
    this.writeHeaderField();
  }

  private initialiseAfterCreate(opts: CreateOptions, size: number): void {
    this.header.size = size;
    this.resizeL1(Math.ceil(this.header.size / this.bytesPerL1Entry));
    if (opts.preallocation === 'metadata') this.preallocateMetadata();
    this.flush();
  }

  // ---------------------------------------------------------------- geometry

  get virtualSize(): number {
    return this.header.size;
  }

  get version(): 2 | 3 {
    return this.header.version;
  }

  get l1Entries(): number {
    return this.l1.length / L1_ENTRY_SIZE;
  }

  get bytesPerL1Entry(): number {
    return this.layout.entries * this.clusterSize;
  }

  get subclusterSize(): number {
    return this.layout.extended ? this.clusterSize / SUBCLUSTERS_PER_CLUSTER : this.clusterSize;
  }

  get compressionType(): CompressionType {
    return this.header.compressionType === COMPRESSION_ZSTD ? 'zstd' : 'zlib';
  }

  get lazyRefcounts(): boolean {
    return (this.header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
  }

  l2OffsetAt(l1Index: number): number {
    return entryOffset(this.l1View.getUint32(l1Index * 8), this.l1View.getUint32(l1Index * 8 + 4));
  }

  l1CopiedAt(l1Index: number): boolean {
    return isCopied(this.l1View.getUint32(l1Index * 8));
  }

  // ---------------------------------------------------------------- RefcountHost

  writeMeta(offset: number, data: Uint8Array, kind: MetaKind): void {
    this.assertWritable();
    this.overlapCheck(offset, data.length, kind);
    this.storage.write(offset, data);
  }

  claimNew(offset: number, bytes: number, kind: MetaKind): void {
    try {
      this.meta.claim(offset, bytes, kind);
    } catch (e) {
      if (e instanceof OverlapError) this.corruption(e.message);
      throw e;
    }
  }

  /** QEMU's pre-write overlap check: a hit marks the image corrupt and refuses the write. */
  private overlapCheck(offset: number, bytes: number, kind: MetaKind | undefined): void {
    try {
      this.meta.check(offset, bytes, kind);
    } catch (e) {
      if (e instanceof OverlapError) this.corruption(e.message);
      throw e;
    }
  }

  clusterFreed(offset: number): void {
    this.l2Cache?.discard(offset);
    this.refcounts?.cache.discard(offset);
    if (this.lastDecompressed && Math.floor(this.lastDecompressed.offset / this.clusterSize) === offset / this.clusterSize) {
      this.lastDecompressed = undefined;
    }
  }

  commitReftable(offset: number, clusters: number): void {
    this.header.refcountTableOffset = offset;
    this.header.refcountTableClusters = clusters;
    this.writeHeader();
  }

  corruption(message: string): never {
    if (!this.readOnly && !(this.header.incompatibleFeatures & INCOMPAT_CORRUPT)) {
      this.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
      try {
        this.writeHeaderField();
      } catch {
        // The image is already damaged; reporting the corruption matters more.
      }
      this.readOnly = true;
    }
    throw new CorruptImageError(`${message}; further writes are refused`);
  }

  barrier(): void {
    this.storage.flush();
  }

  // ---------------------------------------------------------------- header writes

  /** Rewrites the whole first cluster's header area (header, extensions, backing name). */
  writeHeader(): void {
    const bytes = encodeFirstCluster({ header: this.header, ext: this.ext, backingFile: this.backingFile }, this.clusterSize);
    this.writeMeta(0, bytes, MetaKind.Header);
  }

  /** Rewrites the 8-byte incompatible-features field alone, as QEMU marks dirty/corrupt. */
  private writeHeaderField(): void {
    if (this.header.version < 3) return;
    const b = new Uint8Array(8);
    viewOf(b).setBigUint64(0, this.header.incompatibleFeatures);
    this.assertWritable(true);
    this.storage.write(72, b);
    this.storage.flush();
  }

  private assertWritable(evenIfCorrupt = false): void {
    if (this.closed) throw new InvalidArgumentError('image is closed');
    if (this.readOnly && !evenIfCorrupt) throw new ReadOnlyError('image is open read-only');
  }

  /** With lazy refcounts, the first change marks the image dirty (qcow2_mark_dirty). */
  private beforeChange(): void {
    this.assertWritable();
    if (this.viewingSnapshot !== undefined) throw new ReadOnlyError('a snapshot view is read-only');
    if (this.lazyRefcounts && !this.dirtyMarked) {
      this.storage.flush();
      this.header.incompatibleFeatures |= INCOMPAT_DIRTY;
      this.writeHeaderField();
      this.dirtyMarked = true;
    }
  }

  // ---------------------------------------------------------------- L1 / L2 access

  private l2TableOffsetFor(l1Index: number): number {
    const off = this.l2OffsetAt(l1Index);
    if (off === 0) return 0;
    if (off % this.clusterSize !== 0) this.corruption(`L2 table offset ${off} unaligned (L1 index ${l1Index})`);
    if (off < this.clusterSize) this.corruption(`L2 table offset ${off} overlaps the image header (L1 index ${l1Index})`);
    return off;
  }

  /** The L2 entry for a guest cluster, without allocating anything. */
  entryFor(vc: number): L2Entry {
    const l1i = Math.floor(vc / this.layout.entries);
    if (l1i >= this.l1Entries) return UNALLOCATED_ENTRY;
    const off = this.l2TableOffsetFor(l1i);
    if (off === 0) return UNALLOCATED_ENTRY;
    return this.layout.get(this.l2Cache.get(off), vc % this.layout.entries);
  }

  /** The L2 table holding vc's entry, allocated or copied so that it may be written (refcount 1). */
  private writableL2(vc: number): { table: CachedTable; index: number } {
    const l1i = Math.floor(vc / this.layout.entries);
    const index = vc % this.layout.entries;
    const old = this.l2TableOffsetFor(l1i);
    if (old !== 0 && this.l1CopiedAt(l1i)) {
      const k = this.meta.kindAtCluster(old / this.clusterSize);
      if (k !== MetaKind.ActiveL2) {
        this.corruption(`L2 table at offset ${old} (L1 index ${l1i}) overlaps the ${k === undefined ? 'free space' : metaKindName(k)}`);
      }
      return { table: this.l2Cache.get(old), index };
    }
    const data = old !== 0 ? this.l2Cache.get(old).data.slice() : new Uint8Array(this.clusterSize);
    const off = this.refcounts.allocClusters(1);
    this.claimNew(off, this.clusterSize, MetaKind.ActiveL2);
    const table = this.l2Cache.put(off, data, true);
    this.writeBackL2(table);
    table.dirty = false;
    this.barrier();
    this.setL1Entry(l1i, off);
    if (old !== 0) {
      this.meta.remove(old, this.clusterSize);
      this.refcounts.freeLater(old, this.clusterSize);
    }
    return { table, index };
  }

  /**
   * Writes an L2 table after what it depends on is durable: the refcount
   * blocks counting its clusters and the guest data it points to (QEMU:
   * cache dependency plus depends_on_flush).
   */
  private writeBackL2(t: CachedTable): void {
    let barrier = this.unsyncedData;
    if (this.refcounts.cache.hasDirty()) {
      this.refcounts.flush();
      barrier = true;
    }
    if (barrier) {
      this.storage.flush();
      this.unsyncedData = false;
    }
    this.writeMeta(t.offset, t.data, MetaKind.ActiveL2);
  }

  setL1Entry(l1Index: number, l2Offset: number): void {
    const [hi, lo] = makeEntry(l2Offset, l2Offset !== 0);
    const was = this.l1.slice(l1Index * 8, l1Index * 8 + 8);
    this.l1View.setUint32(l1Index * 8, hi);
    this.l1View.setUint32(l1Index * 8 + 4, lo);
    try {
      this.writeMeta(this.header.l1TableOffset + l1Index * 8, this.l1.slice(l1Index * 8, l1Index * 8 + 8), MetaKind.ActiveL1);
    } catch (e) {
      // The entry is written through, never again at flush: if this write fails
      // the table must keep the entry the disk has (QEMU's l2_allocate restores
      // l1_table[l1_index] on failure), or later writes land in an L2 table no
      // L1 entry on disk points to.
      this.l1.set(was, l1Index * 8);
      throw e;
    }
  }

  /** Moves the active L1 table to a table of newEntries entries (grow or shrink). */
  resizeL1(newEntries: number): void {
    if (newEntries === this.l1Entries && this.header.l1TableOffset !== 0) return;
    const bytes = newEntries * L1_ENTRY_SIZE;
    const table = new Uint8Array(bytes);
    table.set(this.l1.subarray(0, Math.min(bytes, this.l1.length)));
    const oldOffset = this.header.l1TableOffset;
    const oldBytes = this.l1.length;
    let newOffset = 0;
    if (newEntries > 0) {
      newOffset = this.refcounts.allocClusters(Math.ceil(bytes / this.clusterSize));
      this.claimNew(newOffset, bytes, MetaKind.ActiveL1);
      this.refcounts.flush();
      this.writeMeta(newOffset, padToCluster(table, this.clusterSize), MetaKind.ActiveL1);
      this.storage.flush();
    }
    this.l1 = table;
    this.l1View = viewOf(table);
    this.header.l1TableOffset = newOffset;
    this.header.l1Size = newEntries;
    this.writeHeader();
    this.storage.flush();
    if (oldOffset !== 0 && oldBytes > 0) {
      this.meta.remove(oldOffset, oldBytes);
      this.refcounts.updateRange(oldOffset, oldBytes, -1);
    }
  }

  /** Sets an entry, re-fetching the table in case reads since it was obtained evicted it. */
  private setEntry(t: CachedTable, index: number, e: L2Entry): void {
    this.layout.set(this.l2Cache.peek(t.offset) ?? this.l2Cache.get(t.offset), index, e);
  }

  /** Drops the references an L2 entry held (normal, zero-allocated or compressed data). */
  freeEntryClusters(e: L2Entry): void {
    const type = this.layout.type(e);
    if (type === ClusterType.Compressed) {
      const c = decodeCompressed(e.hi, e.lo, this.clusterBits);
      this.refcounts.freeLater(c.offset, c.size);
    } else if (type === ClusterType.Normal || type === ClusterType.ZeroAlloc) {
      const off = this.layout.offset(e);
      if (off % this.clusterSize === 0) this.refcounts.freeLater(off, this.clusterSize);
    }
  }

  private dataClusterOffset(e: L2Entry, vc: number): number {
    const off = this.layout.offset(e);
    if (off % this.clusterSize !== 0) {
      this.corruption(`cluster allocation offset ${off} unaligned (guest cluster ${vc})`);
    }
    if (off < this.clusterSize) this.corruption(`data cluster at offset ${off} overlaps the image header (guest cluster ${vc})`);
    return off;
  }

  // ---------------------------------------------------------------- reads

  private checkRange(offset: number, length: number): void {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0) {
      throw new InvalidArgumentError(`invalid request: offset ${offset}, length ${length}`);
    }
    if (offset + length > this.virtualSize) {
      throw new InvalidArgumentError(`request [${offset}, ${offset + length}) is past the end of the ${this.virtualSize}-byte image`);
    }
  }

  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.readInto(offset, out);
    return out;
  }

  readInto(offset: number, dst: Uint8Array): void {
    this.assertOpen();
    this.checkRange(offset, dst.length);
    this.readGuest(offset, dst);
  }

  private assertOpen(): void {
    if (this.closed) throw new InvalidArgumentError('image is closed');
    if (this.header.cryptMethod !== CRYPT_NONE) throw new UnsupportedFeatureError('reading encrypted images is not supported');
    if (this.header.incompatibleFeatures & INCOMPAT_DATA_FILE) {
      throw new UnsupportedFeatureError('images with an external data file are not supported');
    }
  }

  /** Calls fn for each piece of [offset, offset+length) that lies in one guest cluster. */
  private forEachClusterPiece(offset: number, length: number, fn: (vc: number, inOff: number, done: number, n: number) => void): void {
    const cs = this.clusterSize;
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const vc = Math.floor(pos / cs);
      const inOff = pos - vc * cs;
      const n = Math.min(cs - inOff, length - done);
      fn(vc, inOff, done, n);
      done += n;
    }
  }

  /** Reads guest bytes without the virtual-size bound (COW of the last partial cluster needs that). */
  private readGuest(offset: number, dst: Uint8Array): void {
    this.forEachClusterPiece(offset, dst.length, (vc, inOff, done, n) => this.readInCluster(vc, inOff, dst.subarray(done, done + n)));
  }

  private readInCluster(vc: number, inOff: number, dst: Uint8Array): void {
    const e = this.entryFor(vc);
    const type = this.layout.type(e);
    const guestBase = vc * this.clusterSize;
    if (type === ClusterType.Compressed) {
      dst.set(this.decompressed(e).subarray(inOff, inOff + dst.length));
      return;
    }
    this.refuseV2ZeroCluster(type, vc);
    if (!this.layout.extended) {
      switch (type) {
        case ClusterType.Unallocated:
          this.readBacking(guestBase + inOff, dst);
          return;
        case ClusterType.ZeroPlain:
        case ClusterType.ZeroAlloc:
          dst.fill(0);
          return;
        default:
          this.storage.readInto(this.dataClusterOffset(e, vc) + inOff, dst);
          return;
      }
    }
    // Extended L2: each subcluster has its own state.
    const scs = this.subclusterSize;
    let done = 0;
    while (done < dst.length) {
      const pos = inOff + done;
      const sc = Math.floor(pos / scs);
      const n = Math.min((sc + 1) * scs - pos, dst.length - done);
      const part = dst.subarray(done, done + n);
      const st = this.subclusterState(e, type, sc, vc);
      if (st === 'normal') this.storage.readInto(this.dataClusterOffset(e, vc) + pos, part);
      else if (st === 'zero') part.fill(0);
      else this.readBacking(guestBase + pos, part);
      done += n;
    }
  }

  /** v2 has no zero clusters; QEMU signals corruption on one ("Zero cluster entry found in pre-v3 image"). */
  private refuseV2ZeroCluster(type: ClusterType, vc: number): void {
    if (this.version < 3 && (type === ClusterType.ZeroPlain || type === ClusterType.ZeroAlloc)) {
      this.corruption(`zero cluster entry found in pre-v3 image (guest cluster ${vc})`);
    }
  }

  private subclusterState(e: L2Entry, type: ClusterType, sc: number, vc: number): 'normal' | 'zero' | 'unallocated' {
    const a = (e.alloc >>> sc) & 1;
    const z = (e.zero >>> sc) & 1;
    if (a && z) this.corruption(`invalid subcluster bitmap (guest cluster ${vc}, subcluster ${sc})`);
    if (a) {
      if (type === ClusterType.Unallocated) this.corruption(`subcluster allocated in an unallocated cluster (guest cluster ${vc})`);
      return 'normal';
    }
    return z ? 'zero' : 'unallocated';
  }

  private readBacking(offset: number, dst: Uint8Array): void {
    const b = this.backing;
    if (!b || offset >= b.virtualSize) {
      dst.fill(0);
      return;
    }
    const n = Math.min(dst.length, b.virtualSize - offset);
    b.readInto(offset, dst.subarray(0, n));
    if (n < dst.length) dst.fill(0, n);
  }

  private decompressed(e: L2Entry): Uint8Array {
    const c = decodeCompressed(e.hi, e.lo, this.clusterBits);
    if (this.lastDecompressed?.offset === c.offset) return this.lastDecompressed.data;
    if (c.offset < this.clusterSize) this.corruption(`compressed cluster at offset ${c.offset} overlaps the image header`);
    const src = this.storage.read(c.offset, c.size);
    const data = decompressCluster(this.compressionType, src, this.clusterSize);
    this.lastDecompressed = { offset: c.offset, data };
    return data;
  }

  blockStatus(offset: number, length: number): BlockStatus {
    this.assertOpen();
    this.checkRange(offset, length);
    const first = this.statusAt(offset);
    let len = Math.min(first.until - offset, length);
    while (len < length) {
      const next = this.statusAt(offset + len);
      if (next.zero !== first.zero || next.allocated !== first.allocated) break;
      len = Math.min(next.until - offset, length);
    }
    return { length: len, zero: first.zero, allocated: first.allocated };
  }

  private statusAt(pos: number): { until: number; zero: boolean; allocated: boolean } {
    const cs = this.clusterSize;
    const vc = Math.floor(pos / cs);
    const l1i = Math.floor(vc / this.layout.entries);
    if (l1i < this.l1Entries && this.l2OffsetAt(l1i) === 0) {
      return { until: (l1i + 1) * this.bytesPerL1Entry, ...this.unallocatedStatus(pos) };
    }
    const e = this.entryFor(vc);
    const type = this.layout.type(e);
    const end = (vc + 1) * cs;
    if (type === ClusterType.Compressed) return { until: end, zero: false, allocated: true };
    this.refuseV2ZeroCluster(type, vc);
    if (!this.layout.extended) {
      if (type === ClusterType.Unallocated) return { until: end, ...this.unallocatedStatus(pos) };
      if (type === ClusterType.Normal) return { until: end, zero: false, allocated: true };
      return { until: end, zero: true, allocated: true };
    }
    const sc = Math.floor((pos - vc * cs) / this.subclusterSize);
    const until = vc * cs + (sc + 1) * this.subclusterSize;
    const st = this.subclusterState(e, type, sc, vc);
    if (st === 'normal') return { until, zero: false, allocated: true };
    if (st === 'zero') return { until, zero: true, allocated: true };
    return { until, ...this.unallocatedStatus(pos) };
  }

  private unallocatedStatus(pos: number): { zero: boolean; allocated: boolean } {
    return { zero: !this.backing || pos >= this.backing.virtualSize, allocated: false };
  }

  // ---------------------------------------------------------------- writes

  write(offset: number, data: Uint8Array): void {
    this.assertOpen();
    this.checkRange(offset, data.length);
    this.beforeChange();
    this.forEachClusterPiece(offset, data.length, (vc, inOff, done, n) => this.writeInCluster(vc, inOff, data.subarray(done, done + n)));
  }

  private writeData(host: number, data: Uint8Array): void {
    this.overlapCheck(host, data.length, undefined);
    this.storage.write(host, data);
    this.unsyncedData = true;
  }

  private writeInCluster(vc: number, inOff: number, data: Uint8Array): void {
    const cs = this.clusterSize;
    const { table, index } = this.writableL2(vc);
    const old = this.layout.get(table, index);
    const type = this.layout.type(old);
    const copied = isCopied(old.hi);
    if (!this.layout.extended) {
      if (copied && type === ClusterType.Normal) {
        this.writeData(this.dataClusterOffset(old, vc) + inOff, data);
        return;
      }
      if (copied && type === ClusterType.ZeroAlloc) {
        // Reused in place (QEMU: cluster_needs_new_alloc is false); the rest of it reads as zeros.
        const host = this.dataClusterOffset(old, vc);
        const buf = new Uint8Array(cs);
        buf.set(data, inOff);
        this.writeData(host, buf);
        this.setEntry(table, index, entryWith(host, true));
        return;
      }
      const buf = this.clusterWithOverlay(vc, inOff, data, type === ClusterType.Unallocated || type === ClusterType.ZeroPlain);
      const host = this.refcounts.allocClusters(1);
      this.writeData(host, buf);
      this.setEntry(table, index, entryWith(host, true));
      this.freeEntryClusters(old);
      return;
    }
    this.writeInClusterExtended(vc, inOff, data, table, index, old, type, copied);
  }

  private writeInClusterExtended(
    vc: number,
    inOff: number,
    data: Uint8Array,
    table: CachedTable,
    index: number,
    old: L2Entry,
    type: ClusterType,
    copied: boolean,
  ): void {
    const scs = this.subclusterSize;
    const s0 = Math.floor(inOff / scs);
    const s1 = Math.floor((inOff + data.length - 1) / scs);
    const touched = subclusterMask(s0, s1 - s0 + 1);
    if (copied && type === ClusterType.Normal) {
      const host = this.dataClusterOffset(old, vc);
      for (let sc = s0; sc <= s1; sc++) this.subclusterState(old, type, sc, vc);
      if ((old.alloc & touched) === touched) {
        this.writeData(host + inOff, data);
      } else {
        // Partially written subclusters that were not allocated get their old content around the data.
        const start = s0 * scs;
        const buf = new Uint8Array((s1 + 1) * scs - start);
        this.readGuest(vc * this.clusterSize + start, buf);
        buf.set(data, inOff - start);
        this.writeData(host + start, buf);
      }
      this.setEntry(table, index, { hi: old.hi, lo: old.lo, alloc: (old.alloc | touched) >>> 0, zero: (old.zero & ~touched) >>> 0 });
      return;
    }
    const host = this.refcounts.allocClusters(1);
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
    const buf = this.clusterWithOverlay(vc, inOff, data, false);
    this.writeData(host, buf);
    this.setEntry(table, index, { ...entryParts(host, true), alloc, zero });
    this.freeEntryClusters(old);
  }

  /** The guest content of cluster vc with data laid over it at inOff. */
  private clusterWithOverlay(vc: number, inOff: number, data: Uint8Array, zeroIfNoBacking: boolean): Uint8Array {
    const cs = this.clusterSize;
    const buf = new Uint8Array(cs);
    if (data.length < cs && !(zeroIfNoBacking && !this.backing)) this.readGuest(vc * cs, buf);
    buf.set(data, inOff);
    return buf;
  }

  writeCompressed(offset: number, data: Uint8Array): void {
    this.assertOpen();
    this.checkRange(offset, data.length);
    const cs = this.clusterSize;
    if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== this.virtualSize)) {
      throw new InvalidArgumentError('compressed writes must cover whole clusters (or reach the end of the image)');
    }
    this.beforeChange();
    for (let done = 0; done < data.length; done += cs) {
      const chunk = new Uint8Array(cs);
      chunk.set(data.subarray(done, Math.min(done + cs, data.length)));
      this.writeCompressedCluster((offset + done) / cs, chunk);
    }
  }

  private writeCompressedCluster(vc: number, chunk: Uint8Array): void {
    const packed = compressCluster(this.compressionType, chunk, this.clusterSize);
    if (!packed) {
      // Incompressible: QEMU writes the cluster uncompressed.
      this.writeInCluster(vc, 0, chunk);
      return;
    }
    const current = this.entryFor(vc);
    if (this.layout.offset(current) !== 0 || this.layout.type(current) === ClusterType.Compressed) {
      throw new InvalidArgumentError(`compressed write to guest cluster ${vc}, which is already allocated`);
    }
    const { table, index } = this.writableL2(vc);
    const host = this.refcounts.allocBytes(packed.length);
    this.writeData(host, packed);
    const [hi, lo] = encodeCompressed(host, packed.length, this.clusterBits);
    this.setEntry(table, index, { hi, lo, zero: 0, alloc: 0 });
  }

  /**
   * write-zeroes, split like QEMU's block layer (aligned to the subcluster
   * size); aligned parts become zero clusters/subclusters on v3, the rest
   * are written as zero data unless they already read as zeros.
   */
  writeZeroes(offset: number, length: number, opts: { unmap?: boolean } = {}): void {
    this.assertOpen();
    this.checkRange(offset, length);
    if (length === 0) return;
    this.beforeChange();
    const unit = this.subclusterSize;
    const end = offset + length;
    // v2 cannot express zero clusters: without a backing file QEMU discards instead, with one it writes zeros.
    const asData = this.version < 3 && this.backingFile !== undefined;
    for (const [a, b] of splitAligned(offset, end, unit)) {
      if (asData) {
        this.writeZeroData(a, b);
      } else if (a % unit === 0 && (b % unit === 0 || b === this.virtualSize)) {
        this.zeroize(a, b, opts.unmap ?? false);
      } else if (this.restOfSubclusterIsZero(a, b)) {
        this.zeroize(alignDown(a, unit), Math.min(alignUp(b, unit), this.virtualSize), opts.unmap ?? false);
      } else {
        this.writeZeroData(a, b);
      }
    }
  }

  private writeZeroData(a: number, b: number): void {
    const chunk = Math.min(b - a, 4 * this.clusterSize);
    const zeros = new Uint8Array(chunk);
    for (let p = a; p < b; p += chunk) {
      const n = Math.min(chunk, b - p);
      this.write(p, n === chunk ? zeros : zeros.subarray(0, n));
    }
  }

  /** QEMU's is_zero check around an unaligned write-zeroes, plus its subcluster-type check. */
  private restOfSubclusterIsZero(a: number, b: number): boolean {
    const unit = this.subclusterSize;
    const s = alignDown(a, unit);
    const e = b === this.virtualSize ? b : Math.min(alignUp(b, unit), this.virtualSize);
    const zeroRange = (x: number, y: number) => y <= x || this.blockStatus(x, y - x).length === y - x && this.blockStatus(x, y - x).zero;
    if (!zeroRange(s, a) || !zeroRange(b, e)) return false;
    const vc = Math.floor(s / this.clusterSize);
    const e2 = this.entryFor(vc);
    const type = this.layout.type(e2);
    if (!this.layout.extended) return type !== ClusterType.Normal && type !== ClusterType.Compressed;
    if (type === ClusterType.Compressed) return false;
    const sc = Math.floor((s - vc * this.clusterSize) / unit);
    return this.subclusterState(e2, type, sc, vc) !== 'normal';
  }

  /**
   * Refuses (before anything changes) zeroing from a onwards that
   * qcow2_subcluster_zeroize could not express: v2 has no zero clusters, and
   * part of a compressed cluster cannot be zeroed with extended L2.
   */
  assertZeroizable(a: number): void {
    const fail = (why: string) => {
      throw new UnsupportedFeatureError(`Failed to zero out new clusters: ${why}`);
    };
    if (this.version < 3) fail('version 2 images have no zero clusters');
    const cs = this.clusterSize;
    if (this.layout.extended && a % cs !== 0) {
      const e = this.entryFor(Math.floor(a / cs));
      if (this.layout.type(e) === ClusterType.Compressed) fail('part of a compressed cluster cannot be zeroed');
    }
  }

  /** qcow2_subcluster_zeroize for [a, b), a subcluster aligned and b aligned or the image end. */
  private zeroize(a: number, b: number, unmap: boolean): void {
    const cs = this.clusterSize;
    let pos = a;
    while (pos < b) {
      const vc = Math.floor(pos / cs);
      const clusterEnd = (vc + 1) * cs;
      const wholeCluster = pos === vc * cs && (b >= clusterEnd || b === this.virtualSize);
      if (this.version < 3) {
        this.discardCluster(vc);
        pos = Math.min(clusterEnd, b);
      } else if (wholeCluster || !this.layout.extended) {
        this.zeroCluster(vc, unmap);
        pos = Math.min(clusterEnd, b);
      } else {
        const until = Math.min(clusterEnd, b);
        this.zeroSubclusters(vc, pos, until);
        pos = until;
      }
    }
  }

  private zeroCluster(vc: number, unmap: boolean): void {
    const old = this.entryFor(vc);
    const type = this.layout.type(old);
    const allocated = type === ClusterType.Normal || type === ClusterType.ZeroAlloc || type === ClusterType.Compressed;
    const drop = type === ClusterType.Compressed || (unmap && allocated);
    let next: L2Entry = drop ? { ...UNALLOCATED_ENTRY } : { ...old };
    if (this.layout.extended) next = { ...next, zero: ALL_SUBCLUSTERS, alloc: 0 };
    else next = { ...next, lo: (next.lo | 1) >>> 0 };
    if (sameEntry(old, next)) return;
    const { table, index } = this.writableL2(vc);
    const current = this.layout.get(table, index);
    this.setEntry(table, index, next);
    if (drop) this.freeEntryClusters(current);
  }

  private zeroSubclusters(vc: number, a: number, b: number): void {
    const old = this.entryFor(vc);
    if (this.layout.type(old) === ClusterType.Compressed) {
      // QEMU returns ENOTSUP here and the block layer writes zero data instead.
      this.writeZeroData(a, b);
      return;
    }
    const base = vc * this.clusterSize;
    const scs = this.subclusterSize;
    const s0 = Math.floor((a - base) / scs);
    const count = Math.ceil((b - base) / scs) - s0;
    const mask = subclusterMask(s0, count);
    const next = { ...old, zero: (old.zero | mask) >>> 0, alloc: (old.alloc & ~mask) >>> 0 };
    if (sameEntry(old, next)) return;
    const { table, index } = this.writableL2(vc);
    const current = this.layout.get(table, index);
    this.setEntry(table, index, { ...current, zero: (current.zero | mask) >>> 0, alloc: (current.alloc & ~mask) >>> 0 });
  }

  /**
   * discard: acts on whole clusters only (and on the last partial cluster of
   * an image whose size is not cluster aligned); v2 images with a backing
   * file cannot express it (QEMU: -ENOTSUP, ignored).
   */
  discard(offset: number, length: number): void {
    this.assertOpen();
    this.checkRange(offset, length);
    if (length === 0) return;
    this.beforeChange();
    if (this.version < 3 && this.backingFile !== undefined) return;
    const cs = this.clusterSize;
    for (const [a, b] of splitAligned(offset, offset + length, cs)) {
      if (a % cs !== 0 || (b % cs !== 0 && b !== this.virtualSize)) continue;
      for (let vc = a / cs; vc * cs < b; vc++) this.discardCluster(vc);
    }
  }

  private discardCluster(vc: number): void {
    const old = this.entryFor(vc);
    const type = this.layout.type(old);
    const allocated = type === ClusterType.Normal || type === ClusterType.ZeroAlloc || type === ClusterType.Compressed;
    let next: L2Entry;
    if (this.backingFile !== undefined || allocated) {
      next = this.layout.extended
        ? { hi: 0, lo: 0, zero: ALL_SUBCLUSTERS, alloc: 0 }
        : { hi: 0, lo: this.version >= 3 ? 1 : 0, zero: 0, alloc: 0 };
    } else {
      next = { ...UNALLOCATED_ENTRY };
    }
    if (sameEntry(old, next)) return;
    const { table, index } = this.writableL2(vc);
    const current = this.layout.get(table, index);
    this.setEntry(table, index, next);
    this.freeEntryClusters(current);
  }

  /** Full discard of one guest cluster (its entry becomes 0), for shrinking. */
  dropCluster(vc: number): void {
    const old = this.entryFor(vc);
    if (sameEntry(old, UNALLOCATED_ENTRY)) return;
    const { table, index } = this.writableL2(vc);
    const current = this.layout.get(table, index);
    this.setEntry(table, index, { ...UNALLOCATED_ENTRY });
    this.freeEntryClusters(current);
  }

  /** Unhooks and frees the L2 table of an L1 entry past the end of a shrunk image. */
  dropL2Table(l1Index: number): void {
    const off = this.l2OffsetAt(l1Index);
    if (off === 0) return;
    this.l2Cache.flush();
    this.setL1Entry(l1Index, 0);
    this.storage.flush();
    this.meta.remove(off, this.clusterSize);
    this.refcounts.updateRange(off, this.clusterSize, -1);
  }

  // ---------------------------------------------------------------- preallocation

  private preallocateMetadata(): void {
    const cs = this.clusterSize;
    const clusters = Math.ceil(this.virtualSize / cs);
    for (let vc = 0; vc < clusters; vc++) {
      const { table, index } = this.writableL2(vc);
      const host = this.refcounts.allocClusters(1);
      const e = entryParts(host, true);
      this.setEntry(table, index, this.layout.extended ? { ...e, alloc: ALL_SUBCLUSTERS, zero: 0 } : { ...e, zero: 0, alloc: 0 });
    }
    const end = this.refcounts.allocatedEnd * cs;
    if (this.storage.size() < end) this.storage.truncate(end);
  }

  // ---------------------------------------------------------------- flush / close

  /**
   * Makes everything durable in dependency order: refcount increments and
   * data, then L2 tables, then the frees those L2 updates allowed.
   */
  flush(): void {
    if (this.closed || this.readOnly) return;
    this.l2Cache.flush();
    this.refcounts.flush();
    this.storage.flush();
    this.unsyncedData = false;
    if (this.refcounts.applyDeferredFrees()) {
      this.refcounts.flush();
      this.storage.flush();
    }
  }

  close(): void {
    if (this.closed) return;
    try {
      if (!this.readOnly) {
        this.flush();
        if (this.dirtyMarked) {
          this.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
          this.writeHeaderField();
          this.dirtyMarked = false;
        }
      }
    } finally {
      this.closed = true;
      this.backing?.close();
      this.storage.close();
    }
  }

  // ---------------------------------------------------------------- info

  info(): ImageInfo {
    const h = this.header;
    const bitmaps = this.bitmapInfos();
    return {
      virtualSize: h.size,
      clusterSize: this.clusterSize,
      version: h.version,
      compat: h.version === 3 ? '1.1' : '0.10',
      refcountBits: 2 ** h.refcountOrder,
      lazyRefcounts: this.lazyRefcounts,
      extendedL2: this.layout.extended,
      compressionType: this.compressionType,
      corrupt: (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n,
      dirty: (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
      backingFile: this.backingFile,
      backingFormat: this.ext.backingFormat,
      dataFile: this.ext.dataFile,
      encrypted: h.cryptMethod !== CRYPT_NONE,
      actualSize: this.storage.size(),
      snapshots: snapshotInfos(this.snapshots),
      bitmaps,
    };
  }

  /** QEMU refuses to open an image whose bitmap directory it cannot trust; so do we. */
  private validateBitmaps(): void {
    const b = this.ext.bitmaps;
    if (!b || !(this.header.autoclearFeatures & AUTOCLEAR_BITMAPS) || b.nbBitmaps === 0) return;
    const dir = decodeBitmapDirectory(this.storage.read(b.bitmapDirectoryOffset, b.bitmapDirectorySize), b.nbBitmaps);
    validateBitmapDirectory(this.header, dir);
  }

  /** Persistent bitmaps as qemu-img info lists them (only while the bitmaps autoclear bit vouches for them). */
  private bitmapInfos(): ImageInfo['bitmaps'] {
    const b = this.ext.bitmaps;
    if (!b || !(this.header.autoclearFeatures & AUTOCLEAR_BITMAPS) || b.nbBitmaps === 0) return [];
    const dir = decodeBitmapDirectory(this.storage.read(b.bitmapDirectoryOffset, b.bitmapDirectorySize), b.nbBitmaps);
    return dir.map((d) => ({
      name: d.name,
      granularity: 2 ** d.granularityBits,
      flags: [...(d.flags & BITMAP_FLAG_IN_USE ? ['in-use'] : []), ...(d.flags & BITMAP_FLAG_AUTO ? ['auto'] : [])],
    }));
  }

  // ---------------------------------------------------------------- metadata operations

  listSnapshots(): SnapshotInfo[] {
    return snapshotInfos(this.snapshots);
  }

  createSnapshot(name: string): void {
    this.beforeChange();
    createSnapshot(this, name);
  }

  applySnapshot(nameOrId: string): void {
    this.beforeChange();
    applySnapshot(this, nameOrId);
  }

  deleteSnapshot(nameOrId: string): void {
    this.beforeChange();
    deleteSnapshot(this, nameOrId);
  }

  amend(o: { refcountBits?: number; compat?: '0.10' | '1.1'; lazyRefcounts?: boolean }): void {
    this.assertWritable();
    amendImage(this, o);
  }

  resize(size: number, o: { shrink?: boolean } = {}): void {
    this.beforeChange();
    resizeImage(this, size, o.shrink ?? false);
  }

  check(repair: RepairMode = 'none'): CheckResult {
    this.assertOpen();
    return checkImage(this, repair);
  }

  private checkImpl(repair: RepairMode): CheckResult {
    return checkImage(this, repair);
  }

  private viewSnapshot(nameOrId: string): void {
    viewSnapshot(this, nameOrId);
  }

  /** Drops cached state after a metadata operation rewrote tables under the caches. */
  resetCaches(): void {
    this.flush();
    this.l2Cache.clear();
    this.refcounts.cache.clear();
    this.lastDecompressed = undefined;
    this.refcounts.resetBytePacking();
  }
}

function entryParts(host: number, copied: boolean): { hi: number; lo: number } {
  const [hi, lo] = makeEntry(host, copied);
  return { hi, lo };
}

function entryWith(host: number, copied: boolean): L2Entry {
  return { ...entryParts(host, copied), zero: 0, alloc: 0 };
}

function padToCluster(buf: Uint8Array, cs: number): Uint8Array {
  if (buf.length % cs === 0) return buf;
  const out = new Uint8Array(alignUp(buf.length, cs));
  out.set(buf);
  return out;
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

