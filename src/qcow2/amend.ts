/**
 * qemu-img amend for the format options that change metadata: refcount
 * width (a new refcount structure built in one linear pass, QEMU's
 * qcow2_change_refcount_order), compat level (qcow2_downgrade with zero
 * cluster expansion, and the upgrade) and lazy refcounts. A refusal leaves
 * the image untouched: everything is checked before the first write.
 */
import { amendEncryption, type EncryptAmend } from './crypto/amend-slots.js';
import { applyDataFileAmend, checkDataFileAmend, type DataFileAmend } from './data-file.js';
import { InvalidArgumentError, LimitError, UnsupportedFeatureError } from './errors.js';
import {
  COMPAT_LAZY_REFCOUNTS,
  COMPRESSION_ZLIB,
  CRYPT_NONE,
  DEFAULT_REFCOUNT_ORDER,
  HEADER_V3_LENGTH,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DIRTY,
  MAX_REFCOUNT_ORDER,
} from './format/constants.js';
import { ClusterType, makeEntry, withCopied } from './format/entries.js';
import { defaultFeatureNames } from './format/extensions.js';
import { getRefcount, maxRefcount } from './format/refcount-block.js';
import { FEATURE_TABLE_MIN_CLUSTER } from './create.js';
import { L1Table } from './l1-table.js';
import { installRefcountStructure } from './refcount-rebuild.js';
import { snapshotL1Problem } from './snapshot-table-io.js';
import type { ImageState } from './state.js';
import { STOP_WALK, walkTree } from './tree-walk.js';

export interface AmendOptions extends DataFileAmend {
  refcountBits?: number;
  compat?: '0.10' | '1.1';
  lazyRefcounts?: boolean;
  /** LUKS key slots (encrypt.state=...); done first, so a refused slot change leaves the image as it was. */
  encrypt?: EncryptAmend;
}

