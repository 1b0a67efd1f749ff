/**
 * Issue 3, done-means 1: for images QEMU makes — cluster sizes 512 B..2 MiB,
 * refcount widths 1..64, compat 0.10/1.1, lazy refcounts (also left dirty),
 * extended L2, compressed clusters (zlib, zstd), qcow2 and raw backing files,
 * written by qemu-io with patterns, zeroes and discards — our
 * `convert -O raw` gives exactly the bytes `qemu-img convert -O raw` gives.
 *
 * A covering subset rather than the full cartesian product: every value of
 * every dimension appears, most in more than one combination.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { firstDiff, ioArgs, ok, ours, qemuImg, qemuIo, scratchDir } from './helpers.js';
import { minSize, standardScript } from './scripts.js';

const dir = scratchDir('convert');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const KiB = 1024;
const MiB = 1024 * KiB;

interface PlainCase {
  name: string;
  cs: number;
  opts: string; // qemu-img -o, besides cluster_size
  size?: number;
  extL2?: boolean;
  compressedWrites?: boolean;
  /** Leave the image as qemu-io's abort leaves it (dirty with lazy refcounts). */
  abort?: boolean;
}

const plain: PlainCase[] = [
  { name: '512 B clusters, refcount 1', cs: 512, opts: 'refcount_bits=1' },
  { name: '1 KiB clusters, refcount 2, compat 0.10', cs: KiB, opts: 'compat=0.10' },
  { name: '2 KiB clusters, refcount 4', cs: 2 * KiB, opts: 'refcount_bits=4' },
  { name: '4 KiB clusters, refcount 8, lazy refcounts', cs: 4 * KiB, opts: 'refcount_bits=8,lazy_refcounts=on' },
  { name: '8 KiB clusters, compat 0.10, compressed writes', cs: 8 * KiB, opts: 'compat=0.10', compressedWrites: true },
  { name: '16 KiB clusters, extended L2, refcount 32', cs: 16 * KiB, opts: 'extended_l2=on,refcount_bits=32', extL2: true },
  { name: '32 KiB clusters, refcount 64, zstd compressed writes', cs: 32 * KiB, opts: 'refcount_bits=64,compression_type=zstd', compressedWrites: true },
  { name: '64 KiB clusters, defaults', cs: 64 * KiB, opts: '' },
  { name: '64 KiB clusters, compat 0.10', cs: 64 * KiB, opts: 'compat=0.10' },
  { name: '64 KiB clusters, extended L2, zlib compressed writes', cs: 64 * KiB, opts: 'extended_l2=on', extL2: true, compressedWrites: true },
  { name: '64 KiB clusters, lazy refcounts, left dirty by abort', cs: 64 * KiB, opts: 'lazy_refcounts=on', abort: true },
  { name: '128 KiB clusters, refcount 1, lazy refcounts', cs: 128 * KiB, opts: 'refcount_bits=1,lazy_refcounts=on' },
  { name: '256 KiB clusters, refcount 2', cs: 256 * KiB, opts: 'refcount_bits=2' },
  { name: '512 KiB clusters, compat 0.10', cs: 512 * KiB, opts: 'compat=0.10' },
  { name: '1 MiB clusters, refcount 4, extended L2', cs: MiB, opts: 'refcount_bits=4,extended_l2=on', extL2: true },
  { name: '2 MiB clusters, refcount 64', cs: 2 * MiB, opts: 'refcount_bits=64' },
  { name: '2 MiB clusters, extended L2, zstd compressed writes', cs: 2 * MiB, opts: 'extended_l2=on,compression_type=zstd', extL2: true, compressedWrites: true },
  { name: 'size not a multiple of the cluster size', cs: 64 * KiB, opts: 'refcount_bits=8', size: 2 * MiB + 3 * 512 },
  { name: 'preallocation=metadata', cs: 4 * KiB, opts: 'preallocation=metadata' },
];

/** Converts with both tools and requires identical bytes. */
async function expectSameRaw(image: string, extra: string[] = []): Promise<void> {
  const base = path.basename(image);
  const ref = path.join(dir, `${base}.qemu.raw`);
  const mine = path.join(dir, `${base}.ours.raw`);
  ok(await qemuImg(['convert', '-U', ...extra, '-O', 'raw', image, ref]), 'qemu-img convert');
  const r = await ours(dir, ['convert', ...extra, '-O', 'raw', image, mine]);
  expect(r.stderr, 'our convert stderr').toBe('');
  expect(r.rc, 'our convert exit code').toBe(0);
  expect(fs.statSync(mine).size, 'raw size').toBe(fs.statSync(ref).size);
  expect(firstDiff(mine, ref), 'first differing byte (-1 = identical)').toBe(-1);
  expect(fs.existsSync(`${mine}.tmp`), 'temporary file left behind').toBe(false);
  fs.rmSync(ref);
  fs.rmSync(mine);
}

