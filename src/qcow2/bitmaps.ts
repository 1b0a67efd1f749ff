/**
 * Persistent dirty bitmaps kept as QEMU keeps them (block/qcow2-bitmap.c).
 *
 * Open (qcow2_load_dirty_bitmaps): the directory is read and checked
 * (bitmap_list_load, check_dir_entry), every bitmap not already in use is
 * loaded (bitmap_table_load, load_bitmap_data); on a read-write open the
 * loaded ones are marked in use in the file before the first write
 * (update_ext_header_and_dir_in_place: autoclear bit off, directory
 * rewritten in place, bit on again), so a crash leaves them in use, never
 * silently stale.
 *
 * Close (qcow2_store_persistent_dirty_bitmaps): every consistent bitmap is
 * written to fresh clusters (only bitmap clusters holding a set bit get
 * one), then a new directory; the header switches to it with the autoclear
 * bit set (update_ext_header_and_dir); only then are the old directory,
 * tables and data clusters freed. Bitmaps that were in use at open keep
 * their entry, table and clusters untouched.
 */
import { BitmapSet, bitsBytes, type DirtyBitmap } from './bitmap-set.js';
import { InvalidImageError } from './errors.js';
import {
  BITMAP_FLAG_AUTO,
  BITMAP_FLAG_IN_USE,
  BITMAP_MAX_GRANULARITY_BITS,
  BITMAP_MAX_NAME_SIZE,
  BITMAP_MAX_PHYS_SIZE,
  BITMAP_MAX_TABLE_SIZE,
  BITMAP_MIN_GRANULARITY_BITS,
  BITMAP_RESERVED_FLAGS,
  BITMAP_TABLE_ALL_ONES,
  BITMAP_TABLE_OFFSET_MASK,
  BITMAP_TYPE_DIRTY_TRACKING,
  type BitmapDirEntry,
  MAX_BITMAP_DIRECTORY_SIZE,
  bitmapTableEntriesFor,
  bitmapTableEntryValid,
  decodeDirEntryAt,
  dirEntrySize,
  encodeBitmapDirectory,
} from './format/bitmaps.js';
import { getBig64, setBig64, viewOf } from './format/bytes.js';
import { AUTOCLEAR_BITMAPS, BITMAP_TABLE_ENTRY_SIZE } from './format/constants.js';
import { MetaKind } from './overlap.js';
import type { ImageState } from './state.js';

