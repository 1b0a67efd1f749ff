/**
 * Opening an image (QEMU: qcow2_do_open) and finishing a fresh one
 * (qcow2_co_create, preallocation=metadata): read the header, then the L1
 * table, size the caches, read the refcount and snapshot tables, open the
 * backing file, validate bitmaps, and for a read-write open clear
 * autoclear bits and repair a dirty image.
 */
import { DEFAULT_L2_CACHE_BYTES, L2_TO_REFCOUNT_CACHE_RATIO, MIN_REFCOUNT_CACHE_TABLES } from './cache.js';
import { checkImage } from './check.js';
import { entryParts, loadL1, registerActiveL2s, resizeL1, setEntry, writableL2 } from './cluster-map.js';
import { createLayout } from './create.js';
import { loadBitmaps, markBitmapsInUse } from './bitmaps.js';
import { luksArea, openImageCrypto } from './crypto/image-crypto.js';
import { setUpEncryption } from './crypto/setup.js';
import { CorruptImageError, InvalidArgumentError, UnsupportedFeatureError } from './errors.js';
import { AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, CRYPT_LUKS, CRYPT_NONE, INCOMPAT_CORRUPT, INCOMPAT_DIRTY } from './format/constants.js';
import { allocDataCluster, openDataFile } from './data-file.js';
import { MetaKind } from './overlap.js';
import { Refcounts } from './refcount.js';
import { viewSnapshot } from './snapshot.js';
import { loadSnapshots } from './snapshot-table-io.js';
import { ImageState } from './state.js';
import type { BlockStorage } from './storage/types.js';
import type { CreateOptions, OpenOptions } from './types.js';

export function openState(storage: BlockStorage, opts: OpenOptions): ImageState {
  const s = new ImageState(storage, opts);
  load(s);
  return s;
}

/** Writes a new image's first cluster and tables, opens it read-write and sizes its L1 table. */
export function createState(storage: BlockStorage, opts: CreateOptions, open: OpenOptions): ImageState {
  const resolved = createLayout(storage, opts);
  const s = openState(storage, { ...open, readOnly: false });
  s.header.size = resolved.size;
  resizeL1(s, Math.ceil(s.header.size / s.bytesPerL1Entry));
  // qcow2_co_create: the data file is created empty, as large as the disk.
  if (s.dataStorage) {
    s.dataStorage.truncate(0);
    s.dataStorage.truncate(resolved.size);
  }
  // A raw data file needs every guest cluster mapped to itself (qcow2_co_create forces metadata).
  if (opts.preallocation === 'metadata' || opts.dataFileRaw) preallocateMetadata(s);
  if (opts.encrypt) setUpEncryption(s, opts.encrypt);
  s.flush();
  return s;
}

function load(s: ImageState): void {
  const h = s.header;
  const o = s.openOptions;
  if (h.incompatibleFeatures & INCOMPAT_CORRUPT && !s.readOnly && !o.forCheck) {
    throw new CorruptImageError('image is marked corrupt; open it read-only, or repair it with check -r all');
  }
  s.meta.add(0, s.clusterSize, MetaKind.Header);
  loadL1(s, h.l1TableOffset, h.l1Size);
  // No more L2 tables than the L1 table can name.
  s.makeL2Cache(Math.min(h.l1Size, Math.floor(cacheBudget(s, 'l2') / s.clusterSize)));
  const refTables = Math.floor(cacheBudget(s, 'refcount') / s.clusterSize);
  s.refcounts = new Refcounts(s, h.refcountOrder, h.refcountTableOffset, h.refcountTableClusters, refTables);
  s.refcounts.load();
  if (h.nbSnapshots > 0) {
    const loaded = loadSnapshots(s, o.forCheck ?? false);
    s.snapshots = loaded.entries;
    s.snapshotTableIncompleteAt = loaded.incompleteAt;
    s.snapshotTableBytes = loaded.bytes;
  }
  registerActiveL2s(s);
  openDataFile(s);
  // check never needs the backing chain (qemu-img check opens with BDRV_O_NO_BACKING).
  if (s.backingFile !== undefined && o.openBacking && !o.forCheck) {
    const fmt = s.ext.backingFormat;
    if (fmt !== undefined && fmt !== 'raw' && fmt !== 'qcow2') {
      throw new UnsupportedFeatureError(`backing file format '${fmt}' is not supported (only qcow2 and raw)`);
    }
    s.backing = o.openBacking(s.backingFile, fmt);
  }
  loadBitmaps(s);
  // Before prepareReadWrite, which may write the header: a wrong passphrase leaves the image untouched.
  if (h.cryptMethod !== CRYPT_NONE) openEncryption(s);
  if (!s.readOnly) prepareReadWrite(s);
  if (o.snapshot !== undefined) viewSnapshot(s, o.snapshot);
}