let seq = 0;
function fresh(ext: string): string {
  return path.join(dir, `img${++seq}.${ext}`);
}

describe('convert -O raw matches qemu-img on images QEMU wrote', () => {
  for (const c of plain) {
    it(c.name, async () => {
      const size = c.size ?? minSize(c.cs);
      const img = fresh('qcow2');
      const opts = [`cluster_size=${c.cs}`, c.opts].filter(Boolean).join(',');
      ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, img, String(size)]), 'qemu-img create');
      const script = standardScript({ clusterSize: c.cs, size: Math.max(size, minSize(c.cs)), extendedL2: c.extL2, compressed: c.compressedWrites })
        // Cases with an odd size keep only the commands that fit it.
        .filter((cmd) => {
          const w = cmd.split(' ');
          if (w[0] === 'flush') return true;
          return Number(w.at(-2)) + Number(w.at(-1)) <= size;
        });
      const cmds = c.abort ? [...script, 'abort'] : script;
      const r = await qemuIo(['-f', 'qcow2', ...ioArgs(cmds), img]);
      if (!c.abort) ok(r, 'qemu-io');
      await expectSameRaw(img);
    });
  }
});

/** A raw file with incompressible, compressible, zero and text-like regions. */
function mixedRaw(file: string, size: number): void {
  const buf = Buffer.alloc(size);
  const rnd = crypto.createHash('sha256');
  let off = 0;
  let block = 0;
  while (off < size) {
    const len = Math.min(size - off, 40 * KiB + ((block * 7919) % (24 * KiB)));
    switch (block % 4) {
      case 0: {
        // Pseudo-random bytes: do not compress, so QEMU stores these clusters uncompressed.
        let h = rnd.update(String(block)).copy().digest();
        for (let i = 0; i < len; i += h.length) {
          h.copy(buf, off + i, 0, Math.min(h.length, len - i));
          h = crypto.createHash('sha256').update(h).digest();
        }
        break;
      }
      case 1:
        buf.fill(block & 0xff, off, off + len);
        break;
      case 2:
        break; // zeros
      case 3:
        buf.write(`block ${block} of the mixed test image; `.repeat(Math.ceil(len / 40)).slice(0, len), off, 'latin1');
        break;
    }
    off += len;
    block++;
  }
  fs.writeFileSync(file, buf);
}

interface CompressedCase {
  name: string;
  opts: string;
  size: number;
}

const compressed: CompressedCase[] = [
  { name: 'zlib, 64 KiB clusters', opts: 'cluster_size=65536,compression_type=zlib', size: 3 * MiB },
  { name: 'zstd, 64 KiB clusters', opts: 'cluster_size=65536,compression_type=zstd', size: 3 * MiB },
  { name: 'zlib, 512 B clusters, refcount 2', opts: 'cluster_size=512,refcount_bits=2', size: MiB },
  { name: 'zstd, 4 KiB clusters, refcount 64', opts: 'cluster_size=4096,compression_type=zstd,refcount_bits=64', size: 2 * MiB },
  { name: 'zlib, compat 0.10, 8 KiB clusters', opts: 'cluster_size=8192,compat=0.10', size: 2 * MiB },
  { name: 'zstd, extended L2, 32 KiB clusters', opts: 'cluster_size=32768,extended_l2=on,compression_type=zstd', size: 3 * MiB },
  { name: 'zlib, 2 MiB clusters', opts: 'cluster_size=2097152', size: 17 * MiB },
  { name: 'zstd, 1 MiB clusters', opts: 'cluster_size=1048576,compression_type=zstd', size: 9 * MiB },
];

