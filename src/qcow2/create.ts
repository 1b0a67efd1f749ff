/**
 * Creation of an empty image (qemu-img create -f qcow2): option checks with
 * qemu-img's rules, then the minimal layout QEMU writes first — header in
 * cluster 0, refcount table in cluster 1, one refcount block in cluster 2 —
 * before the L1 table is allocated through the normal allocator.
 */
import { InvalidArgumentError } from './errors.js';
import { setU64, viewOf } from './format/bytes.js';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  COMPRESSION_ZLIB,
  COMPRESSION_ZSTD,
  CRYPT_NONE,
  DEFAULT_CLUSTER_BITS,
  HEADER_V2_LENGTH,
  HEADER_V3_LENGTH,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  MAX_BACKING_FILE_NAME,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
  MIN_EXTL2_CLUSTER_BITS,
  SECTOR_SIZE,
} from './format/constants.js';
import { defaultFeatureNames, type HeaderExtensions } from './format/extensions.js';
import type { Qcow2Header } from './format/header.js';
import { setRefcount } from './format/refcount-block.js';
import { encodeFirstCluster } from './header-io.js';
import type { BlockStorage } from './storage/types.js';
import type { CreateOptions } from './types.js';
import { maxVirtualSize } from './validate.js';

/** QEMU 7.2 writes the feature name table only into images with clusters of at least 8 KiB. */
export const FEATURE_TABLE_MIN_CLUSTER = 8192;

export interface ResolvedCreateOptions {
  size: number;
  clusterBits: number;
  refcountOrder: number;
  version: 2 | 3;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compression: number;
}

/** Applies qemu-img's defaults and refuses what qemu-img refuses, with its reasons. */
export function resolveCreateOptions(o: CreateOptions): ResolvedCreateOptions {
  const cs = o.clusterSize ?? 2 ** DEFAULT_CLUSTER_BITS;
  const clusterBits = Math.log2(cs);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new InvalidArgumentError('Cluster size must be a power of two between 512 and 2048k');
  }
  const version = (o.compat ?? '1.1') === '0.10' ? 2 : 3;
  const bits = o.refcountBits ?? 16;
  const order = Math.log2(bits);
  if (!Number.isInteger(order) || order < 0 || order > 6) {
    throw new InvalidArgumentError('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && bits !== 16) {
    throw new InvalidArgumentError('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  if (version < 3 && o.lazyRefcounts) {
    throw new InvalidArgumentError('Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
  }
  if (o.extendedL2 && version < 3) {
    throw new InvalidArgumentError('Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
  }
  if (o.extendedL2 && cs < 2 ** MIN_EXTL2_CLUSTER_BITS) {
    throw new InvalidArgumentError('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  }
  const compression = (o.compressionType ?? 'zlib') === 'zstd' ? COMPRESSION_ZSTD : COMPRESSION_ZLIB;
  if (compression !== COMPRESSION_ZLIB && version < 3) {
    throw new InvalidArgumentError('Non-zlib compression type is only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
  }
  if (o.backingFormat !== undefined && o.backingFile === undefined) {
    throw new InvalidArgumentError('Backing format cannot be used without backing file');
  }
  if (o.backingFile !== undefined && new TextEncoder().encode(o.backingFile).length > MAX_BACKING_FILE_NAME) {
    throw new InvalidArgumentError('Backing file name too long');
  }
  if (o.backingFile !== undefined && (o.preallocation ?? 'off') !== 'off' && !o.extendedL2) {
    throw new InvalidArgumentError('Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  checkDataFileOptions(o, version);
  if (!Number.isFinite(o.size) || o.size < 0) throw new InvalidArgumentError(`Invalid image size ${o.size}`);
  const size = Math.ceil(o.size / SECTOR_SIZE) * SECTOR_SIZE;
  if (size > maxVirtualSize(clusterBits, o.extendedL2 ?? false)) {
    throw new InvalidArgumentError("The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  }
  return { size, clusterBits, refcountOrder: order, version, lazyRefcounts: o.lazyRefcounts ?? false, extendedL2: o.extendedL2 ?? false, compression };
}

/** Writes the empty image; its size and L1 table are set by the caller once opened. */
export function createLayout(storage: BlockStorage, o: CreateOptions): ResolvedCreateOptions {
  const r = resolveCreateOptions(o);
  const cs = 2 ** r.clusterBits;
  let incompat = 0n;
  if (r.extendedL2) incompat |= INCOMPAT_EXTL2;
  if (r.compression !== COMPRESSION_ZLIB) incompat |= INCOMPAT_COMPRESSION;
  if (o.dataFile !== undefined) incompat |= INCOMPAT_DATA_FILE;
  const header: Qcow2Header = {
    version: r.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: r.clusterBits,
    size: 0,
    cryptMethod: CRYPT_NONE,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: cs,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: incompat,
    compatibleFeatures: r.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: o.dataFile !== undefined && o.dataFileRaw ? AUTOCLEAR_DATA_FILE_RAW : 0n,
    refcountOrder: r.refcountOrder,
    headerLength: r.version === 3 ? HEADER_V3_LENGTH : HEADER_V2_LENGTH,
    compressionType: r.compression,
    extraHeaderBytes: new Uint8Array(0),
  };
  const ext: HeaderExtensions = { unknown: [] };
  if (o.backingFormat !== undefined) ext.backingFormat = o.backingFormat;
  if (o.dataFile !== undefined) ext.dataFile = o.dataFile;
  if (r.version === 3 && cs >= FEATURE_TABLE_MIN_CLUSTER) ext.featureNames = defaultFeatureNames();
  const first = encodeFirstCluster({ header, ext, backingFile: o.backingFile }, cs);
  storage.truncate(0);
  storage.write(0, first);
  const reftable = new Uint8Array(cs);
  setU64(viewOf(reftable), 0, 2 * cs);
  storage.write(cs, reftable);
  const block = new Uint8Array(cs);
  const bv = viewOf(block);
  for (let c = 0; c < 3; c++) setRefcount(block, bv, c, r.refcountOrder, 1);
  storage.write(2 * cs, block);
  storage.flush();
  return r;
}

/** qcow2_co_create's data file rules, with qemu-img 7.2's messages. */
function checkDataFileOptions(o: CreateOptions, version: 2 | 3): void {
  if (o.dataFileRaw && o.dataFile === undefined) throw new InvalidArgumentError('data-file-raw requires data-file');
  if (o.dataFile === undefined) return;
  if (o.dataFile === '') throw new InvalidArgumentError("Could not create '': No such file or directory");
  if (version < 3) {
    throw new InvalidArgumentError('External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  if (o.dataFileRaw && o.backingFile !== undefined) {
    throw new InvalidArgumentError('Backing file and data-file-raw cannot be used at the same time');
  }
}
