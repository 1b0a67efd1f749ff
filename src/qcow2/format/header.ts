/**
 * qcow2 header, versions 2 and 3 (qcow2.txt "Header"). Decoding checks only
 * what is needed to read the fields; semantic validation against the file
 * lives in validate.ts so that it can name the offending field.
 */
import { InvalidImageError, NotQcow2Error, UnsupportedFeatureError } from '../errors.js';
import { getU64, setU64, viewOf } from './bytes.js';
import {
  COMPRESSION_ZLIB,
  HEADER_V2_LENGTH,
  HEADER_V3_LENGTH,
  HEADER_V3_MIN_LENGTH,
  QCOW2_MAGIC,
} from './constants.js';

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** Bytes of the header beyond the fields this version defines (kept on rewrite). */
  extraHeaderBytes: Uint8Array;
}

/**
 * Byte position and width of every fixed header field (qcow2.txt "Header",
 * QEMU's `offsetof(QCowHeader, ...)`). The codec below, the engine's in-place
 * header updates and the hostile-image mutator all take positions from here.
 * `sinceVersion` 3 marks the fields a v2 header does not have.
 */
export const HEADER_FIELDS = {
  magic: { offset: 0, width: 4, sinceVersion: 2 },
  version: { offset: 4, width: 4, sinceVersion: 2 },
  backingFileOffset: { offset: 8, width: 8, sinceVersion: 2 },
  backingFileSize: { offset: 16, width: 4, sinceVersion: 2 },
  clusterBits: { offset: 20, width: 4, sinceVersion: 2 },
  size: { offset: 24, width: 8, sinceVersion: 2 },
  cryptMethod: { offset: 32, width: 4, sinceVersion: 2 },
  l1Size: { offset: 36, width: 4, sinceVersion: 2 },
  l1TableOffset: { offset: 40, width: 8, sinceVersion: 2 },
  refcountTableOffset: { offset: 48, width: 8, sinceVersion: 2 },
  refcountTableClusters: { offset: 56, width: 4, sinceVersion: 2 },
  nbSnapshots: { offset: 60, width: 4, sinceVersion: 2 },
  snapshotsOffset: { offset: 64, width: 8, sinceVersion: 2 },
  incompatibleFeatures: { offset: 72, width: 8, sinceVersion: 3 },
  compatibleFeatures: { offset: 80, width: 8, sinceVersion: 3 },
  autoclearFeatures: { offset: 88, width: 8, sinceVersion: 3 },
  refcountOrder: { offset: 96, width: 4, sinceVersion: 3 },
  headerLength: { offset: 100, width: 4, sinceVersion: 3 },
  compressionType: { offset: 104, width: 1, sinceVersion: 3 },
} as const satisfies Record<string, { offset: number; width: 1 | 4 | 8; sinceVersion: 2 | 3 }>;

export type HeaderFieldName = keyof typeof HEADER_FIELDS;

/** First byte after the fixed fields: where a longer v3 header's extra bytes begin. */
export const HEADER_EXTRA_BYTES_OFFSET = HEADER_FIELDS.compressionType.offset + HEADER_FIELDS.compressionType.width;

/** Minimum bytes to read before decodeHeader can tell the header length. */
export const HEADER_PROBE_SIZE = HEADER_V3_MIN_LENGTH;

const F = HEADER_FIELDS;

