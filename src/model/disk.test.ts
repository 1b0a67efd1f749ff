import { describe, expect, it } from 'vitest';
import { DiskModel } from './disk.js';
import { ANY, SECTOR } from './layer.js';
import type { ImageConfig } from './types.js';

const base: ImageConfig = {
  size: 64 * 1024,
  clusterSize: 4096,
  refcountBits: 16,
  compat: '1.1',
  lazyRefcounts: false,
  extendedL2: false,
  compressionType: 'zlib',
};

const stamps = (m: DiskModel, off: number, len: number) => {
  const out: number[] = [];
  for (let s = off / SECTOR; s < (off + len) / SECTOR; s++) out.push(m.stampAt(m.active, s));
  return out;
};
const backing = (size: number, stamp = 1000) => ({
  format: 'raw' as const,
  size,
  sectors: new Map(Array.from({ length: size / SECTOR }, (_, i) => [i, stamp] as [number, number])),
});

describe('DiskModel guest I/O', () => {
  it('write then read back, zeros elsewhere', () => {
    const m = new DiskModel(base);
    m.write(512, 1024, 7);
    expect(stamps(m, 0, 2048)).toEqual([0, 7, 7, 0]);
  });

  it('write-zeroes zeroes at any alignment, over a backing file too', () => {
    const m = new DiskModel({ ...base, backing: backing(base.size) });
    expect(stamps(m, 0, 512)).toEqual([1000]);
    m.writeZeroes(512, 512);
    expect(stamps(m, 0, 1536)).toEqual([1000, 0, 1000]);
  });

  it('discard zeroes whole clusters only', () => {
    const m = new DiskModel(base);
    m.write(0, 16384, 3);
    m.discard(512, 8192); // covers cluster 1 whole, clusters 0 and 2 partly
    expect(stamps(m, 0, 4096).every((s) => s === 3)).toBe(true);
    expect(stamps(m, 4096, 4096).every((s) => s === 0)).toBe(true);
    expect(stamps(m, 8192, 4096).every((s) => s === 3)).toBe(true);
  });

  it('discard of the last partial cluster zeroes it only when the range reaches the end', () => {
    const m = new DiskModel({ ...base, size: 66 * 1024 });
    m.write(0, 66 * 1024, 4);
    m.discard(65536, 1024);
    expect(stamps(m, 65536, 2048)).toEqual([4, 4, 4, 4]);
    m.discard(65536 - 512, 2560); // whole last partial cluster, partial head
    expect(stamps(m, 65536 - 512, 2560)).toEqual([4, 0, 0, 0, 0]);
  });

  it('discard on v3 zeroes over a backing file; on v2 with backing it does nothing', () => {
    const v3 = new DiskModel({ ...base, backing: backing(base.size) });
    v3.discard(0, 4096);
    expect(stamps(v3, 0, 1024)).toEqual([0, 0]);
    const v2 = new DiskModel({ ...base, compat: '0.10', backing: backing(base.size) });
    v2.write(0, 512, 5);
    v2.discard(0, 4096);
    expect(stamps(v2, 0, 1024)).toEqual([5, 1000]);
    const v2plain = new DiskModel({ ...base, compat: '0.10' });
    v2plain.write(0, 4096, 5);
    v2plain.discard(0, 4096);
    expect(stamps(v2plain, 0, 1024)).toEqual([0, 0]);
  });

  it('extended L2: a subcluster discard does nothing, a whole cluster discard zeroes', () => {
    const m = new DiskModel({ ...base, clusterSize: 32768, extendedL2: true });
    m.write(0, 32768, 9);
    m.discard(0, 1024);
    expect(stamps(m, 0, 1024)).toEqual([9, 9]);
    m.discard(0, 32768);
    expect(stamps(m, 0, 1024)).toEqual([0, 0]);
  });

  it('compressed writes: whole clusters only, certain only over unallocated clusters', () => {
    const m = new DiskModel({ ...base, size: 66 * 1024 });
    expect(m.expectWriteCompressed(0, 4096).verdict).toBe('ok');
    expect(m.expectWriteCompressed(512, 4096).verdict).toBe('refuse');
    expect(m.expectWriteCompressed(0, 8192).verdict).toBe('refuse');
    expect(m.expectWriteCompressed(65536, 2048).verdict).toBe('ok');
    m.write(0, 512, 1);
    expect(m.expectWriteCompressed(0, 4096).verdict).toBe('either');
    m.discard(0, 4096);
    expect(m.expectWriteCompressed(0, 4096).verdict).toBe('ok');
  });

  it('ranges past the end are refused', () => {
    const m = new DiskModel(base);
    expect(m.expectWrite(base.size - 512, 1024).verdict).toBe('refuse');
    expect(m.expectDiscard(0, base.size).verdict).toBe('ok');
  });
});