/** Cache budgets in bytes, as qemu's l2-cache-size / refcount-cache-size options and defaults give them. */
function cacheBudget(s: ImageState, which: 'l2' | 'refcount'): number {
  if (which === 'l2') return s.openOptions.l2CacheSize ?? DEFAULT_L2_CACHE_BYTES;
  return (
    s.openOptions.refcountCacheSize ??
    Math.max(MIN_REFCOUNT_CACHE_TABLES * s.clusterSize, DEFAULT_L2_CACHE_BYTES / L2_TO_REFCOUNT_CACHE_RATIO)
  );
}

/**
 * Unlocks an encrypted image (QEMU: qcow2_update_options_part2 opening s->crypto).
 * Without a passphrase it still opens read-only or for check, as qemu-img info
 * and check do (QCRYPTO_BLOCK_OPEN_NO_IO), and data I/O is refused later.
 */
function openEncryption(s: ImageState): void {
  const o = s.openOptions;
  if (o.passphrase === undefined) {
    if (!s.readOnly && !o.forCheck) throw new InvalidArgumentError("Parameter 'encrypt.key-secret' is required for cipher");
    // qcow2_do_open opens the LUKS header even without a key (QCRYPTO_BLOCK_OPEN_NO_IO), before
    // anything is written: an area past the end of the file fails the open here, not after
    // prepareReadWrite has marked bitmaps in use or repaired a dirty image.
    if (s.header.cryptMethod === CRYPT_LUKS) luksArea(s.ext.cryptoHeader, s.clusterSize, s.storage.size());
    return;
  }
  s.crypto = openImageCrypto({
    cryptMethod: s.header.cryptMethod,
    cryptoHeader: s.ext.cryptoHeader,
    clusterSize: s.clusterSize,
    fileSize: s.storage.size(),
    readFile: (off, len) => s.storage.read(off, len),
    passphrase: o.passphrase,
  });
}

function prepareReadWrite(s: ImageState): void {
  const h = s.header;
  // data_file_raw is kept (every write, zero and discard keeps the data file the guest view), and so
  // are bitmaps (bitmaps.ts keeps them exact).
  const kept = h.autoclearFeatures & (AUTOCLEAR_DATA_FILE_RAW | AUTOCLEAR_BITMAPS);
  if (h.autoclearFeatures !== kept) {
    // Autoclear bits promise consistency of features we do not maintain: clear every one we
    // will not keep up to date, as the spec asks of a writer.
    h.autoclearFeatures = kept;
    s.writeHeader();
  }
  markBitmapsInUse(s);
  if (h.incompatibleFeatures & INCOMPAT_DIRTY && !s.openOptions.forCheck && (s.openOptions.repairDirty ?? true)) {
    repairDirty(s);
  }
}

/** Repairs the refcounts of an image left dirty by lazy refcounts (QEMU does this on open). */
function repairDirty(s: ImageState): void {
  checkImage(s, 'all');
  s.clearDirtyBit();
}

/** preallocation=metadata: every guest cluster gets an L2 entry and a host cluster (QEMU's preallocate_co). */
function preallocateMetadata(s: ImageState): void {
  const cs = s.clusterSize;
  const clusters = Math.ceil(s.virtualSize / cs);
  for (let vc = 0; vc < clusters; vc++) {
    const { table, index } = writableL2(s, vc);
    const host = allocDataCluster(s, vc);
    const e = entryParts(host, true);
    // QEMU 7.2's preallocate_co leaves every subcluster of an extended L2 entry unallocated
    // (bitmap 0), so a backing file still shows through and the rest reads zeros.
    setEntry(s, table, index, { ...e, zero: 0, alloc: 0 });
  }
  const end = s.refcounts.allocatedEnd * cs;
  if (!s.hasDataFile && s.storage.size() < end) s.storage.truncate(end);
}