describe('convert -O raw matches qemu-img on images compressed by qemu-img convert -c', () => {
  for (const c of compressed) {
    it(c.name, async () => {
      const raw = fresh('raw');
      mixedRaw(raw, c.size);
      const img = fresh('qcow2');
      ok(await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', c.opts, raw, img]), 'qemu-img convert -c');
      await expectSameRaw(img);
      // Partial overwrites of compressed clusters (copy-on-write out of them), zeroes and discards.
      const cs = Number(/cluster_size=(\d+)/.exec(c.opts)![1]);
      const cmds = [
        `write -P 0x5a ${cs + 17} 100`,
        `write -z ${3 * cs + 512} 512`,
        `discard ${5 * cs} ${cs}`,
        `write -z -u ${7 * cs} ${cs}`,
      ];
      ok(await qemuIo(['-f', 'qcow2', ...ioArgs(cmds), img]), 'qemu-io');
      await expectSameRaw(img);
    });
  }
});

describe('convert -O raw matches qemu-img through backing chains', () => {
  it('qcow2 base, qcow2 overlay (COW of partial writes, zeroes and discards over backing data)', async () => {
    const size = 2 * MiB;
    const base = fresh('qcow2');
    const top = fresh('qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', base, String(size)]), 'create base');
    ok(await qemuIo(['-f', 'qcow2', ...ioArgs([`write -P 0xaa 0 ${size}`, 'write -P 0xbb 300000 70000']), base]), 'fill base');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-b', path.basename(base), '-F', 'qcow2', top]), 'create overlay');
    ok(await qemuIo(['-f', 'qcow2', ...ioArgs(standardScript({ clusterSize: 64 * KiB, size })), top]), 'qemu-io');
    await expectSameRaw(top);
  });

  it('raw base, qcow2 overlay with 4 KiB clusters', async () => {
    const size = MiB;
    const base = fresh('raw');
    mixedRaw(base, size);
    const top = fresh('qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', path.basename(base), '-F', 'raw', top]), 'create overlay');
    ok(await qemuIo(['-f', 'qcow2', ...ioArgs(standardScript({ clusterSize: 4096, size })), top]), 'qemu-io');
    await expectSameRaw(top);
  });

  it('compat 0.10 overlay (discard over backing keeps the backing data)', async () => {
    const size = MiB;
    const base = fresh('qcow2');
    const top = fresh('qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', base, String(size)]), 'create base');
    ok(await qemuIo(['-f', 'qcow2', '-c', `write -P 0x3c 0 ${size}`, base]), 'fill base');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=8192', '-b', path.basename(base), '-F', 'qcow2', top]), 'create overlay');
    ok(await qemuIo(['-f', 'qcow2', ...ioArgs(standardScript({ clusterSize: 8192, size })), top]), 'qemu-io');
    await expectSameRaw(top);
  });

  it('overlay larger than its backing file, extended L2 over 64 KiB base clusters', async () => {
    const base = fresh('qcow2');
    const top = fresh('qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', base, String(MiB + 4096)]), 'create base');
    ok(await qemuIo(['-f', 'qcow2', '-c', `write -P 0x71 0 ${MiB + 4096}`, base]), 'fill base');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=16384,extended_l2=on', '-b', path.basename(base), '-F', 'qcow2', top, String(2 * MiB)]), 'create overlay');
    ok(await qemuIo(['-f', 'qcow2', ...ioArgs(standardScript({ clusterSize: 16384, size: 2 * MiB, extendedL2: true })), top]), 'qemu-io');
    await expectSameRaw(top);
  });

  it('three levels: raw ← qcow2 (compressed) ← qcow2, refcount 16/1', async () => {
    const size = MiB;
    const raw = fresh('raw');
    mixedRaw(raw, size);
    const mid = fresh('qcow2');
    const top = fresh('qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-b', path.basename(raw), '-F', 'raw', mid]), 'create mid');
    ok(await qemuIo(['-f', 'qcow2', ...ioArgs(['write -c -P 0x21 0 64k', 'write -P 0x22 200k 100k', 'write -z 400k 64k', 'discard 512k 128k']), mid]), 'write mid');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=1,cluster_size=4096', '-b', path.basename(mid), '-F', 'qcow2', top]), 'create top');
    ok(await qemuIo(['-f', 'qcow2', ...ioArgs(['write -P 0x31 10000 5000', 'write -z -u 204800 8192', 'discard 520k 8k', 'write -P 0x32 1044480 4096']), top]), 'write top');
    await expectSameRaw(top);
  });
});

describe('convert -l reads an internal snapshot as qemu-img does', () => {
  it('snapshot.name=S and a bare id', async () => {
    const img = fresh('qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', img, String(MiB)]), 'create');
    ok(await qemuIo(['-f', 'qcow2', ...ioArgs(standardScript({ clusterSize: 4096, size: MiB }).slice(0, 8)), img]), 'qemu-io 1');
    ok(await qemuImg(['snapshot', '-c', 'first', img]), 'snapshot');
    ok(await qemuIo(['-f', 'qcow2', ...ioArgs(['write -P 0xee 0 300k', 'discard 512k 64k']), img]), 'qemu-io 2');
    await expectSameRaw(img, ['-l', 'snapshot.name=first']);
    await expectSameRaw(img, ['-l', '1']);
    await expectSameRaw(img);
  });
});
