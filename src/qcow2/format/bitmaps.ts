/**
 * Persistent dirty bitmaps (qcow2.txt "Bitmaps extension"): the directory and
 * the per-bitmap tables. The engine does not interpret bitmap contents; it
 * needs the directory to account for the clusters bitmaps own.
 */
import { InvalidImageError } from '../errors.js';
import { alignUp, decodeString, getU64, viewOf } from './bytes.js';
import { BITMAP_DIR_ENTRY_FIXED } from './constants.js';

export interface BitmapDirEntry {
  bitmapTableOffset: number;
  bitmapTableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  name: string;
}

export const BITMAP_FLAG_IN_USE = 1 << 0;
export const BITMAP_FLAG_AUTO = 1 << 1;
export const BITMAP_FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2;

export function decodeBitmapDirectory(buf: Uint8Array, count: number): BitmapDirEntry[] {
  const v = viewOf(buf);
  const out: BitmapDirEntry[] = [];
  let pos = 0;
  for (let i = 0; i < count; i++) {
    if (pos + BITMAP_DIR_ENTRY_FIXED > buf.length) throw new InvalidImageError(`bitmap directory entry ${i} is truncated`);
    const nameSize = v.getUint16(pos + 18);
    const extra = v.getUint32(pos + 20);
    const end = pos + BITMAP_DIR_ENTRY_FIXED + extra + nameSize;
    if (end > buf.length) throw new InvalidImageError(`bitmap directory entry ${i} is truncated`);
    out.push({
      bitmapTableOffset: getU64(v, pos),
      bitmapTableSize: v.getUint32(pos + 8),
      flags: v.getUint32(pos + 12),
      type: buf[pos + 16],
      granularityBits: buf[pos + 17],
      name: decodeString(buf.subarray(pos + BITMAP_DIR_ENTRY_FIXED + extra, end)),
    });
    pos = alignUp(end, 8);
  }
  return out;
}
