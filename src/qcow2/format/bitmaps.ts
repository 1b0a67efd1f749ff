/**
 * Persistent dirty bitmaps (qcow2.txt "Bitmaps extension", "Bitmap directory",
 * "Bitmap table"): directory entries, bitmap table entries and the limits
 * QEMU (block/qcow2-bitmap.c) puts on them. Pure encode/decode.
 */
import { InvalidImageError } from '../errors.js';
import { alignUp, decodeCString, encodeString, getU64, setU64, viewOf } from './bytes.js';
import { BITMAP_DIR_ENTRY_FIXED } from './constants.js';

export interface BitmapDirEntry {
  bitmapTableOffset: number;
  bitmapTableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  nameSize: number;
  extraDataSize: number;
  name: string;
}

export const BITMAP_FLAG_IN_USE = 1 << 0;
export const BITMAP_FLAG_AUTO = 1 << 1;
export const BITMAP_FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2;
/** QEMU's BME_RESERVED_FLAGS: every flag but in_use and auto (extra_data_compatible included). */
export const BITMAP_RESERVED_FLAGS = 0xfffffffc;
/** The only bitmap type qcow2.txt defines. */
export const BITMAP_TYPE_DIRTY_TRACKING = 1;

/** Directory limits (qcow2.h QCOW2_MAX_BITMAPS, QCOW2_MAX_BITMAP_DIRECTORY_SIZE). */
export const MAX_BITMAPS = 65535;
export const MAX_BITMAP_DIRECTORY_SIZE = 1024 * MAX_BITMAPS;
/** Entry limits (qcow2-bitmap.c BME_MAX_*, BME_MIN_GRANULARITY_BITS). */
export const BITMAP_MAX_TABLE_SIZE = 0x8000000;
export const BITMAP_MAX_PHYS_SIZE = 0x20000000;
export const BITMAP_MAX_GRANULARITY_BITS = 31;
export const BITMAP_MIN_GRANULARITY_BITS = 9;
export const BITMAP_MAX_NAME_SIZE = 1023;

/** Bitmap table entry: bits 9..55 a cluster offset, bit 0 "all ones" (when the offset is 0), the rest reserved. */
export const BITMAP_TABLE_OFFSET_MASK = 0x00fffffffffffe00n;
export const BITMAP_TABLE_RESERVED_MASK = 0xff000000000001fen;
export const BITMAP_TABLE_ALL_ONES = 1n;

/** Size of a directory entry with its name, padded to 8 bytes (calc_dir_entry_size). */
export function dirEntrySize(nameSize: number, extraDataSize: number): number {
  return alignUp(BITMAP_DIR_ENTRY_FIXED + nameSize + extraDataSize, 8);
}

/** Decodes `count` entries from the start of buf (no directory-level checks; see bitmap-list.ts for those). */
export function decodeBitmapDirectory(buf: Uint8Array, count: number): BitmapDirEntry[] {
  const out: BitmapDirEntry[] = [];
  let pos = 0;
  for (let i = 0; i < count; i++) {
    const e = decodeDirEntryAt(buf, pos);
    if (!e) throw new InvalidImageError(`bitmap directory entry ${i} is truncated`);
    out.push(e);
    pos += dirEntrySize(e.nameSize, e.extraDataSize);
  }
  return out;
}

/** The entry at pos, or undefined when it (fixed part, extra data or name) runs past buf. */
export function decodeDirEntryAt(buf: Uint8Array, pos: number): BitmapDirEntry | undefined {
  if (pos + BITMAP_DIR_ENTRY_FIXED > buf.length) return undefined;
  const v = viewOf(buf);
  const nameSize = v.getUint16(pos + 18);
  const extraDataSize = v.getUint32(pos + 20);
  if (pos + dirEntrySize(nameSize, extraDataSize) > buf.length) return undefined;
  const nameAt = pos + BITMAP_DIR_ENTRY_FIXED + extraDataSize;
  return {
    bitmapTableOffset: getU64(v, pos),
    bitmapTableSize: v.getUint32(pos + 8),
    flags: v.getUint32(pos + 12),
    type: buf[pos + 16]!,
    granularityBits: buf[pos + 17]!,
    nameSize,
    extraDataSize,
    name: decodeCString(buf.subarray(nameAt, nameAt + nameSize)),
  };
}

/** A directory as QEMU writes it (bitmap_list_store): dirty-tracking type, no extra data. */
export function encodeBitmapDirectory(entries: readonly Omit<BitmapDirEntry, 'type' | 'nameSize' | 'extraDataSize'>[]): Uint8Array {
  const names = entries.map((e) => encodeString(e.name));
  const size = names.reduce((n, nm) => n + dirEntrySize(nm.length, 0), 0);
  const buf = new Uint8Array(size);
  const v = viewOf(buf);
  let pos = 0;
  entries.forEach((e, i) => {
    const nm = names[i]!;
    setU64(v, pos, e.bitmapTableOffset);
    v.setUint32(pos + 8, e.bitmapTableSize);
    v.setUint32(pos + 12, e.flags);
    buf[pos + 16] = BITMAP_TYPE_DIRTY_TRACKING;
    buf[pos + 17] = e.granularityBits;
    v.setUint16(pos + 18, nm.length);
    v.setUint32(pos + 20, 0);
    buf.set(nm, pos + BITMAP_DIR_ENTRY_FIXED);
    pos += dirEntrySize(nm.length, 0);
  });
  return buf;
}

/** check_table_entry: reserved bits clear; with an offset, no all-ones bit and cluster alignment. */
export function bitmapTableEntryValid(entry: bigint, clusterSize: number): boolean {
  if (entry & BITMAP_TABLE_RESERVED_MASK) return false;
  const off = entry & BITMAP_TABLE_OFFSET_MASK;
  if (off === 0n) return true;
  return !(entry & BITMAP_TABLE_ALL_ONES) && off % BigInt(clusterSize) === 0n;
}

/** Bytes of bitmap data for `len` guest bytes at a granularity (get_bitmap_bytes_needed). */
export function bitmapBytesNeeded(len: number, granularity: number): number {
  return Math.ceil(Math.ceil(len / granularity) / 8);
}

/** Bitmap table entries for `len` guest bytes (size_to_clusters of hbitmap's serialization size). */
export function bitmapTableEntriesFor(len: number, granularity: number, clusterSize: number): number {
  return Math.ceil(alignUp(bitmapBytesNeeded(len, granularity), 8) / clusterSize);
}