/** True when the header vouches for a bitmap directory (QEMU ignores the extension without the autoclear bit). */
export function hasBitmapDirectory(s: ImageState): boolean {
  const b = s.ext.bitmaps;
  return !!b && (s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n && b.nbBitmaps > 0;
}

/** bitmap_list_load: the directory, walked by its size, every entry checked; QEMU's messages. */
export function loadBitmapList(s: ImageState): BitmapDirEntry[] {
  const b = s.ext.bitmaps!;
  if (b.bitmapDirectorySize === 0) throw new InvalidImageError('Requested bitmap directory size is zero');
  if (b.bitmapDirectorySize > MAX_BITMAP_DIRECTORY_SIZE) throw new InvalidImageError('Requested bitmap directory size is too big');
  const dir = s.storage.read(b.bitmapDirectoryOffset, b.bitmapDirectorySize);
  const out: BitmapDirEntry[] = [];
  let pos = 0;
  while (pos < dir.length) {
    if (out.length + 1 > b.nbBitmaps) throw new InvalidImageError('More bitmaps found than specified in header extension');
    const e = decodeDirEntryAt(dir, pos);
    if (!e) throw new InvalidImageError('Broken bitmap directory');
    if (e.extraDataSize !== 0) throw new InvalidImageError('Bitmap extra data is not supported');
    if (!dirEntryValid(s, e)) throw new InvalidImageError(`Bitmap '${e.name}' doesn't satisfy the constraints`);
    out.push(e);
    pos += dirEntrySize(e.nameSize, e.extraDataSize);
  }
  if (out.length !== b.nbBitmaps) throw new InvalidImageError('Less bitmaps found than specified in header extension');
  return out;
}

/** check_dir_entry. A bitmap in use may have a table of the wrong size (left by an unsaved resize). */
function dirEntryValid(s: ImageState, e: Pick<BitmapDirEntry, 'bitmapTableOffset' | 'bitmapTableSize' | 'flags' | 'type' | 'granularityBits' | 'nameSize'>): boolean {
  const cs = s.clusterSize;
  if (
    e.bitmapTableSize === 0 ||
    e.bitmapTableOffset === 0 ||
    e.bitmapTableOffset % cs !== 0 ||
    e.bitmapTableSize > BITMAP_MAX_TABLE_SIZE ||
    e.granularityBits > BITMAP_MAX_GRANULARITY_BITS ||
    e.granularityBits < BITMAP_MIN_GRANULARITY_BITS ||
    (e.flags & BITMAP_RESERVED_FLAGS) !== 0 ||
    e.nameSize > BITMAP_MAX_NAME_SIZE ||
    e.type !== BITMAP_TYPE_DIRTY_TRACKING
  ) {
    return false;
  }
  const phys = e.bitmapTableSize * cs;
  if (phys > BITMAP_MAX_PHYS_SIZE) return false;
  return (e.flags & BITMAP_FLAG_IN_USE) !== 0 || s.virtualSize <= phys * 8 * 2 ** e.granularityBits;
}

/** bitmap_table_load: the entries, each checked (check_table_entry). */
export function loadBitmapTable(s: ImageState, offset: number, size: number): bigint[] {
  const raw = s.storage.read(offset, size * BITMAP_TABLE_ENTRY_SIZE);
  const v = viewOf(raw);
  const out: bigint[] = [];
  for (let i = 0; i < size; i++) {
    const e = getBig64(v, i * BITMAP_TABLE_ENTRY_SIZE);
    if (!bitmapTableEntryValid(e, s.clusterSize)) throw new InvalidImageError('bitmap table entry is invalid');
    out.push(e);
  }
  return out;
}

/** load_bitmap + load_bitmap_data for one entry; an entry in use is kept without its data. */
function loadOne(s: ImageState, e: BitmapDirEntry): DirtyBitmap {
  const bm: DirtyBitmap = {
    name: e.name,
    granularityBits: e.granularityBits,
    flags: e.flags,
    enabled: (e.flags & BITMAP_FLAG_AUTO) !== 0,
    inconsistent: (e.flags & BITMAP_FLAG_IN_USE) !== 0,
    table: { offset: e.bitmapTableOffset, size: e.bitmapTableSize },
    dataClusters: [],
    bits: new Uint8Array(0),
  };
  if (bm.inconsistent) return bm;
  const what = `Could not read bitmap_table table from image for bitmap '${e.name}'`;
  let table: bigint[];
  try {
    table = loadBitmapTable(s, e.bitmapTableOffset, e.bitmapTableSize);
  } catch (err) {
    if (err instanceof InvalidImageError) throw new InvalidImageError(`${what}: Invalid argument`);
    throw err;
  }
  if (table.length !== bitmapTableEntriesFor(s.virtualSize, 2 ** e.granularityBits, s.clusterSize)) {
    throw new InvalidImageError(`Could not read bitmap '${e.name}' from image: Invalid argument`);
  }
  bm.bits = new Uint8Array(bitsBytes(s.virtualSize, e.granularityBits));
  const perCluster = s.clusterSize;
  table.forEach((entry, i) => {
    const off = Number(entry & BITMAP_TABLE_OFFSET_MASK);
    bm.dataClusters.push(off);
    const at = i * perCluster;
    const n = Math.min(perCluster, bm.bits.length - at);
    if (n <= 0) return;
    if (off !== 0) bm.bits.set(s.storage.read(off, n), at);
    else if (entry & BITMAP_TABLE_ALL_ONES) bm.bits.fill(0xff, at, at + n);
  });
  clearTail(bm, s.virtualSize);
  return bm;
}

/** Bits past the last granule carry no meaning; keep them clear so comparisons and stores are exact. */
function clearTail(bm: DirtyBitmap, size: number): void {
  const granules = Math.ceil(size / 2 ** bm.granularityBits);
  if (granules % 8 !== 0 && bm.bits.length > 0) bm.bits[bm.bits.length - 1]! &= (1 << granules % 8) - 1;
}

/** Open: load the directory and the bitmaps into s.bitmaps (every open: QEMU refuses an untrustworthy directory). */
export function loadBitmaps(s: ImageState): void {
  s.bitmaps = new BitmapSet(s.virtualSize);
  if (!hasBitmapDirectory(s)) return;
  for (const e of loadBitmapList(s)) s.bitmaps.list.push(loadOne(s, e));
  s.bitmapDirectory = { offset: s.ext.bitmaps!.bitmapDirectoryOffset, size: s.ext.bitmaps!.bitmapDirectorySize };
  // The overlap map (overlap.ts): the directory, every table, the data clusters of the bitmaps loaded.
  s.meta.add(s.bitmapDirectory.offset, s.bitmapDirectory.size, MetaKind.BitmapDirectory);
  for (const b of s.bitmaps.list) recordBitmapClusters(s, b.table, b.dataClusters);
}

function recordBitmapClusters(s: ImageState, table: { offset: number; size: number }, dataClusters: number[]): void {
  if (table.size > 0) s.meta.add(table.offset, table.size * BITMAP_TABLE_ENTRY_SIZE, MetaKind.BitmapTable);
  for (const c of dataClusters) if (c !== 0) s.meta.add(c, s.clusterSize, MetaKind.BitmapData);
}

/** Writes bitmap metadata to freshly allocated clusters of the image file (never the data file), recording them. */
function writeNewBitmapMeta(s: ImageState, offset: number, data: Uint8Array, kind: MetaKind): void {
  s.claimNew(offset, data.length, kind);
  s.writeMeta(offset, data, kind);
}

/** Read-write open: mark every loaded bitmap in use in the file, before any write (update_ext_header_and_dir_in_place). */
export function markBitmapsInUse(s: ImageState): void {
  const set = s.bitmaps;
  if (!set || !s.bitmapDirectory || !set.list.some((b) => !b.inconsistent)) return;
  const entries = set.list.map((b) => ({ ...entryOf(b), flags: b.inconsistent ? b.flags : b.flags | BITMAP_FLAG_IN_USE }));
  const dir = encodeBitmapDirectory(entries);
  if (dir.length !== s.bitmapDirectory.size) throw new InvalidImageError("Can't update bitmap directory: Invalid argument");
  s.header.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
  s.writeHeader();
  s.barrier();
  // The autoclear bit is off while the directory changes in place: a torn write leaves bitmaps inconsistent, not wrong.
  s.writeMeta(s.bitmapDirectory.offset, dir, MetaKind.BitmapDirectory);
  s.barrier();
  s.header.autoclearFeatures |= AUTOCLEAR_BITMAPS;
  s.writeHeader();
  s.barrier();
}

function entryOf(b: DirtyBitmap): { bitmapTableOffset: number; bitmapTableSize: number; flags: number; granularityBits: number; name: string } {
  return { bitmapTableOffset: b.table.offset, bitmapTableSize: b.table.size, flags: b.flags, granularityBits: b.granularityBits, name: b.name };
}

/** True when close has bitmaps to write (bdrv_has_changed_persistent_bitmaps, or a removal to record). */
export function bitmapsNeedStore(s: ImageState): boolean {
  const set = s.bitmaps;
  return !!set && !s.readOnly && (set.list.some((b) => !b.inconsistent) || set.dropped.length > 0);
}

/** Close: store every consistent bitmap, switch the header to a new directory, free what the old one named. */
export function storeBitmaps(s: ImageState): void {
  const set = s.bitmaps!;
  for (const b of set.list) {
    if (b.inconsistent) continue;
    if (b.table.size > 0) set.dropped.push({ table: b.table, dataClusters: b.dataClusters });
    storeOne(s, b);
    b.flags = b.enabled ? BITMAP_FLAG_AUTO : 0;
  }
  const old = s.bitmapDirectory;
  if (set.list.length > 0) {
    const dir = encodeBitmapDirectory(set.list.map(entryOf));
    const off = s.refcounts.allocClusters(Math.ceil(dir.length / s.clusterSize));
    writeNewBitmapMeta(s, off, dir, MetaKind.BitmapDirectory);
    // qcow2_flush_caches: the new clusters are counted on disk before the header names them.
    s.flush();
    s.header.autoclearFeatures |= AUTOCLEAR_BITMAPS;
    s.ext.bitmaps = { nbBitmaps: set.list.length, reserved: 0, bitmapDirectorySize: dir.length, bitmapDirectoryOffset: off };
    s.bitmapDirectory = { offset: off, size: dir.length };
  } else {
    s.header.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
    s.ext.bitmaps = undefined;
    s.bitmapDirectory = undefined;
  }
  s.writeHeader();
  s.barrier();
  if (old) {
    s.meta.removeKind(old.offset, old.size, MetaKind.BitmapDirectory);
    s.refcounts.freeLater(old.offset, old.size);
  }
  for (const d of set.dropped.splice(0)) {
    for (const c of d.dataClusters) {
      if (c === 0) continue;
      s.meta.removeKind(c, s.clusterSize, MetaKind.BitmapData);
      s.refcounts.freeLater(c, s.clusterSize);
    }
    s.meta.removeKind(d.table.offset, d.table.size * BITMAP_TABLE_ENTRY_SIZE, MetaKind.BitmapTable);
    s.refcounts.freeLater(d.table.offset, d.table.size * BITMAP_TABLE_ENTRY_SIZE);
  }
  s.flush();
}

/** store_bitmap: data clusters for the bitmap clusters holding a set bit, then the table. */
function storeOne(s: ImageState, b: DirtyBitmap): void {
  const cs = s.clusterSize;
  const size = bitmapTableEntriesFor(s.virtualSize, 2 ** b.granularityBits, cs);
  if (size > BITMAP_MAX_TABLE_SIZE || size * cs > BITMAP_MAX_PHYS_SIZE) throw new InvalidImageError(`Bitmap '${b.name}' is too big`);
  const table = new Uint8Array(size * BITMAP_TABLE_ENTRY_SIZE);
  const tv = viewOf(table);
  const clusters: number[] = [];
  for (let i = 0; i < size; i++) {
    const slice = b.bits.subarray(i * cs, (i + 1) * cs);
    if (!slice.some((x) => x !== 0)) {
      clusters.push(0);
      continue;
    }
    const off = s.refcounts.allocClusters(1);
    const buf = new Uint8Array(cs);
    buf.set(slice);
    writeNewBitmapMeta(s, off, buf, MetaKind.BitmapData);
    setBig64(tv, i * BITMAP_TABLE_ENTRY_SIZE, BigInt(off));
    clusters.push(off);
  }
  const tOff = s.refcounts.allocClusters(Math.ceil(table.length / cs));
  writeNewBitmapMeta(s, tOff, table, MetaKind.BitmapTable);
  b.table = { offset: tOff, size };
  b.dataClusters = clusters;
}
