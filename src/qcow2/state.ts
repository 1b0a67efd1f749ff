/**
 * The state of one open image, shared by every engine module (QEMU's
 * BDRVQcow2State, imago's Qcow2 struct): storage, header, the active L1
 * table, the metadata map for the overlap check, refcounts and the L2
 * cache; plus the few operations every module needs to keep the on-disk
 * ordering rules: metadata writes behind the overlap check, barriers, the
 * header writes, and marking the image dirty or corrupt.
 *
 * Ordering kept here (qcow2.txt leaves it to implementations; QEMU's rules):
 * an L2 table reaches the file only after the refcount blocks counting its
 * clusters and the guest data it points to (writeBackL2, QEMU's cache
 * dependency plus depends_on_flush); flush() writes L2 tables, then
 * refcounts, then applies the frees those L2 updates allowed.
 */
import type { BitmapSet } from './bitmap-set.js';
import { MIN_L2_CACHE_TABLES, TableCache } from './cache.js';
import { writeEncryptedData } from './crypto/data-path.js';
import type { ImageCrypto } from './crypto/image-crypto.js';
import { CorruptImageError, InvalidArgumentError, OverlapError, ReadOnlyError } from './errors.js';
import { alignDown, viewOf } from './format/bytes.js';
import {
  COMPAT_LAZY_REFCOUNTS,
  AUTOCLEAR_DATA_FILE_RAW,
  COMPRESSION_ZSTD,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  SECTOR_SIZE,
  SUBCLUSTERS_PER_CLUSTER,
} from './format/constants.js';
import type { HeaderExtensions } from './format/extensions.js';
import { HEADER_FIELDS, type Qcow2Header } from './format/header.js';
import type { SnapshotEntry } from './format/snapshot-table.js';
import { encodeFirstCluster, readFirstCluster } from './header-io.js';
import { L1Table } from './l1-table.js';
import { L2Layout } from './l2.js';
import { MetadataMap, MetaKind } from './overlap.js';
import { Refcounts, type RefcountHost } from './refcount.js';
import type { BlockStorage } from './storage/types.js';
import type { CompressionType, GuestDevice, OpenOptions } from './types.js';
import { validateFeatureExtensions, validateHeader } from './validate.js';
import type { CachedTable } from './cache.js';

/** The last compressed cluster decompressed, by host offset (a one-entry cache, as QEMU keeps one). */
export interface DecompressedCluster {
  offset: number;
  data: Uint8Array;
}

export class ImageState implements RefcountHost {
  readonly storage: BlockStorage;
  readonly openOptions: OpenOptions;
  header: Qcow2Header;
  ext: HeaderExtensions;
  backingFile: string | undefined;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly layout: L2Layout;
  /** The active L1 table (or, on a snapshot view, the snapshot's). Replace it whole: bytes and view are one object. */
  l1: L1Table = L1Table.empty();
  readonly meta: MetadataMap;
  /** Set by open before any other use (the refcount table is read after the L1 table). */
  refcounts!: Refcounts;
  l2Cache!: TableCache;
  backing: GuestDevice | null = null;
  /** The unlocked encryption of an encrypted image; undefined when unencrypted or opened without a passphrase. */
  crypto: ImageCrypto | undefined = undefined;
  readOnly: boolean;
  snapshots: SnapshotEntry[] = [];
  /** Index of the first snapshot table entry that runs past the end of the file (check reports it). */
  snapshotTableIncompleteAt: number | undefined;
  snapshotTableBytes = 0;
  /** Name of the snapshot exposed instead of the active layer (read-only opens). */
  viewingSnapshot: string | undefined;
  lastDecompressed: DecompressedCluster | undefined;
  /** Persistent dirty bitmaps (bitmaps.ts loads them on open and stores them on close). */
  bitmaps: BitmapSet | undefined;
  /** Where the bitmap directory the header names lives, while it names one. */
  bitmapDirectory: { offset: number; size: number } | undefined;
  /** The external data file, when the image has one and it was opened (data-file.ts); null otherwise. */
  dataStorage: BlockStorage | null = null;
  closed = false;
  private dirtyMarked = false;
  /** Guest data written since the last storage flush (an L2 table pointing at it must wait). */
  private unsyncedData = false;
  /** Data-file clusters freed by a guest discard, discarded once the L2 update is durable (data-file.ts). */
  readonly pendingDataDiscards = new Set<number>();