export function amendImage(img: ImageState, o: AmendOptions): void {
  img.flush();
  if (o.encrypt) amendEncryption(img, o.encrypt);
  checkDataFileAmend(img, o);
  const targetVersion = o.compat === undefined ? img.version : o.compat === '0.10' ? 2 : 3;
  const order = o.refcountBits === undefined ? img.refcounts.order : Math.log2(o.refcountBits);
  if (o.refcountBits !== undefined && (!Number.isInteger(order) || order < 0 || order > MAX_REFCOUNT_ORDER)) {
    throw new InvalidArgumentError('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (targetVersion < img.version && order !== DEFAULT_REFCOUNT_ORDER) {
    throw new InvalidArgumentError('compat=0.10 requires refcount_bits=16');
  }
  if (targetVersion < 3 && order !== DEFAULT_REFCOUNT_ORDER) {
    throw new InvalidArgumentError('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  const lazy = o.lazyRefcounts ?? (targetVersion < 3 ? false : img.lazyRefcounts);
  if (lazy && targetVersion < 3) {
    throw new InvalidArgumentError('Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
  }
  if (targetVersion < img.version) checkDowngradePossible(img);
  if (order !== img.refcounts.order) checkRefcountsFit(img, order);

  if (targetVersion > img.version) upgrade(img);
  if (order !== img.refcounts.order) changeRefcountOrder(img, order);
  if (targetVersion < img.version) downgrade(img);
  if (lazy !== img.lazyRefcounts) setLazyRefcounts(img, lazy);
  applyDataFileAmend(img, o);
  img.flush();
}

function checkDowngradePossible(img: ImageState): void {
  // qcow2_downgrade: v2 has no external data files.
  if (img.hasDataFile) throw new InvalidArgumentError('Cannot downgrade an image with a data file');
  // Expanding zero clusters writes zeros that would have to be encrypted; QEMU 7.2 writes them raw and
  // the guest then reads garbage there (src/qcow2/crypto/data-path.test.ts). Refuse instead.
  if (img.header.cryptMethod !== CRYPT_NONE) {
    throw new UnsupportedFeatureError('Cannot downgrade an encrypted image to compat=0.10 (its zero clusters would not be encrypted)');
  }
  // v2 snapshots cannot record a disk size of their own, nor a VM state above 4 GiB.
  for (const sn of img.snapshots) {
    if ((sn.vmStateSizeLarge ?? sn.vmStateSize) > 0xffffffff || (sn.diskSize ?? img.virtualSize) !== img.virtualSize) {
      throw new UnsupportedFeatureError('Internal snapshots prevent downgrade of image');
    }
  }
  const other = img.header.incompatibleFeatures & ~(INCOMPAT_DIRTY | INCOMPAT_COMPRESSION);
  if (other) {
    throw new UnsupportedFeatureError(`Cannot downgrade an image with incompatible features 0x${other.toString(16)} set`);
  }
  // zstd can be given up only while no cluster is compressed with it (QEMU then switches to zlib).
  if (img.header.incompatibleFeatures & INCOMPAT_COMPRESSION && hasCompressedClusters(img)) {
    throw new UnsupportedFeatureError('Cannot downgrade an image with zstd compression type and existing compressed clusters');
  }
}

/** The active L1 table and every usable snapshot L1 table. */
function everyL1Table(img: ImageState): L1Table[] {
  const l1s: L1Table[] = [img.l1];
  for (const sn of img.snapshots) {
    if (sn.l1Size > 0 && !snapshotL1Problem(img, sn)) l1s.push(L1Table.read(img.storage, sn.l1TableOffset, sn.l1Size));
  }
  return l1s;
}

function hasCompressedClusters(img: ImageState): boolean {
  for (const l1 of everyL1Table(img)) {
    const found = walkTree(img, l1, {
      enter: (_i, l2Offset) => l2Offset % img.clusterSize === 0,
      entry: (_e, type) => (type === ClusterType.Compressed ? STOP_WALK : undefined),
    });
    if (found) return true;
  }
  return false;
}

/**
 * Every stored refcount, by cluster, up to the last nonzero one. Refcounts of
 * clusters past the end of the file are copied as they are, as QEMU's
 * qcow2_change_refcount_order copies every refblock entry: a data write that
 * failed after its allocation leaves exactly that (a leak qemu-img check does
 * not even see, since it counts only up to the file's end), so refusing it
 * would refuse an image no repair changes. Only entries further out than one
 * refcount block's reach past the end are refused, which bounds the copy's
 * memory on a hostile refcount table.
 */
function storedRefcounts(img: ImageState): { counts: Float64Array; size: number } {
  const rt = img.refcounts;
  const cs = img.clusterSize;
  rt.flush();
  const fileClusters = Math.ceil(img.storage.size() / cs);
  const limit = Math.max(fileClusters, rt.allocatedEnd) + rt.entriesPerBlock;
  let counts = new Float64Array(Math.max(fileClusters, rt.allocatedEnd));
  let size = 0;
  for (let bi = 0; bi < rt.table.length; bi++) {
    const off = rt.table[bi];
    if (off === 0) continue;
    if (off % cs !== 0) throw new LimitError(`refcount block ${bi} is not cluster aligned; repair the image first`);
    const block = rt.cache.get(off);
    for (let i = 0; i < rt.entriesPerBlock; i++) {
      const v = getRefcount(block.data, block.view, i, rt.order);
      if (v === 0) continue;
      const c = bi * rt.entriesPerBlock + i;
      if (c >= limit) throw new LimitError(`cluster ${c} far past the end of the file has refcount ${v}; repair the image first`);
      if (c >= counts.length) {
        const grown = new Float64Array(Math.min(limit, Math.max(c + 1, counts.length * 2)));
        grown.set(counts);
        counts = grown;
      }
      counts[c] = v;
      if (c + 1 > size) size = c + 1;
    }
  }
  return { counts, size };
}

function checkRefcountsFit(img: ImageState, order: number): void {
  const max = maxRefcount(order);
  const { counts, size } = storedRefcounts(img);
  for (let c = 0; c < size; c++) {
    if (counts[c] > max) {
      throw new LimitError(
        `Cannot decrease refcount entry width to ${2 ** order} bits: Cluster at offset 0x${(c * img.clusterSize).toString(16)} has a refcount of ${counts[c]}`,
      );
    }
  }
}

function changeRefcountOrder(img: ImageState, order: number): void {
  const cs = img.clusterSize;
  const { counts, size } = storedRefcounts(img);
  const oldTable = img.header.refcountTableOffset;
  const oldTableClusters = img.header.refcountTableClusters;
  const oldBlocks = img.refcounts.table.filter((off) => off !== 0);
  const start = Math.max(size, Math.ceil(img.storage.size() / cs), img.refcounts.allocatedEnd);
  installRefcountStructure(img, counts, size, order, start);
  // The old structure was copied with its own references; release them in the new one.
  for (const off of oldBlocks) img.refcounts.updateRange(off, cs, -1);
  img.refcounts.updateRange(oldTable, oldTableClusters * cs, -1);
  img.refcounts.flush();
}

function upgrade(img: ImageState): void {
  img.header.version = 3;
  img.header.headerLength = HEADER_V3_LENGTH;
  img.header.refcountOrder = DEFAULT_REFCOUNT_ORDER;
  if (img.clusterSize >= FEATURE_TABLE_MIN_CLUSTER) img.ext.featureNames = defaultFeatureNames();
  img.writeHeader();
}

function downgrade(img: ImageState): void {
  img.flush();
  expandZeroClusters(img);
  img.header.version = 2;
  img.header.compatibleFeatures = 0n;
  img.header.autoclearFeatures = 0n;
  img.header.incompatibleFeatures = 0n;
  img.header.compressionType = COMPRESSION_ZLIB;
  delete img.ext.featureNames;
  img.writeHeader();
  img.flush();
}

/**
 * v2 has no zero flag: zero clusters become unallocated (no backing file) or
 * real clusters of zeros, in the active table and every snapshot's (QEMU:
 * qcow2_expand_zero_clusters). A shared L2 table's new cluster gets one
 * reference per table user.
 */
function expandZeroClusters(img: ImageState): void {
  const cs = img.clusterSize;
  const layout = img.layout;
  const done = new Set<number>();
  const zeros = new Uint8Array(cs);
  let l2Refs = 0;
  for (const l1 of everyL1Table(img)) {
    walkTree(img, l1, {
      enter(_i, l2Offset) {
        if (done.has(l2Offset)) return false;
        done.add(l2Offset);
        l2Refs = img.refcounts.getAt(l2Offset);
        return true;
      },
      // Allocating below may evict the table: read it again for every entry.
      refetch: true,
      entry(e, type, j, _table, l2Offset) {
        if (type !== ClusterType.ZeroPlain && type !== ClusterType.ZeroAlloc) return;
        if (type === ClusterType.ZeroPlain && !img.backingFile) {
          layout.set(img.l2Cache.get(l2Offset), j, { hi: 0, lo: 0, zero: 0, alloc: 0 });
          return;
        }
        let host = layout.offset(e);
        // A zero-allocated cluster someone else also references (a snapshot's
        // normal entry) must not be zeroed in place: it gets a cluster of its own.
        // (QEMU 7.2 zeroes it in place: corpus/qemu-downgrade-zeroes-snapshot-data.)
        const shared = type === ClusterType.ZeroAlloc && img.refcounts.getAt(host) > l2Refs;
        if (type === ClusterType.ZeroPlain || shared) {
          const old = host;
          host = img.refcounts.allocClusters(1);
          if (l2Refs > 1) img.refcounts.updateRange(host, cs, l2Refs - 1);
          if (shared) img.refcounts.updateRange(old, cs, -l2Refs);
        }
        img.meta.check(host, cs, undefined);
        img.storage.write(host, zeros);
        const [hi, lo] = makeEntry(host, false);
        layout.set(img.l2Cache.get(l2Offset), j, { hi: withCopied(hi, img.refcounts.getAt(host) === 1), lo, zero: 0, alloc: 0 });
      },
    });
  }
  img.flush();
}

function setLazyRefcounts(img: ImageState, on: boolean): void {
  img.flush();
  if (on) img.header.compatibleFeatures |= COMPAT_LAZY_REFCOUNTS;
  else {
    img.header.compatibleFeatures &= ~COMPAT_LAZY_REFCOUNTS;
    img.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  }
  img.writeHeader();
  img.storage.flush();
  if (!on) img.dirtyBitRewritten();
}