describe('DiskModel snapshots', () => {
  it('create keeps content and size; apply restores both; delete leaves others', () => {
    const m = new DiskModel(base);
    m.write(0, 512, 1);
    m.snapshotCreate('a');
    m.write(0, 512, 2);
    m.resize(128 * 1024);
    m.snapshotCreate('b');
    expect(m.snapshots).toEqual([
      { id: '1', name: 'a' },
      { id: '2', name: 'b' },
    ]);
    m.snapshotApply('a');
    expect(m.size).toBe(base.size);
    expect(stamps(m, 0, 512)).toEqual([1]);
    m.snapshotDelete('a');
    m.snapshotApply('b');
    expect(m.size).toBe(128 * 1024);
    expect(stamps(m, 0, 512)).toEqual([2]);
  });

  it('ids are max+1, names may repeat and resolve to the first match', () => {
    const m = new DiskModel(base);
    m.snapshotCreate('a');
    m.write(0, 512, 5);
    m.snapshotCreate('a');
    m.snapshotApply('a');
    expect(stamps(m, 0, 512)).toEqual([0]);
    m.snapshotApply('2');
    expect(stamps(m, 0, 512)).toEqual([5]);
    expect(m.expectSnapshotDelete('1').verdict).toBe('either');
    m.snapshotDelete('1');
    m.snapshotCreate('c');
    expect(m.snapshots.map((s) => s.id)).toEqual(['2', '3']);
    expect(m.expectSnapshotApply('zz').verdict).toBe('refuse');
  });
});

describe('DiskModel amend and resize', () => {
  it('amend verdicts follow qemu-img', () => {
    const m = new DiskModel(base);
    expect(m.expectAmendRefcountBits(1).verdict).toBe('ok');
    m.snapshotCreate('a');
    expect(m.expectAmendRefcountBits(1).verdict).toBe('either');
    expect(m.expectAmendRefcountBits(2).verdict).toBe('ok');
    m.amendRefcountBits(2);
    m.snapshotCreate('b');
    expect(m.expectSnapshotApply('a').verdict).toBe('either'); // 3 references + 1 while applying
    m.amendRefcountBits(16);
    expect(m.expectAmendRefcountBits(3).verdict).toBe('refuse');
    m.amendRefcountBits(8);
    expect(m.expectAmendCompat('0.10').verdict).toBe('refuse');
    m.amendRefcountBits(16);
    m.amendLazyRefcounts(true);
    expect(m.expectAmendCompat('0.10').verdict).toBe('ok');
    m.amendCompat('0.10');
    expect(m.meta.lazyRefcounts).toBe(false);
    expect(m.expectAmendLazyRefcounts(true).verdict).toBe('refuse');
    expect(m.expectAmendRefcountBits(8).verdict).toBe('refuse');
    const x = new DiskModel({ ...base, clusterSize: 16384, extendedL2: true });
    expect(x.expectAmendCompat('0.10').verdict).toBe('refuse');
    const c = new DiskModel(base);
    c.writeCompressed(0, 4096, 1); // compressed clusters share host clusters: refcounts > 1 without snapshots
    expect(c.expectAmendRefcountBits(1).verdict).toBe('either');
    const d = new DiskModel(base);
    d.snapshotCreate('a');
    d.resize(2 * base.size);
    expect(d.expectAmendCompat('0.10').verdict).toBe('refuse'); // a snapshot of another size
    const z = new DiskModel({ ...base, compressionType: 'zstd' });
    expect(z.expectAmendCompat('0.10').verdict).toBe('ok');
    z.writeCompressed(0, 4096, 1);
    expect(z.expectAmendCompat('0.10').verdict).toBe('either');
  });

  it('resize: shrink needs --shrink, v2 with snapshots or a showing backing refuses', () => {
    const m = new DiskModel(base);
    expect(m.expectResize(32768, false).verdict).toBe('refuse');
    expect(m.expectResize(32768, true).verdict).toBe('ok');
    const v2 = new DiskModel({ ...base, compat: '0.10' });
    v2.snapshotCreate('a');
    expect(v2.expectResize(2 * base.size, false).verdict).toBe('refuse');
    expect(v2.expectResize(base.size, true).verdict).toBe('refuse'); // even to the same size
    const v2b = new DiskModel({ ...base, compat: '0.10', backing: backing(2 * base.size) });
    expect(v2b.expectResize(2 * base.size, false).verdict).toBe('refuse');
    const v2u = new DiskModel({ ...base, size: base.size - 512, compat: '0.10', backing: backing(2 * base.size) });
    expect(v2u.expectResize(base.size, false).verdict).toBe('ok'); // only the old last cluster's tail
    expect(v2u.expectResize(base.size + 512, false).verdict).toBe('refuse');
    const v2s = new DiskModel({ ...base, compat: '0.10', backing: backing(base.size / 2) });
    expect(v2s.expectResize(2 * base.size, false).verdict).toBe('ok');
  });

  it('grown area reads zeros, never the backing file; the shrunk tail is gone', () => {
    const m = new DiskModel({ ...base, backing: backing(2 * base.size) });
    m.write(0, base.size, 3);
    m.resize(32768);
    m.resize(2 * base.size);
    expect(stamps(m, 32768 - 512, 1024)).toEqual([3, 0]);
    expect(stamps(m, base.size, 512)).toEqual([0]);
  });

  it('growing from an unaligned size: zeros by the table, unspecified when mirroring QEMU', () => {
    const strict = new DiskModel(base);
    strict.write(0, base.size, 3);
    strict.resize(62 * 1024);
    strict.resize(base.size);
    expect(stamps(strict, 62 * 1024 - 512, 1024)).toEqual([3, 0]);
    const m = new DiskModel(base, { regrowTail: 'unspecified' });
    m.write(0, base.size, 3);
    m.resize(62 * 1024);
    m.resize(base.size);
    expect(stamps(m, 62 * 1024 - 512, 2560)).toEqual([3, ANY, ANY, ANY, ANY]);
    m.write(63 * 1024, 512, 4);
    expect(stamps(m, 63 * 1024, 1024)).toEqual([4, ANY]);
  });
});
