/**
 * Header extensions (qcow2.txt "Header extensions"): a list of
 * (type u32, length u32, data padded to 8) after the header, ended by type 0.
 * Unknown extensions are kept byte for byte so that a rewrite preserves them.
 */
import { InvalidImageError } from '../errors.js';
import { alignUp, decodeCString, encodeString, getU64, setU64, viewOf } from './bytes.js';
import {
  BITMAPS_EXT_SIZE,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO_HEADER,
  EXT_DATA_FILE,
  EXT_END,
  EXT_FEATURE_TABLE,
  FEATURE_NAME_ENTRY_SIZE,
  FEATURE_NAME_LENGTH,
} from './constants.js';

export interface FeatureName {
  type: number; // 0 incompatible, 1 compatible, 2 autoclear
  bit: number;
  name: string;
}

export interface BitmapsExtension {
  nbBitmaps: number;
  reserved: number;
  bitmapDirectorySize: number;
  bitmapDirectoryOffset: number;
}

export interface CryptoHeaderExtension {
  offset: number;
  length: number;
}

export interface RawExtension {
  type: number;
  data: Uint8Array;
}

export interface HeaderExtensions {
  backingFormat?: string;
  featureNames?: FeatureName[];
  bitmaps?: BitmapsExtension;
  cryptoHeader?: CryptoHeaderExtension;
  dataFile?: string;
  /** Extensions this implementation does not interpret, in on-disk order. */
  unknown: RawExtension[];
}

/**
 * Decodes extensions from buf, which holds the bytes from `start` up to the end
 * of the first cluster (extensions must fit there).
 */
export function decodeExtensions(buf: Uint8Array, start: number): HeaderExtensions {
  const out: HeaderExtensions = { unknown: [] };
  const v = viewOf(buf);
  let pos = start;
  // As QEMU reads them: the list may end at the end of the area without an end
  // marker, and a repeated known extension replaces the earlier one.
  while (pos + 8 <= buf.length) {
    const type = v.getUint32(pos);
    const len = v.getUint32(pos + 4);
    pos += 8;
    if (type === EXT_END) break;
    if (len > buf.length - pos) {
      throw new InvalidImageError(`header extension 0x${type.toString(16)} of ${len} bytes is too large`);
    }
    const data = buf.slice(pos, pos + len);
    pos += alignUp(len, 8);
    switch (type) {
      case EXT_BACKING_FORMAT:
        out.backingFormat = decodeCString(data);
        break;
      case EXT_FEATURE_TABLE:
        out.featureNames = decodeFeatureNames(data);
        break;
      case EXT_BITMAPS:
        out.bitmaps = decodeBitmapsExt(data);
        break;
      case EXT_CRYPTO_HEADER:
        out.cryptoHeader = decodeCryptoExt(data);
        break;
      case EXT_DATA_FILE:
        out.dataFile = decodeCString(data);
        break;
      default:
        out.unknown.push({ type, data });
    }
  }
  return out;
}

export function encodeExtensions(ext: HeaderExtensions): Uint8Array {
  const parts: { type: number; data: Uint8Array }[] = [];
  if (ext.backingFormat !== undefined) parts.push({ type: EXT_BACKING_FORMAT, data: encodeString(ext.backingFormat) });
  if (ext.dataFile !== undefined) parts.push({ type: EXT_DATA_FILE, data: encodeString(ext.dataFile) });
  if (ext.cryptoHeader) parts.push({ type: EXT_CRYPTO_HEADER, data: encodeCryptoExt(ext.cryptoHeader) });
  if (ext.featureNames) parts.push({ type: EXT_FEATURE_TABLE, data: encodeFeatureNames(ext.featureNames) });
  if (ext.bitmaps) parts.push({ type: EXT_BITMAPS, data: encodeBitmapsExt(ext.bitmaps) });
  for (const u of ext.unknown) parts.push(u);
  let total = 8;
  for (const p of parts) total += 8 + alignUp(p.data.length, 8);
  const buf = new Uint8Array(total);
  const v = viewOf(buf);
  let pos = 0;
  for (const p of parts) {
    v.setUint32(pos, p.type);
    v.setUint32(pos + 4, p.data.length);
    buf.set(p.data, pos + 8);
    pos += 8 + alignUp(p.data.length, 8);
  }
  // End marker: already zero.
  return buf;
}

export function decodeFeatureNames(data: Uint8Array): FeatureName[] {
  const out: FeatureName[] = [];
  for (let p = 0; p + FEATURE_NAME_ENTRY_SIZE <= data.length; p += FEATURE_NAME_ENTRY_SIZE) {
    const raw = data.subarray(p + 2, p + FEATURE_NAME_ENTRY_SIZE);
    out.push({ type: data[p], bit: data[p + 1], name: decodeCString(raw) });
  }
  return out;
}

export function encodeFeatureNames(names: FeatureName[]): Uint8Array {
  const buf = new Uint8Array(names.length * FEATURE_NAME_ENTRY_SIZE);
  names.forEach((f, i) => {
    const p = i * FEATURE_NAME_ENTRY_SIZE;
    buf[p] = f.type;
    buf[p + 1] = f.bit;
    buf.set(encodeString(f.name).subarray(0, FEATURE_NAME_LENGTH), p + 2);
  });
  return buf;
}

/** The table QEMU 7.2 writes into every v3 image it creates. */
export function defaultFeatureNames(): FeatureName[] {
  return [
    { type: 0, bit: 0, name: 'dirty bit' },
    { type: 0, bit: 1, name: 'corrupt bit' },
    { type: 0, bit: 2, name: 'external data file' },
    { type: 0, bit: 3, name: 'compression type' },
    { type: 0, bit: 4, name: 'extended L2 entries' },
    { type: 1, bit: 0, name: 'lazy refcounts' },
    { type: 2, bit: 0, name: 'bitmaps' },
    { type: 2, bit: 1, name: 'raw external data' },
  ];
}

function decodeBitmapsExt(data: Uint8Array): BitmapsExtension {
  if (data.length < BITMAPS_EXT_SIZE) throw new InvalidImageError('bitmaps header extension is too short');
  const v = viewOf(data);
  return {
    nbBitmaps: v.getUint32(0),
    reserved: v.getUint32(4),
    bitmapDirectorySize: getU64(v, 8),
    bitmapDirectoryOffset: getU64(v, 16),
  };
}

function encodeBitmapsExt(b: BitmapsExtension): Uint8Array {
  const buf = new Uint8Array(BITMAPS_EXT_SIZE);
  const v = viewOf(buf);
  v.setUint32(0, b.nbBitmaps);
  v.setUint32(4, b.reserved);
  setU64(v, 8, b.bitmapDirectorySize);
  setU64(v, 16, b.bitmapDirectoryOffset);
  return buf;
}

function decodeCryptoExt(data: Uint8Array): CryptoHeaderExtension {
  if (data.length < 16) throw new InvalidImageError('encryption header extension is too short');
  const v = viewOf(data);
  return { offset: getU64(v, 0), length: getU64(v, 8) };
}

function encodeCryptoExt(c: CryptoHeaderExtension): Uint8Array {
  const buf = new Uint8Array(16);
  const v = viewOf(buf);
  setU64(v, 0, c.offset);
  setU64(v, 8, c.length);
  return buf;
}
