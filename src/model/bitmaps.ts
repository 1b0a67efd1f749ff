/**
 * The model's persistent dirty bitmaps: per bitmap the set of dirty
 * granules, kept exact. QEMU sets, for every write, write-zeroes, discard
 * or compressed write, exactly the granules the request's byte range
 * touches (bdrv_set_dirty in bdrv_co_write_req_finish), in every enabled
 * bitmap; a resize keeps the granules below the new end and adds clean
 * ones (hbitmap_truncate); nothing else dirties a bitmap.
 */
import type { Expectation } from './types.js';

export interface ModelBitmap {
  name: string;
  granularity: number;
  enabled: boolean;
  dirty: Set<number>;
}

export type ModelBitmapAction =
  | { action: 'add'; name: string; granularity: number; disabled: boolean }
  | { action: 'remove' | 'clear' | 'enable' | 'disable'; name: string }
  | { action: 'merge'; name: string; source: string };

const refuse = (reason: string): Expectation => ({ verdict: 'refuse', reason });

export class ModelBitmaps {
  readonly list: ModelBitmap[] = [];

  find(name: string): ModelBitmap | undefined {
    return this.list.find((b) => b.name === name);
  }

  /** QEMU's refusals (qmp_block_dirty_bitmap_*; the harness never makes a bitmap inconsistent). */
  expect(a: ModelBitmapAction, version: 2 | 3): Expectation {
    if (a.action === 'add') {
      if (this.find(a.name)) return refuse(`Bitmap already exists: ${a.name}`);
      if (a.granularity < 512 || a.granularity > 2 ** 31 || (a.granularity & (a.granularity - 1)) !== 0) {
        return refuse('Granularity must be power of 2 and at least 512');
      }
      if (version < 3) return refuse('Cannot store dirty bitmaps in qcow2 v2 files');
      return { verdict: 'ok' };
    }
    if (!this.find(a.name)) return refuse(`Dirty bitmap '${a.name}' not found`);
    if (a.action === 'merge' && !this.find(a.source)) return refuse(`Dirty bitmap '${a.source}' not found`);
    return { verdict: 'ok' };
  }

  apply(a: ModelBitmapAction): void {
    if (a.action === 'add') {
      this.list.push({ name: a.name, granularity: a.granularity, enabled: !a.disabled, dirty: new Set() });
      return;
    }
    const b = this.find(a.name)!;
    if (a.action === 'remove') this.list.splice(this.list.indexOf(b), 1);
    else if (a.action === 'clear') b.dirty.clear();
    else if (a.action === 'enable' || a.action === 'disable') b.enabled = a.action === 'enable';
    else if (a.action === 'merge') {
      // A source granule sets every target granule its bytes touch (hbitmap_merge across granularities).
      const src = this.find(a.source)!;
      for (const k of src.dirty) markRange(b, k * src.granularity, src.granularity);
    }
  }

  /** A guest change of [off, off+len). */
  markDirty(off: number, len: number): void {
    if (len <= 0) return;
    for (const b of this.list) if (b.enabled) markRange(b, off, len);
  }

  resize(size: number): void {
    for (const b of this.list) {
      const granules = Math.ceil(size / b.granularity);
      for (const k of b.dirty) if (k >= granules) b.dirty.delete(k);
    }
  }

  /** Dirty guest ranges of a bitmap, merged, [offset, length], cut at the disk end (as qemu-nbd exports them). */
  static ranges(b: ModelBitmap, size: number): [number, number][] {
    const out: [number, number][] = [];
    for (const k of [...b.dirty].sort((x, y) => x - y)) {
      const start = k * b.granularity;
      const len = Math.min(b.granularity, size - start);
      const last = out[out.length - 1];
      if (last && last[0] + last[1] === start) last[1] += len;
      else out.push([start, len]);
    }
    return out;
  }
}

function markRange(b: ModelBitmap, off: number, len: number): void {
  for (let k = Math.floor(off / b.granularity); k <= Math.floor((off + len - 1) / b.granularity); k++) b.dirty.add(k);
}