export function decodeHeader(buf: Uint8Array): Qcow2Header {
  if (buf.length < HEADER_V2_LENGTH) {
    throw new InvalidImageError(`file too short for a qcow2 header (${buf.length} bytes)`);
  }
  const v = viewOf(buf);
  const magic = v.getUint32(F.magic.offset);
  if (magic !== QCOW2_MAGIC) throw new NotQcow2Error('Image is not in qcow2 format');
  const version = v.getUint32(F.version.offset);
  if (version !== 2 && version !== 3) {
    throw new UnsupportedFeatureError(`unsupported qcow2 version ${version}`);
  }
  const h: Qcow2Header = {
    version,
    backingFileOffset: getU64(v, F.backingFileOffset.offset),
    backingFileSize: v.getUint32(F.backingFileSize.offset),
    clusterBits: v.getUint32(F.clusterBits.offset),
    size: getU64(v, F.size.offset),
    cryptMethod: v.getUint32(F.cryptMethod.offset),
    l1Size: v.getUint32(F.l1Size.offset),
    l1TableOffset: getU64(v, F.l1TableOffset.offset),
    refcountTableOffset: getU64(v, F.refcountTableOffset.offset),
    refcountTableClusters: v.getUint32(F.refcountTableClusters.offset),
    nbSnapshots: v.getUint32(F.nbSnapshots.offset),
    snapshotsOffset: getU64(v, F.snapshotsOffset.offset),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: HEADER_V2_LENGTH,
    compressionType: COMPRESSION_ZLIB,
    extraHeaderBytes: new Uint8Array(0),
  };
  if (version === 3) {
    if (buf.length < HEADER_V3_MIN_LENGTH) {
      throw new InvalidImageError(`file too short for a qcow2 v3 header (${buf.length} bytes)`);
    }
    h.incompatibleFeatures = v.getBigUint64(F.incompatibleFeatures.offset);
    h.compatibleFeatures = v.getBigUint64(F.compatibleFeatures.offset);
    h.autoclearFeatures = v.getBigUint64(F.autoclearFeatures.offset);
    h.refcountOrder = v.getUint32(F.refcountOrder.offset);
    h.headerLength = v.getUint32(F.headerLength.offset);
    if (h.headerLength < HEADER_V3_MIN_LENGTH) {
      throw new InvalidImageError(`qcow2 header length ${h.headerLength} is below the v3 minimum of ${HEADER_V3_MIN_LENGTH}`);
    }
    if (buf.length < h.headerLength) {
      throw new InvalidImageError(`file too short for its header length ${h.headerLength}`);
    }
    if (h.headerLength > F.compressionType.offset) h.compressionType = buf[F.compressionType.offset]!;
    if (h.headerLength > HEADER_EXTRA_BYTES_OFFSET) h.extraHeaderBytes = buf.slice(HEADER_EXTRA_BYTES_OFFSET, h.headerLength);
  }
  return h;
}

/** Encodes the header; v3 headers are written with their own headerLength (at least 112). */
export function encodeHeader(h: Qcow2Header): Uint8Array {
  const len = h.version === 2 ? HEADER_V2_LENGTH : Math.max(h.headerLength, HEADER_V3_LENGTH);
  const buf = new Uint8Array(len);
  const v = viewOf(buf);
  v.setUint32(F.magic.offset, QCOW2_MAGIC);
  v.setUint32(F.version.offset, h.version);
  setU64(v, F.backingFileOffset.offset, h.backingFileOffset);
  v.setUint32(F.backingFileSize.offset, h.backingFileSize);
  v.setUint32(F.clusterBits.offset, h.clusterBits);
  setU64(v, F.size.offset, h.size);
  v.setUint32(F.cryptMethod.offset, h.cryptMethod);
  v.setUint32(F.l1Size.offset, h.l1Size);
  setU64(v, F.l1TableOffset.offset, h.l1TableOffset);
  setU64(v, F.refcountTableOffset.offset, h.refcountTableOffset);
  v.setUint32(F.refcountTableClusters.offset, h.refcountTableClusters);
  v.setUint32(F.nbSnapshots.offset, h.nbSnapshots);
  setU64(v, F.snapshotsOffset.offset, h.snapshotsOffset);
  if (h.version === 3) {
    v.setBigUint64(F.incompatibleFeatures.offset, h.incompatibleFeatures);
    v.setBigUint64(F.compatibleFeatures.offset, h.compatibleFeatures);
    v.setBigUint64(F.autoclearFeatures.offset, h.autoclearFeatures);
    v.setUint32(F.refcountOrder.offset, h.refcountOrder);
    v.setUint32(F.headerLength.offset, len);
    buf[F.compressionType.offset] = h.compressionType;
    buf.set(h.extraHeaderBytes.subarray(0, len - HEADER_EXTRA_BYTES_OFFSET), HEADER_EXTRA_BYTES_OFFSET);
  }
  return buf;
}
