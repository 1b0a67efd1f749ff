/**
 * Validation of the header of an image being opened, after qcow2_do_open:
 * every size and offset is checked before anything is allocated from it, so
 * a hostile header yields an InvalidImageError, never a huge allocation.
 */
import { InvalidImageError, UnsupportedFeatureError } from './errors.js';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  INCOMPAT_DATA_FILE,
  COMPRESSION_ZLIB,
  COMPRESSION_ZSTD,
  INCOMPAT_COMPRESSION,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN,
  MAX_BACKING_FILE_NAME,
  MAX_CLUSTER_BITS,
  MAX_HOST_OFFSET,
  MAX_L1_BYTES,
  MAX_REFCOUNT_ORDER,
  MAX_REFTABLE_BYTES,
  MAX_SNAPSHOTS,
  MIN_CLUSTER_BITS,
  SNAPSHOT_HEADER_SIZE,
  L1_ENTRY_SIZE,
  L2_ENTRY_SIZE,
  L2_EXTENDED_ENTRY_SIZE,
  MIN_EXTL2_CLUSTER_BITS,
} from './format/constants.js';
import type { FeatureName, HeaderExtensions } from './format/extensions.js';
import type { Qcow2Header } from './format/header.js';

/** Guest bytes one L1 entry maps. */
export function bytesPerL1Entry(clusterBits: number, extendedL2: boolean): number {
  const l2Entries = 2 ** clusterBits / (extendedL2 ? L2_EXTENDED_ENTRY_SIZE : L2_ENTRY_SIZE);
  return l2Entries * 2 ** clusterBits;
}

export function l1EntriesFor(size: number, clusterBits: number, extendedL2: boolean): number {
  return Math.ceil(size / bytesPerL1Entry(clusterBits, extendedL2));
}

/** Largest virtual size QEMU accepts: the L1 table may not exceed 32 MiB. */
export function maxVirtualSize(clusterBits: number, extendedL2: boolean): number {
  return (MAX_L1_BYTES / L1_ENTRY_SIZE) * bytesPerL1Entry(clusterBits, extendedL2);
}

function checkTable(what: string, offset: number, entries: number, entrySize: number, clusterSize: number): void {
  if (entries === 0) return;
  if (offset % clusterSize !== 0) throw new InvalidImageError(`${what} offset ${offset} is not cluster aligned`);
  if (offset + entries * entrySize > MAX_HOST_OFFSET) {
    throw new InvalidImageError(`${what} at offset ${offset} with ${entries} entries lies beyond the largest host offset`);
  }
}

export function unknownFeatureNames(bits: bigint, known: bigint, type: number, table: FeatureName[] | undefined): string {
  const names: string[] = [];
  for (let b = 0; b < 64; b++) {
    const bit = 1n << BigInt(b);
    if (bits & bit && !(known & bit)) {
      const n = table?.find((f) => f.type === type && f.bit === b);
      names.push(n ? n.name : `unknown feature bit ${b}`);
    }
  }
  return names.join(', ');
}

