/**
 * The persistent dirty bitmaps of an open image, in memory (QEMU's
 * BdrvDirtyBitmap list plus the Qcow2Bitmap directory list of
 * block/qcow2-bitmap.c). One bit per granule, bit k of byte k>>3 for
 * granule k: the order qcow2.txt "Bitmap data" gives (hbitmap's
 * little-endian serialization), so a cluster of the file is a slice of
 * `bits`.
 */

export interface DirtyBitmap {
  name: string;
  granularityBits: number;
  /** Directory flags as loaded (in_use and auto); rewritten only for consistent bitmaps. */
  flags: number;
  /** The AUTO flag: an enabled bitmap records every guest change. */
  enabled: boolean;
  /**
   * in_use was already set when the image was opened: the data is unusable,
   * and QEMU keeps the entry, its table and clusters exactly as they are
   * (bdrv_dirty_bitmap_set_inconsistent) until the bitmap is removed.
   */
  inconsistent: boolean;
  /** The bitmap table the directory names now (0/0 for a bitmap added in this session). */
  table: { offset: number; size: number };
  /** Data cluster offsets of that table (0 for none), kept to free them after a store. */
  dataClusters: number[];
  /** One bit per granule of the virtual disk; empty for an inconsistent bitmap. */
  bits: Uint8Array;
}

export class BitmapSet {
  readonly list: DirtyBitmap[] = [];
  /** Tables (and their data clusters) to free once a new directory no longer names them. */
  readonly dropped: { table: { offset: number; size: number }; dataClusters: number[] }[] = [];

  constructor(public diskSize: number) {}

  find(name: string): DirtyBitmap | undefined {
    return this.list.find((b) => b.name === name);
  }

  /** Sets the granules covering [offset, offset+length) in every enabled bitmap (bdrv_set_dirty). */
  markDirty(offset: number, length: number): void {
    if (length <= 0) return;
    for (const b of this.list) {
      if (b.enabled && !b.inconsistent) setRange(b, offset, length);
    }
  }

  /** Resizes every consistent bitmap; granules past a shrunken end are dropped (hbitmap_truncate). */
  resize(size: number): void {
    this.diskSize = size;
    for (const b of this.list) {
      if (b.inconsistent) continue;
      const fresh = new Uint8Array(bitsBytes(size, b.granularityBits));
      fresh.set(b.bits.subarray(0, Math.min(fresh.length, b.bits.length)));
      const granules = Math.ceil(size / 2 ** b.granularityBits);
      // Bits of the last byte past the end stay clear, so a later grow starts clean.
      if (granules % 8 !== 0 && fresh.length > 0) fresh[fresh.length - 1]! &= (1 << granules % 8) - 1;
      b.bits = fresh;
    }
  }

  /** Guest byte ranges whose granules are set, merged, as [offset, length]. */
  static dirtyRanges(b: DirtyBitmap, diskSize: number): [number, number][] {
    const g = 2 ** b.granularityBits;
    const granules = Math.ceil(diskSize / g);
    const out: [number, number][] = [];
    let start = -1;
    for (let k = 0; k <= granules; k++) {
      const set = k < granules && getBit(b.bits, k);
      if (set && start < 0) start = k;
      if (!set && start >= 0) {
        out.push([start * g, Math.min(k * g, diskSize) - start * g]);
        start = -1;
      }
    }
    return out;
  }
}

export function bitsBytes(size: number, granularityBits: number): number {
  return Math.ceil(Math.ceil(size / 2 ** granularityBits) / 8);
}

/** Sets the granules covering [offset, offset+length) of one bitmap. */
export function setRange(b: DirtyBitmap, offset: number, length: number): void {
  const first = Math.floor(offset / 2 ** b.granularityBits);
  const last = Math.floor((offset + length - 1) / 2 ** b.granularityBits);
  let k = first;
  for (; k <= last && k % 8 !== 0; k++) setBit(b.bits, k);
  // Whole bytes at once: a write-zeroes over a large disk covers millions of granules.
  const wholeEnd = Math.floor((last + 1) / 8) * 8;
  if (k < wholeEnd) {
    b.bits.fill(0xff, k / 8, wholeEnd / 8);
    k = wholeEnd;
  }
  for (; k <= last; k++) setBit(b.bits, k);
}

/** Granule numbers can pass 2^31 (512 MiB of bitmap data), so no 32-bit shifts on them. */
export function setBit(bits: Uint8Array, k: number): void {
  bits[Math.floor(k / 8)]! |= 1 << k % 8;
}

export function getBit(bits: Uint8Array, k: number): boolean {
  return ((bits[Math.floor(k / 8)]! >> k % 8) & 1) === 1;
}