  /** Reads and validates the first cluster; open.ts loads the tables. */
  constructor(storage: BlockStorage, opts: OpenOptions) {
    this.storage = storage;
    this.openOptions = opts;
    this.readOnly = opts.readOnly ?? storage.readOnly;
    const first = readFirstCluster(storage);
    validateHeader(first.header, first.ext.featureNames, opts.forCheck ?? false);
    validateFeatureExtensions(first.header, first.ext);
    // qcow2_do_open: bs->total_sectors = header.size / BDRV_SECTOR_SIZE, so a size that is not a
    // multiple of 512 is rounded down (after the L1 size check, which uses the stored value), and
    // qcow2_update_header writes the rounded size back when it next rewrites the header.
    first.header.size = alignDown(first.header.size, SECTOR_SIZE);
    this.header = first.header;
    this.ext = first.ext;
    this.backingFile = first.backingFile;
    this.clusterBits = first.header.clusterBits;
    this.clusterSize = 2 ** this.clusterBits;
    this.layout = new L2Layout(
      this.clusterSize,
      (first.header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n,
      (first.header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n,
    );
    this.meta = new MetadataMap(this.clusterBits);
  }

  /** Builds the L2 cache; its write-back keeps the ordering rules of writeBackL2. */
  makeL2Cache(tables: number): void {
    this.l2Cache = new TableCache(
      Math.max(MIN_L2_CACHE_TABLES, tables),
      (off) => this.storage.read(off, this.clusterSize),
      (t) => this.writeBackL2(t),
    );
  }

  // ---------------------------------------------------------------- geometry

  get virtualSize(): number {
    return this.header.size;
  }

  get version(): 2 | 3 {
    return this.header.version;
  }

  get l1Entries(): number {
    return this.l1.entries;
  }

  /** Guest bytes one L1 entry maps (one L2 table's worth). */
  get bytesPerL1Entry(): number {
    return this.layout.entries * this.clusterSize;
  }

  get subclusterSize(): number {
    return this.layout.extended ? this.clusterSize / SUBCLUSTERS_PER_CLUSTER : this.clusterSize;
  }

  get compressionType(): CompressionType {
    return this.header.compressionType === COMPRESSION_ZSTD ? 'zstd' : 'zlib';
  }

  /** QEMU's has_data_file: guest data lives in an external data file. */
  get hasDataFile(): boolean {
    return (this.header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
  }

  /** QEMU's data_file_is_raw: the data file is a valid raw image of the guest (autoclear bit 1). */
  get dataFileRaw(): boolean {
    return (this.header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
  }

  /** Where guest data clusters are read and written: the data file, or the image file itself. */
  get data(): BlockStorage {
    return this.dataStorage ?? this.storage;
  }

  get lazyRefcounts(): boolean {
    return (this.header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
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
  overlapCheck(offset: number, bytes: number, kind: MetaKind | undefined): void {
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

  /** Marks the image corrupt (qcow2_signal_corruption) when writable, then throws. */
  corruption(message: string): never {
    if (!this.readOnly && !(this.header.incompatibleFeatures & INCOMPAT_CORRUPT)) {
      this.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
      try {
        this.writeIncompatibleFeatures();
      } catch {
        // Deliberately broad: the image is already damaged, and reporting the corruption matters more
        // than why the flag could not be written.
      }
      this.readOnly = true;
    }
    throw new CorruptImageError(`${message}; further writes are refused`);
  }

  barrier(): void {
    this.dataStorage?.flush();
    this.storage.flush();
  }

  // ---------------------------------------------------------------- data and table writes

  /**
   * Guest data to a host offset, behind the overlap check; an L2 table pointing at it waits for a barrier.
   * guest is the guest offset of the first byte: encrypted images need it (legacy AES IVs) and encrypt
   * here; compressed data passes guest undefined and is never encrypted (QEMU 7.2 stores it in the clear).
   */
  writeData(host: number, data: Uint8Array, guest?: number): void {
    // The overlap check guards the image file's metadata; an external data file holds none.
    const target = this.dataStorage ?? this.storage;
    if (this.dataStorage) this.assertWritable();
    else this.overlapCheck(host, data.length, undefined);
    if (this.crypto && guest !== undefined) writeEncryptedData(this.crypto, target, host, guest, data);
    else target.write(host, data);
    this.unsyncedData = true;
  }

  /**
   * Writes an L2 table after what it depends on is durable: the refcount
   * blocks counting its clusters and the guest data it points to (QEMU:
   * cache dependency plus depends_on_flush).
   */
  writeBackL2(t: CachedTable): void {
    let barrier = this.unsyncedData;
    // A dirty lazy-refcounts image may have L2 entries ahead of their refcounts on disk (the
    // open repairs them): QEMU sets no L2 -> refcount cache dependency then (qcow2_alloc_cluster_link_l2).
    if (!this.refcountsMayLag && this.refcounts.cache.hasDirty()) {
      this.refcounts.flush();
      barrier = true;
    }
    if (barrier) {
      this.barrier();
      this.unsyncedData = false;
    }
    this.writeMeta(t.offset, t.data, MetaKind.ActiveL2);
  }

  /** Writes entry i of the active L1 table where it lives in the file. */
  writeL1Entry(i: number): void {
    this.writeMeta(this.header.l1TableOffset + L1Table.entryPos(i), this.l1.entryBytes(i), MetaKind.ActiveL1);
  }

  // ---------------------------------------------------------------- header writes

  /** Rewrites the whole first cluster's header area (header, extensions, backing name). */
  writeHeader(): void {
    const bytes = encodeFirstCluster({ header: this.header, ext: this.ext, backingFile: this.backingFile }, this.clusterSize);
    this.writeMeta(0, bytes, MetaKind.Header);
  }

  /** Rewrites the incompatible-features field alone and flushes, as QEMU marks dirty/corrupt (v2 has no such field). */
  private writeIncompatibleFeatures(): void {
    if (this.header.version < 3) return;
    const field = HEADER_FIELDS.incompatibleFeatures;
    const b = new Uint8Array(field.width);
    viewOf(b).setBigUint64(0, this.header.incompatibleFeatures);
    this.assertWritable(true);
    this.storage.write(field.offset, b);
    this.storage.flush();
  }

  /** Clears the dirty bit in the header (after a repair on open). */
  clearDirtyBit(): void {
    this.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
    this.writeIncompatibleFeatures();
  }

  assertWritable(evenIfCorrupt = false): void {
    if (this.closed) throw new InvalidArgumentError('image is closed');
    if (this.readOnly && !evenIfCorrupt) throw new ReadOnlyError('image is open read-only');
  }

  /** Before any change: refuse read-only states; with lazy refcounts the first change marks the image dirty (qcow2_mark_dirty). */
  beforeChange(): void {
    this.assertWritable();
    if (this.viewingSnapshot !== undefined) throw new ReadOnlyError('a snapshot view is read-only');
    if (this.lazyRefcounts && !this.dirtyMarked) {
      this.storage.flush();
      this.header.incompatibleFeatures |= INCOMPAT_DIRTY;
      this.writeIncompatibleFeatures();
      this.dirtyMarked = true;
    }
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
    this.barrier();
    this.unsyncedData = false;
    this.applyDataDiscards();
    if (this.refcounts.applyDeferredFrees()) {
      this.refcounts.flush();
      this.storage.flush();
    }
  }

  /**
   * Set while this session has marked a lazy-refcounts image dirty: refcounts
   * on disk may lag the L2 tables, which the next open repairs.
   */
  get refcountsMayLag(): boolean {
    return this.lazyRefcounts && this.dirtyMarked && (this.header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
  }

  /**
   * The header's dirty bit was cleared by a rewrite of the whole header (amend
   * lazy_refcounts=off, which flushes the refcounts first): this session's mark
   * is gone, and the next change with lazy refcounts back on marks it again.
   */
  dirtyBitRewritten(): void {
    this.dirtyMarked = false;
  }

  /**
   * A guest's flush (bdrv_co_flush: qcow2_write_caches, then the file's
   * fdatasync): guest data and L2 tables durable. On a dirty lazy-refcounts
   * image the refcount blocks stay in the cache, as QEMU leaves them
   * (qcow2_need_accurate_refcounts): that is what lazy refcounts are for, and
   * a crash then leaves what a crash of QEMU leaves. Everything else (amend,
   * snapshots, close) flushes with flush(), refcounts included.
   */
  flushGuest(): void {
    if (!this.refcountsMayLag) return this.flush();
    if (this.closed || this.readOnly) return;
    this.l2Cache.flush();
    this.barrier();
    this.unsyncedData = false;
    this.applyDataDiscards();
    // The L2 updates that allowed them are durable now; the frees wait in the cache like every refcount.
    this.refcounts.applyDeferredFrees();
  }

  /** The data-file discards the L2 tables on disk now allow (nothing points at those clusters any more). */
  private applyDataDiscards(): void {
    if (this.pendingDataDiscards.size === 0) return;
    for (const host of this.pendingDataDiscards) this.zeroDataCluster(host);
    this.pendingDataDiscards.clear();
  }

  /** A discard of one data-file cluster: its bytes in the file become zeros (a hole past the end reads as zeros anyway). */
  zeroDataCluster(host: number): void {
    const data = this.dataStorage;
    if (!data) return;
    const end = Math.min(host + this.clusterSize, data.size());
    if (end > host) data.write(host, new Uint8Array(end - host));
  }

  /** Flushes, clears the dirty bit this session set, and closes backing and storage even on failure. */
  close(): void {
    if (this.closed) return;
    try {
      if (!this.readOnly) {
        this.flush();
        if (this.dirtyMarked) {
          this.clearDirtyBit();
          this.dirtyMarked = false;
        }
      }
    } finally {
      this.closed = true;
      this.backing?.close();
      this.dataStorage?.close();
      this.storage.close();
    }
  }

  /** Drops cached state after a metadata operation rewrote tables under the caches. */
  resetCaches(): void {
    this.flush();
    this.l2Cache.clear();
    this.refcounts.cache.clear();
    this.lastDecompressed = undefined;
    this.refcounts.resetBytePacking();
  }

  /** Switches to a new refcount structure (check's rebuild, amend's new width). */
  replaceRefcounts(fresh: Refcounts): void {
    this.refcounts = fresh;
  }
}
