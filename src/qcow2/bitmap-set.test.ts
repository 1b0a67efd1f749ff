import { describe, expect, it } from 'vitest';
import { BitmapSet, getBit, setRange, type DirtyBitmap } from './bitmap-set.js';
import { decodeBitmapDirectory, encodeBitmapDirectory, bitmapTableEntriesFor, bitmapTableEntryValid } from './format/bitmaps.js';

function bitmap(size: number, granularityBits: number, enabled = true): DirtyBitmap {
  return {
    name: 'b',
    granularityBits,
    flags: 0,
    enabled,
    inconsistent: false,
    table: { offset: 0, size: 0 },
    dataClusters: [],
    bits: new Uint8Array(Math.ceil(Math.ceil(size / 2 ** granularityBits) / 8)),
  };
}

describe('BitmapSet', () => {
  it('sets exactly the granules a byte range touches, across byte boundaries', () => {
    for (const [off, len] of [
      [0, 1],
      [511, 2],
      [512 * 7, 512 * 3],
      [512 * 5, 512 * 40],
      [100, 512 * 64],
    ] as const) {
      const b = bitmap(512 * 100, 9);
      setRange(b, off, len);
      const want = new Set<number>();
      for (let k = Math.floor(off / 512); k <= Math.floor((off + len - 1) / 512); k++) want.add(k);
      for (let k = 0; k < 100; k++) expect(getBit(b.bits, k), `granule ${k} for ${off}+${len}`).toBe(want.has(k));
    }
  });

  it('marks enabled bitmaps only, and a resize drops granules past the end and adds clean ones', () => {
    const set = new BitmapSet(1 << 20);
    const on = bitmap(1 << 20, 16);
    const off = { ...bitmap(1 << 20, 16, false), name: 'off' };
    set.list.push(on, off);
    set.markDirty((1 << 20) - 1, 1);
    set.markDirty(0, 70000);
    expect(BitmapSet.dirtyRanges(on, 1 << 20)).toEqual([
      [0, 131072],
      [(1 << 20) - 65536, 65536],
    ]);
    expect(BitmapSet.dirtyRanges(off, 1 << 20)).toEqual([]);
    set.resize(100000);
    set.resize(1 << 21);
    expect(BitmapSet.dirtyRanges(on, 1 << 21)).toEqual([[0, 131072]]);
  });
});

describe('bitmap directory and table entries', () => {
  it('round-trip a directory as QEMU lays it out (8-byte aligned entries)', () => {
    const entries = [
      { bitmapTableOffset: 0x30000, bitmapTableSize: 1, flags: 3, granularityBits: 16, name: 'b0' },
      { bitmapTableOffset: 0x50000, bitmapTableSize: 2, flags: 0, granularityBits: 9, name: 'a-longer-name' },
    ];
    const buf = encodeBitmapDirectory(entries);
    expect(buf.length).toBe(32 + 40);
    expect(decodeBitmapDirectory(buf, 2)).toEqual(entries.map((e) => ({ ...e, type: 1, nameSize: e.name.length, extraDataSize: 0 })));
  });

  it('check entries as check_table_entry, and size tables as QEMU does', () => {
    expect(bitmapTableEntryValid(0n, 65536)).toBe(true);
    expect(bitmapTableEntryValid(1n, 65536)).toBe(true);
    expect(bitmapTableEntryValid(0x10000n, 65536)).toBe(true);
    expect(bitmapTableEntryValid(0x10001n, 65536)).toBe(false);
    expect(bitmapTableEntryValid(0x10200n, 65536)).toBe(false);
    expect(bitmapTableEntryValid(2n, 65536)).toBe(false);
    expect(bitmapTableEntryValid(1n << 60n, 65536)).toBe(false);
    expect(bitmapTableEntriesFor(4 << 20, 512, 65536)).toBe(1);
    expect(bitmapTableEntriesFor(2 ** 40, 512, 65536)).toBe(2 ** 40 / 512 / 8 / 65536);
  });
});
