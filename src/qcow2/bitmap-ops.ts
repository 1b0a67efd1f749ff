/**
 * What `qemu-img bitmap` and the harness do to persistent bitmaps of an
 * open image, with QEMU's checks and messages (blockdev.c
 * qmp_block_dirty_bitmap_*, block/dirty-bitmap.c, qcow2-bitmap.c
 * qcow2_co_can_store_new_dirty_bitmap). Changes stay in memory; close
 * stores them (bitmaps.ts), as QEMU stores bitmaps on close.
 */
import { BitmapSet, bitsBytes, setRange, type DirtyBitmap } from './bitmap-set.js';
import { InvalidArgumentError, UnsupportedFeatureError } from './errors.js';
import {
  BITMAP_FLAG_AUTO,
  BITMAP_MAX_GRANULARITY_BITS,
  BITMAP_MAX_NAME_SIZE,
  BITMAP_MAX_PHYS_SIZE,
  BITMAP_MAX_TABLE_SIZE,
  BITMAP_MIN_GRANULARITY_BITS,
  BITMAP_TABLE_OFFSET_MASK,
  MAX_BITMAPS,
  MAX_BITMAP_DIRECTORY_SIZE,
  bitmapBytesNeeded,
  bitmapTableEntryValid,
  dirEntrySize,
} from './format/bitmaps.js';
import { encodeString, getBig64, viewOf } from './format/bytes.js';
import { BITMAP_TABLE_ENTRY_SIZE } from './format/constants.js';
import type { ImageState } from './state.js';

export type BitmapOp =
  /** imageName: how the refusal to make it persistent names the image (qemu-img: the node). */
  | { op: 'add'; name: string; granularity?: number; disabled?: boolean; imageName?: string }
  | { op: 'remove' | 'clear' | 'enable' | 'disable'; name: string }
  /** Merge a source bitmap (one of this image's, by name, or a view of another image's) into the target. */
  | { op: 'merge'; name: string; source: BitmapView | string };

/** A bitmap as its users see it (qemu-img info plus the dirty ranges qemu-nbd would export). */
export interface BitmapView {
  name: string;
  granularity: number;
  enabled: boolean;
  inconsistent: boolean;
  /** Size of the disk the bitmap covers. */
  size: number;
  /** Dirty guest byte ranges, merged, [offset, length]; empty for an inconsistent bitmap. */
  dirty: [number, number][];
}

/** bdrv_get_default_bitmap_granularity: the cluster size, at least 4 KiB, at most 64 KiB. */
export function defaultGranularity(s: ImageState): number {
  return Math.min(Math.max(4096, s.clusterSize), 65536);
}

function set(s: ImageState): BitmapSet {
  return s.bitmaps!;
}

function found(s: ImageState, name: string): DirtyBitmap {
  const b = set(s).find(name);
  if (!b) throw new InvalidArgumentError(`Dirty bitmap '${name}' not found`);
  return b;
}

/** bdrv_dirty_bitmap_check with BDRV_BITMAP_INCONSISTENT (QEMU's text, its second line joined on). */
function usable(b: DirtyBitmap): DirtyBitmap {
  if (b.inconsistent) {
    throw new InvalidArgumentError(
      `Bitmap '${b.name}' is inconsistent and cannot be used. Try block-dirty-bitmap-remove to delete this bitmap from disk`,
    );
  }
  return b;
}

export function applyBitmapOp(s: ImageState, o: BitmapOp): void {
  s.assertWritable();
  switch (o.op) {
    case 'add':
      return addBitmap(s, o.name, o.granularity ?? defaultGranularity(s), o.disabled ?? false, o.imageName ?? 'the image');
    case 'remove':
      return removeBitmap(s, o.name);
    case 'clear':
      usable(found(s, o.name)).bits.fill(0);
      return;
    case 'enable':
    case 'disable':
      usable(found(s, o.name)).enabled = o.op === 'enable';
      return;
    case 'merge':
      return mergeBitmap(s, o.name, typeof o.source === 'string' ? bitmapView(s, found(s, o.source)) : o.source);
  }
}

