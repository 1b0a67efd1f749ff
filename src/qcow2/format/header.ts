/**
 * qcow2 header, versions 2 and 3 (qcow2.txt "Header"). Decoding checks only
 * what is needed to read the fields; semantic validation against the file
 * lives in validate.ts so that it can name the offending field.
 */
import { InvalidImageError, UnsupportedFeatureError } from '../errors.js';
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

/** Minimum bytes to read before decodeHeader can tell the header length. */
export const HEADER_PROBE_SIZE = HEADER_V3_MIN_LENGTH;

export function decodeHeader(buf: Uint8Array): Qcow2Header {
  if (buf.length < HEADER_V2_LENGTH) {
    throw new InvalidImageError(`file too short for a qcow2 header (${buf.length} bytes)`);
  }
  const v = viewOf(buf);
  const magic = v.getUint32(0);
  if (magic !== QCOW2_MAGIC) throw new InvalidImageError('not a qcow2 image (bad magic)');
  const version = v.getUint32(4);
  if (version !== 2 && version !== 3) {
    throw new UnsupportedFeatureError(`unsupported qcow2 version ${version}`);
  }
  const h: Qcow2Header = {
    version,
    backingFileOffset: getU64(v, 8),
    backingFileSize: v.getUint32(16),
    clusterBits: v.getUint32(20),
    size: getU64(v, 24),
    cryptMethod: v.getUint32(32),
    l1Size: v.getUint32(36),
    l1TableOffset: getU64(v, 40),
    refcountTableOffset: getU64(v, 48),
    refcountTableClusters: v.getUint32(56),
    nbSnapshots: v.getUint32(60),
    snapshotsOffset: getU64(v, 64),
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
    h.incompatibleFeatures = v.getBigUint64(72);
    h.compatibleFeatures = v.getBigUint64(80);
    h.autoclearFeatures = v.getBigUint64(88);
    h.refcountOrder = v.getUint32(96);
    h.headerLength = v.getUint32(100);
    if (h.headerLength < HEADER_V3_MIN_LENGTH) {
      throw new InvalidImageError(`qcow2 header length ${h.headerLength} is below the v3 minimum of 104`);
    }
    if (buf.length < h.headerLength) {
      throw new InvalidImageError(`file too short for its header length ${h.headerLength}`);
    }
    if (h.headerLength > 104) h.compressionType = buf[104];
    if (h.headerLength > 105) h.extraHeaderBytes = buf.slice(105, h.headerLength);
  }
  return h;
}

/** Encodes the header; v3 headers are written with their own headerLength (at least 112). */
export function encodeHeader(h: Qcow2Header): Uint8Array {
  const len = h.version === 2 ? HEADER_V2_LENGTH : Math.max(h.headerLength, HEADER_V3_LENGTH);
  const buf = new Uint8Array(len);
  const v = viewOf(buf);
  v.setUint32(0, QCOW2_MAGIC);
  v.setUint32(4, h.version);
  setU64(v, 8, h.backingFileOffset);
  v.setUint32(16, h.backingFileSize);
  v.setUint32(20, h.clusterBits);
  setU64(v, 24, h.size);
  v.setUint32(32, h.cryptMethod);
  v.setUint32(36, h.l1Size);
  setU64(v, 40, h.l1TableOffset);
  setU64(v, 48, h.refcountTableOffset);
  v.setUint32(56, h.refcountTableClusters);
  v.setUint32(60, h.nbSnapshots);
  setU64(v, 64, h.snapshotsOffset);
  if (h.version === 3) {
    v.setBigUint64(72, h.incompatibleFeatures);
    v.setBigUint64(80, h.compatibleFeatures);
    v.setBigUint64(88, h.autoclearFeatures);
    v.setUint32(96, h.refcountOrder);
    v.setUint32(100, len);
    buf[104] = h.compressionType;
    buf.set(h.extraHeaderBytes.subarray(0, len - 105), 105);
  }
  return buf;
}