export function validateHeader(h: Qcow2Header, featureNames: FeatureName[] | undefined, forCheck = false): void {
  if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS) {
    throw new InvalidImageError(`unsupported cluster size: 2^${h.clusterBits} (must be 2^9 to 2^21)`);
  }
  const cs = 2 ** h.clusterBits;
  if (h.headerLength > cs) throw new InvalidImageError(`qcow2 header length ${h.headerLength} exceeds the cluster size`);
  const unknown = h.incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (unknown) {
    throw new UnsupportedFeatureError(
      `unsupported qcow2 incompatible feature(s): ${unknownFeatureNames(h.incompatibleFeatures, INCOMPAT_KNOWN, 0, featureNames)}`,
    );
  }
  if (h.refcountOrder > MAX_REFCOUNT_ORDER) {
    throw new InvalidImageError(`refcount entry width 2^${h.refcountOrder} bits is too large (at most 64 bits)`);
  }
  if (h.backingFileOffset !== 0) {
    if (h.backingFileOffset > cs || h.backingFileSize > MAX_BACKING_FILE_NAME || h.backingFileOffset + h.backingFileSize > cs) {
      throw new InvalidImageError('backing file name is too long or lies outside the first cluster');
    }
  }
  const compressionBit = (h.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n;
  if (h.compressionType !== COMPRESSION_ZLIB && h.compressionType !== COMPRESSION_ZSTD) {
    throw new UnsupportedFeatureError(`unknown compression type ${h.compressionType}`);
  }
  if (compressionBit !== (h.compressionType !== COMPRESSION_ZLIB)) {
    throw new InvalidImageError(
      compressionBit
        ? 'compression type bit is set but the compression type is zlib'
        : `compression type ${h.compressionType} requires the compression type incompatible bit`,
    );
  }
  const extL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  if (extL2 && h.clusterBits < MIN_EXTL2_CLUSTER_BITS) {
    throw new InvalidImageError('extended L2 entries need a cluster size of at least 16 KiB');
  }
  if (h.l1Size > MAX_L1_BYTES / L1_ENTRY_SIZE) throw new InvalidImageError(`active L1 table too large (${h.l1Size} entries)`);
  if (h.size > maxVirtualSize(h.clusterBits, extL2)) {
    throw new InvalidImageError(`image size ${h.size} is too large for its cluster size`);
  }
  if (h.l1Size < l1EntriesFor(h.size, h.clusterBits, extL2)) {
    throw new InvalidImageError(`L1 table with ${h.l1Size} entries is too small for a ${h.size}-byte image`);
  }
  checkTable('active L1 table', h.l1TableOffset, h.l1Size, L1_ENTRY_SIZE, cs);
  if (h.refcountTableClusters === 0 && !forCheck) throw new InvalidImageError('image does not contain a refcount table');
  if (h.refcountTableClusters > MAX_REFTABLE_BYTES / cs) {
    throw new InvalidImageError(`refcount table too large (${h.refcountTableClusters} clusters)`);
  }
  checkTable('refcount table', h.refcountTableOffset, h.refcountTableClusters * cs, 1, cs);
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw new InvalidImageError(`too many snapshots (${h.nbSnapshots})`);
  checkTable('snapshot table', h.snapshotsOffset, h.nbSnapshots, SNAPSHOT_HEADER_SIZE, cs);
}

/** Bitmap directory limits QEMU enforces on open (qcow2-bitmap.c). */
const MAX_BITMAPS = 65535;
const MAX_BITMAP_DIRECTORY_SIZE = 1024 * MAX_BITMAPS;

/** Checks that depend on header extensions (QEMU: qcow2_read_extensions and qcow2_do_open). */
export function validateFeatureExtensions(h: Qcow2Header, ext: HeaderExtensions): void {
  if (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW && !(h.incompatibleFeatures & INCOMPAT_DATA_FILE)) {
    throw new InvalidImageError('data-file-raw requires a data file');
  }
  const b = ext.bitmaps;
  if (b && h.autoclearFeatures & AUTOCLEAR_BITMAPS) {
    if (b.reserved !== 0) throw new InvalidImageError('bitmaps_ext: reserved field is not zero');
    if (b.nbBitmaps > MAX_BITMAPS) throw new InvalidImageError(`bitmaps_ext: image has ${b.nbBitmaps} bitmaps, more than ${MAX_BITMAPS}`);
    if (b.nbBitmaps === 0) throw new InvalidImageError('bitmaps_ext: found bitmaps extension with zero bitmaps');
    if (b.bitmapDirectorySize > MAX_BITMAP_DIRECTORY_SIZE) {
      throw new InvalidImageError(
        `bitmaps_ext: bitmap directory size (${b.bitmapDirectorySize}) exceeds the maximum supported size (${MAX_BITMAP_DIRECTORY_SIZE})`,
      );
    }
    if (b.bitmapDirectoryOffset % 2 ** h.clusterBits !== 0 || b.bitmapDirectoryOffset === 0) {
      throw new InvalidImageError('bitmaps_ext: invalid bitmap directory offset');
    }
  }
}