/** qmp_block_dirty_bitmap_add with persistent=on, then qcow2_co_can_store_new_dirty_bitmap. */
function addBitmap(s: ImageState, name: string, granularity: number, disabled: boolean, imageName: string): void {
  if (name.length === 0) throw new InvalidArgumentError('Bitmap name cannot be empty');
  if (set(s).find(name)) throw new InvalidArgumentError(`Bitmap already exists: ${name}`);
  if (!Number.isInteger(granularity) || granularity < 512 || granularity > 2 ** 31 || (granularity & (granularity - 1)) !== 0) {
    throw new InvalidArgumentError('Granularity must be power of 2 and at least 512');
  }
  const nameBytes = encodeString(name).length;
  if (nameBytes > BITMAP_MAX_NAME_SIZE) throw new InvalidArgumentError('Bitmap name is too long');
  const why = storeRefusal(s, granularity, nameBytes);
  if (why) throw new UnsupportedFeatureError(`Can't make bitmap '${name}' persistent in '${imageName}': ${why}`);
  const granularityBits = Math.log2(granularity);
  set(s).list.push({
    name,
    granularityBits,
    flags: disabled ? 0 : BITMAP_FLAG_AUTO,
    enabled: !disabled,
    inconsistent: false,
    table: { offset: 0, size: 0 },
    dataClusters: [],
    bits: new Uint8Array(bitsBytes(s.virtualSize, granularityBits)),
  });
}

/** qcow2_co_can_store_new_dirty_bitmap: why a new bitmap could not be stored, if it could not. */
function storeRefusal(s: ImageState, granularity: number, nameBytes: number): string | undefined {
  if (s.version < 3) return 'Cannot store dirty bitmaps in qcow2 v2 files';
  const bits = Math.log2(granularity);
  if (bits > BITMAP_MAX_GRANULARITY_BITS) return `Granularity exceeds maximum (${2 ** BITMAP_MAX_GRANULARITY_BITS} bytes)`;
  if (bits < BITMAP_MIN_GRANULARITY_BITS) return `Granularity is under minimum (${2 ** BITMAP_MIN_GRANULARITY_BITS} bytes)`;
  const bytes = bitmapBytesNeeded(s.virtualSize, granularity);
  if (bytes > BITMAP_MAX_PHYS_SIZE || bytes > BITMAP_MAX_TABLE_SIZE * s.clusterSize) {
    return 'Too much space will be occupied by the bitmap. Use larger granularity';
  }
  const list = set(s).list;
  if (list.length >= MAX_BITMAPS) return 'Maximum number of persistent bitmaps is already reached';
  const dir = list.reduce((n, b) => n + dirEntrySize(encodeString(b.name).length, 0), 0);
  if (dir + dirEntrySize(nameBytes, 0) > MAX_BITMAP_DIRECTORY_SIZE) return 'Not enough space in the bitmap directory';
  return undefined;
}

/** qmp_block_dirty_bitmap_remove: gone from the directory at close, its clusters freed (free_bitmap_clusters). */
function removeBitmap(s: ImageState, name: string): void {
  const bs = set(s);
  const b = found(s, name);
  bs.list.splice(bs.list.indexOf(b), 1);
  if (b.table.size === 0) return;
  let clusters = b.dataClusters;
  if (b.inconsistent) {
    // Its table was never loaded; QEMU reads it now and frees nothing if it cannot (a leak, never a wrong free).
    const raw = s.storage.read(b.table.offset, b.table.size * BITMAP_TABLE_ENTRY_SIZE);
    const v = viewOf(raw);
    clusters = [];
    for (let i = 0; i < b.table.size; i++) {
      const e = getBig64(v, i * BITMAP_TABLE_ENTRY_SIZE);
      if (!bitmapTableEntryValid(e, s.clusterSize)) return;
      clusters.push(Number(e & BITMAP_TABLE_OFFSET_MASK));
    }
  }
  bs.dropped.push({ table: b.table, dataClusters: clusters });
}

/** bdrv_merge_dirty_bitmap: every source range sets the target granules it touches. */
function mergeBitmap(s: ImageState, name: string, src: BitmapView): void {
  const dst = usable(found(s, name));
  if (src.inconsistent) {
    throw new InvalidArgumentError(
      `Bitmap '${src.name}' is inconsistent and cannot be used. Try block-dirty-bitmap-remove to delete this bitmap from disk`,
    );
  }
  if (src.size !== s.virtualSize) {
    throw new InvalidArgumentError(
      `Bitmaps are of different sizes (destination size is ${s.virtualSize}, source size is ${src.size}) and can't be merged`,
    );
  }
  for (const [off, len] of src.dirty) setRange(dst, off, len);
}

export function bitmapView(s: ImageState, b: DirtyBitmap): BitmapView {
  return {
    name: b.name,
    granularity: 2 ** b.granularityBits,
    enabled: b.enabled,
    inconsistent: b.inconsistent,
    size: s.virtualSize,
    dirty: b.inconsistent ? [] : BitmapSet.dirtyRanges(b, s.virtualSize),
  };
}

/** qcow2_truncate_bitmaps_check: a bitmap in use since open cannot be resized. */
export function assertBitmapsResizable(s: ImageState): void {
  for (const b of s.bitmaps?.list ?? []) usable(b);
}
