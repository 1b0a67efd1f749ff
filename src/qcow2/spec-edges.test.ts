/**
 * Spec edge cases a QEMU block-layer maintainer would try, with the real
 * qemu-img/qemu-io on both sides: images qemu wrote read by us, images we
 * wrote judged by qemu-img check/compare, and the same operations done by
 * qemu-io on a twin image as the reference for what the result must be.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { firstDiff, Lcg } from '../../tests/support/bytes.js';
import { qemuCheck, qemuCompare, qemuMap, qemuRaw } from '../../tests/support/qemu.js';
import { CorruptImageError, Qcow2Error, UnsupportedFeatureError } from './errors.js';
import { decodeCompressed } from './format/entries.js';
import { Qcow2Image } from './image.js';
import { createQcow2File, openQcow2File } from './open-file.js';
import { MemoryStorage } from './storage/memory.js';
import { edgeTools, KiB, MiB, OFFSET_MASK } from '../../tests/support/spec-edges.js';

const { dir, p, run, qemuImg, qemuIo, expectClean, expectSameBytes, ourRead, data, readU64, writeU64, l2Offset } = edgeTools('qcow2-spec-edges-');

describe('v2 image with the zero flag written by hand', () => {
  it('qemu refuses to read such clusters (EIO, "Zero cluster entry found in pre-v3 image"); so must we', () => {
    const f = p('v2zero.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', f, '1M');
    qemuIo(f, ['write -P 0xab 0 64k', 'write -P 0xcd 64k 64k']);
    const l2 = l2Offset(f, 0);
    writeU64(f, l2, readU64(f, l2) | 1n); // allocated cluster + zero flag
    writeU64(f, l2 + 16, 1n); // unallocated + zero flag
    // What qemu does: EIO on both entries, the untouched cluster reads fine.
    const q0 = run('qemu-io', ['-r', '-c', 'read -P 0xab 0 64k', f]);
    expect(q0.stdout + q0.stderr).toMatch(/Input\/output error/);
    const q1 = run('qemu-io', ['-r', '-c', 'read -P 0xcd 64k 64k', f]);
    expect(q1.stdout + q1.stderr).not.toMatch(/error|fail/i);
    const img = openQcow2File(f, { readOnly: true });
    try {
      expect(Array.from(new Set(img.read(64 * KiB, 64 * KiB)))).toEqual([0xcd]);
      expect(() => img.read(0, 64 * KiB)).toThrow(CorruptImageError);
      expect(() => img.read(128 * KiB, 512)).toThrow(CorruptImageError);
    } finally {
      img.close();
    }
  });
});

describe('compressed clusters', () => {
  it('qemu-io write -c at the last partial cluster: we read what qemu reads', async () => {
    for (const [cs, size] of [
      [65536, MiB + 1536],
      [4096, 100 * 4096 + 512],
      [512, 64 * 512],
    ] as const) {
      const f = p(`lastc-${cs}.qcow2`);
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, f, String(size));
      const last = Math.floor((size - 1) / cs) * cs;
      qemuIo(f, [`write -c -P 0x5a ${last} ${size - last}`, `write -c -P 0x11 0 ${cs}`]);
      expectSameBytes(ourRead(f), await qemuRaw(f), `cluster ${cs}`);
    }
  });

  it('we write -c at the last partial cluster: qemu reads it back, check is clean', async () => {
    const f = p('ours-lastc.qcow2');
    const size = MiB + 1536;
    const img = createQcow2File(f, { size });
    const tail = data(1536, 7, 0.3);
    img.writeCompressed(MiB, tail);
    img.close();
    const raw = await qemuRaw(f);
    expectSameBytes(raw.subarray(MiB), tail, 'tail');
    expect(raw.subarray(0, MiB).every((b) => b === 0)).toBe(true);
    await expectClean(f);
  });

  for (const compression of ['zlib', 'zstd'] as const) {
    it(`${compression}: compressed clusters straddling host cluster boundaries written by qemu are read exactly`, async () => {
      const cs = 4096;
      const n = 64;
      // Four zero clusters at the end stay unallocated for qemu-io's compressed writes below.
      const src = new Uint8Array(cs * (n + 4));
      src.set(data(cs * n, 99, 0.55));
      const rawFile = p(`straddle-${compression}.raw`);
      fs.writeFileSync(rawFile, src);
      const f = p(`straddle-${compression}.qcow2`);
      qemuImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${cs},compression_type=${compression}`, rawFile, f);
      // qemu-io compressed writes of pattern data in between, packed after the others.
      qemuIo(f, [`write -c -P 0x21 ${n * cs} 4k`, `write -c -P 0x22 ${(n + 2) * cs} 4k`]);
      // Make sure the case is exercised: some descriptor crosses a host cluster boundary.
      const l2 = l2Offset(f, 0);
      let crossing = 0;
      for (let i = 0; i < n; i++) {
        const e = readU64(f, l2 + i * 8);
        if (!(e & (1n << 62n))) continue;
        const { offset, size } = decodeCompressed(Number(e >> 32n), Number(e & 0xffff_ffffn), Math.log2(cs));
        if (Math.floor(offset / cs) !== Math.floor((offset + size - 1) / cs)) crossing++;
      }
      expect(crossing).toBeGreaterThan(5);
      expectSameBytes(ourRead(f), await qemuRaw(f), 'guest view');
    });
  }

  it('many compressed clusters written by us pack across host clusters; qemu reads them and check is clean', async () => {
    const cs = 4096;
    const n = 80;
    const f = p('ours-packed.qcow2');
    const img = createQcow2File(f, { size: cs * n + 3 * 512, clusterSize: cs });
    const model = new Uint8Array(img.virtualSize);
    for (let i = 0; i < n; i++) {
      const d = data(cs, 1000 + i, 0.2 + (i % 5) * 0.1);
      img.writeCompressed(i * cs, d);
      model.set(d, i * cs);
    }
    const tail = data(3 * 512, 5, 0.3);
    img.writeCompressed(n * cs, tail);
    model.set(tail, n * cs);
    // Overwrite a few compressed clusters partially: COW out of compressed data.
    const patch = data(700, 3, 1);
    img.write(5 * cs + 1000, patch);
    model.set(patch, 5 * cs + 1000);
    img.close();
    expectSameBytes(await qemuRaw(f), model, 'guest view');
    await expectClean(f);
  });
});

describe('extended L2: subcluster-granular operations, ours vs qemu-io on a twin', () => {
  // 64 KiB clusters, 2 KiB subclusters.
  const sc = 2 * KiB;
  const setup = [
    `write -P 0x01 0 ${sc}`,
    `write -P 0x02 ${3 * sc} ${3 * sc}`,
    'write -P 0x03 64k 64k',
    `write -z ${128 * KiB + 4 * sc} ${2 * sc}`,
    `write -P 0x04 ${192 * KiB + 31 * sc} ${sc}`,
    'write -c -P 0x05 256k 64k',
  ];
  type Op = { ours: (img: Qcow2Image) => void; qemu: string };
  const w = (off: number, len: number, pat: number): Op => ({
    ours: (img) => img.write(off, new Uint8Array(len).fill(pat)),
    qemu: `write -P ${pat} ${off} ${len}`,
  });
  const z = (off: number, len: number, unmap = false): Op => ({
    ours: (img) => img.writeZeroes(off, len, { unmap }),
    qemu: `write -z ${unmap ? '-u ' : ''}${off} ${len}`,
  });
  const d = (off: number, len: number): Op => ({ ours: (img) => img.discard(off, len), qemu: `discard ${off} ${len}` });
  const ops: Op[] = [
    w(sc, sc, 0x10), // the unallocated subcluster next to an allocated one
    w(2 * sc + 100, 300, 0x11), // unaligned inside an unallocated subcluster
    z(3 * sc, sc), // zero one allocated subcluster
    z(64 * KiB + 2 * sc, 3 * sc), // zero subclusters of a fully allocated cluster
    z(64 * KiB + 10 * sc + 5, 1000), // unaligned write-zeroes inside an allocated subcluster
    w(128 * KiB + 4 * sc + 512, 512, 0x12), // write into a zero subcluster
    d(192 * KiB, 64 * KiB), // discard a whole cluster with one allocated subcluster
    z(256 * KiB + 4 * sc, 2 * sc), // subcluster zeroes on a compressed cluster
    w(256 * KiB + 20 * sc, sc, 0x13), // write into a compressed cluster
    z(320 * KiB, 64 * KiB, true), // whole unallocated cluster, unmap
    w(400 * KiB + sc - 1, 2, 0x14), // two bytes straddling a subcluster boundary
    z(448 * KiB + sc, 30 * sc), // all but the first and last subcluster
    w(448 * KiB, 64 * KiB, 0x15), // then the whole cluster
    d(64 * KiB + 4 * sc, 4 * sc), // sub-cluster discard: QEMU ignores it for the whole-cluster-only path
  ];

  function build(): { ours: string; theirs: string } {
    const base = p('extl2-base.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', base, '1M');
    qemuIo(base, setup);
    const ours = p('extl2-ours.qcow2');
    const theirs = p('extl2-theirs.qcow2');
    fs.copyFileSync(base, ours);
    fs.copyFileSync(base, theirs);
    const img = openQcow2File(ours);
    for (const op of ops) op.ours(img);
    img.close();
    qemuIo(theirs, ops.map((o) => o.qemu));
    return { ours, theirs };
  }

  it('guest content equals qemu-io\'s result and qemu-img check is clean', async () => {
    const { ours, theirs } = build();
    expect(await qemuCompare(ours, theirs)).toBe('identical');
    await expectClean(ours);
    expectSameBytes(ourRead(theirs), await qemuRaw(theirs), 'we read qemu\'s twin');
  });

  it('allocation status (qemu-img map: zero/data per range) equals qemu-io\'s result', async () => {
    const { ours, theirs } = build();
    expect(await qemuMap(ours)).toBe(await qemuMap(theirs));
  });
});

describe('backing chain: raw <- qcow2 (qemu) <- qcow2 (ours)', () => {
  it('COW through two levels, past the end of shorter backing files, equals qemu-io on a twin', async () => {
    const base = p('chain-base.raw');
    fs.writeFileSync(base, data(1536 * KiB + 512, 42, 1));
    const mid = p('chain-mid.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'chain-base.raw', '-F', 'raw', mid, '2M');
    qemuIo(mid, ['write -P 0x31 4k 4k', 'write -P 0x32 1000k 600k', 'write -z 12k 8k', 'discard 64k 64k']);
    const ours = p('chain-top-ours.qcow2');
    const theirs = p('chain-top-theirs.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=64k', '-b', 'chain-mid.qcow2', '-F', 'qcow2', theirs, '3M');
    const img = createQcow2File(ours, { size: 3 * MiB, backingFile: 'chain-mid.qcow2', backingFormat: 'qcow2' });
    const ops: [string, (i: Qcow2Image) => void][] = [
      ['write -P 0x41 4608 512', (i) => i.write(4608, new Uint8Array(512).fill(0x41))],
      ['write -P 0x42 1535k 2k', (i) => i.write(1535 * KiB, new Uint8Array(2 * KiB).fill(0x42))],
      ['write -P 0x43 2047k 2k', (i) => i.write(2047 * KiB, new Uint8Array(2 * KiB).fill(0x43))],
      ['write -z 200k 64k', (i) => i.writeZeroes(200 * KiB, 64 * KiB)],
      ['discard 640k 128k', (i) => i.discard(640 * KiB, 128 * KiB)],
      ['write -P 0x44 3000k 1k', (i) => i.write(3000 * KiB, new Uint8Array(KiB).fill(0x44))],
    ];
    for (const [, f] of ops) f(img);
    img.close();
    qemuIo(theirs, ops.map(([c]) => c));
    expect(await qemuCompare(ours, theirs)).toBe('identical');
    await expectClean(ours);
    // Our reading of the whole chain agrees with qemu's, for both tops.
    expectSameBytes(ourRead(ours), await qemuRaw(ours), 'our top');
    expectSameBytes(ourRead(theirs), await qemuRaw(theirs), 'qemu top');
  });
});

describe('image size not a multiple of the cluster size', () => {
  for (const [cs, size] of [
    [65536, 5 * 65536 + 1536],
    [4096, 77 * 4096 + 512],
    [2 * MiB, 3 * MiB + 512],
  ] as const) {
    it(`cluster ${cs}, size ${size}: writes, zeroes and discard at the last sector`, async () => {
      const ours = p(`tail-ours-${cs}.qcow2`);
      const theirs = p(`tail-theirs-${cs}.qcow2`);
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, theirs, String(size));
      const img = createQcow2File(ours, { size, clusterSize: cs });
      const last = size - 512;
      const lastCluster = Math.floor(last / cs) * cs;
      const ops: [string, (i: Qcow2Image) => void][] = [
        [`write -P 0x61 ${last} 512`, (i) => i.write(last, new Uint8Array(512).fill(0x61))],
        [`write -P 0x62 ${last - 1024} 700`, (i) => i.write(last - 1024, new Uint8Array(700).fill(0x62))],
        [`write -z ${last} 512`, (i) => i.writeZeroes(last, 512)],
        [`write -P 0x63 ${last} 512`, (i) => i.write(last, new Uint8Array(512).fill(0x63))],
        [`discard ${lastCluster} ${size - lastCluster}`, (i) => i.discard(lastCluster, size - lastCluster)],
        [`write -P 0x64 ${last + 100} 412`, (i) => i.write(last + 100, new Uint8Array(412).fill(0x64))],
      ];
      for (const [, f] of ops) f(img);
      expect(() => img.write(size - 511, new Uint8Array(512))).toThrow(Qcow2Error);
      img.close();
      qemuIo(theirs, ops.map(([c]) => c));
      expect(await qemuCompare(ours, theirs)).toBe('identical');
      await expectClean(ours);
      expect(await qemuMap(ours)).toBe(await qemuMap(theirs));
      // And qemu's last sector as we read it.
      expectSameBytes(ourRead(theirs), await qemuRaw(theirs), 'qemu image read by us');
    });
  }
});

describe('dirty images (lazy refcounts)', () => {
  it('qemu-io aborted mid-session: we repair on a read-write open, qemu-img check is then clean', async () => {
    const f = p('dirty-abort.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,cluster_size=4k', f, '8M');
    qemuIo(f, ['write -P 0x71 0 64k']);
    const r = run('qemu-io', ['-c', 'write -P 0x72 1M 300k', '-c', 'write -P 0x73 6M 4k', '-c', 'discard 0 16k', '-c', 'abort', f]);
    expect(r.rc).not.toBe(0);
    expect(readU64(f, 72) & 1n).toBe(1n);
    const copy = p('dirty-abort-copy.qcow2');
    fs.copyFileSync(f, copy);
    // The case is real: without repair, qemu-img check (read-only) finds refcount errors.
    expect((await qemuCheck(copy)).corruptions).toBeGreaterThan(0);
    const expected = await qemuRaw(copy); // guest view is intact; only refcounts are stale
    // Read-only open: no repair, dirty bit stays, data readable.
    expectSameBytes(ourRead(f), expected, 'read-only view of the dirty image');
    expect(readU64(f, 72) & 1n).toBe(1n);
    const img = openQcow2File(f);
    // The repaired image must take new allocations without clobbering live data.
    img.write(2 * MiB, new Uint8Array(64 * KiB).fill(0x74));
    expected.fill(0x74, 2 * MiB, 2 * MiB + 64 * KiB);
    img.close();
    expect(readU64(f, 72) & 1n).toBe(0n);
    await expectClean(f);
    expectSameBytes(await qemuRaw(f), expected, 'guest view after repair');
  });

  it('dirty bit and leaked refcounts set by hand: our read-write open repairs them', async () => {
    const f = p('dirty-hand.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,cluster_size=64k', f, '4M');
    qemuIo(f, ['write -P 0x81 0 128k']);
    // Leak: refcount 1 for two clusters past the end of everything referenced.
    const size = fs.statSync(f).size;
    const reftable = Number(readU64(f, 48));
    const block = Number(readU64(f, reftable) & OFFSET_MASK);
    const fd = fs.openSync(f, 'r+');
    const leakIdx = Math.ceil(size / 65536) + 1;
    const one = Buffer.from([0, 1]);
    fs.writeSync(fd, one, 0, 2, block + leakIdx * 2);
    fs.writeSync(fd, one, 0, 2, block + (leakIdx + 1) * 2);
    fs.ftruncateSync(fd, (leakIdx + 2) * 65536);
    fs.closeSync(fd);
    writeU64(f, 72, readU64(f, 72) | 1n);
    expect((await qemuCheck(f)).leaks).toBe(2);
    openQcow2File(f).close();
    expect(readU64(f, 72) & 1n).toBe(0n);
    await expectClean(f);
    expect(Array.from(new Set((await qemuRaw(f)).subarray(0, 128 * KiB)))).toEqual([0x81]);
  });

  it('our own lazy-refcount session, snapshot of the file bytes mid-session: repaired on open', async () => {
    const f = p('dirty-ours.qcow2');
    const img = createQcow2File(f, { size: 4 * MiB, clusterSize: 4096, lazyRefcounts: true });
    const model = new Uint8Array(4 * MiB);
    for (let i = 0; i < 40; i++) {
      const off = ((i * 97) % 1000) * 4096 + (i % 3) * 512;
      const d = data(3000, i, 1);
      img.write(off, d);
      model.set(d, off);
    }
    img.flush(); // data and L2 tables on disk; refcounts may lag (lazy)
    const mid = p('dirty-ours-mid.qcow2');
    fs.copyFileSync(f, mid);
    img.close();
    expect(readU64(mid, 72) & 1n).toBe(1n);
    openQcow2File(mid).close();
    expect(readU64(mid, 72) & 1n).toBe(0n);
    await expectClean(mid);
    expectSameBytes(await qemuRaw(mid), model, 'guest view');
  });
});

describe('feature bits', () => {
  it('unknown autoclear bit: cleared by a read-write open, kept by a read-only one', async () => {
    const f = p('autoclear.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', f, '1M');
    qemuIo(f, ['write -P 0x91 0 4k']);
    writeU64(f, 88, 1n << 37n);
    openQcow2File(f, { readOnly: true }).close();
    expect(readU64(f, 88)).toBe(1n << 37n);
    const img = openQcow2File(f);
    img.write(8 * KiB, new Uint8Array(512).fill(0x92));
    img.close();
    expect(readU64(f, 88)).toBe(0n);
    await expectClean(f);
    const raw = await qemuRaw(f);
    expect(raw[0]).toBe(0x91);
    expect(raw[8 * KiB]).toBe(0x92);
  });

  it('unknown incompatible bit: refused read-only and read-write with UnsupportedFeatureError, like qemu', () => {
    const f = p('incompat.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', f, '1M');
    writeU64(f, 72, 1n << 13n);
    expect(run('qemu-img', ['info', f]).rc).not.toBe(0);
    expect(() => openQcow2File(f, { readOnly: true })).toThrow(UnsupportedFeatureError);
    expect(() => openQcow2File(f)).toThrow(UnsupportedFeatureError);
    const bytes = new Uint8Array(fs.readFileSync(f));
    expect(() => Qcow2Image.open(new MemoryStorage(bytes))).toThrow(UnsupportedFeatureError);
    // Nothing was written by the refused opens.
    expect(new Uint8Array(fs.readFileSync(f))).toEqual(bytes);
  });

  it('corrupt bit: read-write open refused, read-only open reads the data', async () => {
    const f = p('corrupt.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', f, '1M');
    qemuIo(f, ['write -P 0xa1 64k 64k']);
    writeU64(f, 72, 2n);
    const before = new Uint8Array(fs.readFileSync(f));
    expect(() => openQcow2File(f)).toThrow(CorruptImageError);
    expect(new Uint8Array(fs.readFileSync(f))).toEqual(before);
    const d = ourRead(f);
    expectSameBytes(d, await qemuRaw(f), 'read-only view');
    expect(d[64 * KiB]).toBe(0xa1);
  });
});

describe('caches and growth', () => {
  it('an L2 cache of two tables over a workload spanning many L2 tables stays correct and clean', async () => {
    const cs = 4096; // one L2 table maps 2 MiB
    const size = 40 * MiB;
    const f = p('tiny-cache.qcow2');
    const img = createQcow2File(f, { size, clusterSize: cs }, { l2CacheSize: 2 * cs });
    const model = new Uint8Array(size);
    const lcg = new Lcg(12345);
    const rnd = (n: number) => lcg.int(n);
    for (let i = 0; i < 300; i++) {
      const off = rnd(size - 9000);
      const kind = i % 6;
      const len = 1 + rnd(8192);
      if (kind === 4) {
        img.writeZeroes(off, len);
        model.fill(0, off, off + len);
      } else if (kind === 5) {
        const a = Math.floor(off / cs) * cs;
        img.discard(a, 2 * cs);
        model.fill(0, a, a + 2 * cs);
      } else {
        const d = data(len, i, 1);
        img.write(off, d);
        model.set(d, off);
      }
      if (i % 50 === 49) {
        // Reads interleaved with writes, across tables, through the same tiny cache.
        const r = rnd(size - 100_000);
        expectSameBytes(img.read(r, 100_000), model.subarray(r, r + 100_000), `read at ${r}`);
      }
    }
    img.close();
    await expectClean(f);
    expectSameBytes(await qemuRaw(f), model, 'guest view');
    // And the tiny cache reading qemu's idea of the same image.
    expectSameBytes(ourRead(f, { l2CacheSize: 2 * cs }), model, 'reopened with the tiny cache');
  });

  it('refcount table growth: 512-byte clusters, 64-bit refcounts, a few MiB written', async () => {
    const f = p('reftable-growth.qcow2');
    const size = 8 * MiB;
    const img = createQcow2File(f, { size, clusterSize: 512, refcountBits: 64 });
    const model = new Uint8Array(size);
    // 3 MiB of data in strides, so L2 tables, data and refcount blocks interleave.
    for (let i = 0; i < 48; i++) {
      const off = ((i * 37) % 128) * 64 * KiB;
      const d = data(64 * KiB, i + 1, 1);
      img.write(off, d);
      model.set(d, off);
    }
    img.close();
    const reftableClusters = Number(readU64(f, 56) >> 32n);
    expect(reftableClusters).toBeGreaterThan(1);
    await expectClean(f);
    expectSameBytes(await qemuRaw(f), model, 'guest view');
    // qemu can keep writing to the grown table; still clean.
    qemuIo(f, ['write -P 0xb1 7M 512k']);
    await expectClean(f);
    model.fill(0xb1, 7 * MiB, 7 * MiB + 512 * KiB);
    expectSameBytes(ourRead(f), model, 'after qemu writes');
  });
});
