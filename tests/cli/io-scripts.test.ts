/**
 * Issue 3, done-means 2: the same qemu-io scripts, run through our `io` on
 * images created by us and by qemu-img, leave images that qemu-img check
 * passes (exit 0, no leaks), that qemu-img compare finds identical to QEMU's
 * own result, and on which qemu-img info agrees (size, cluster size, refcount
 * bits, compat, flags). Our io must also say what qemu-io says (timing lines
 * aside) and exit as it does.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { imgCheck, imgCompare, imgInfo, type QemuInfo } from '../../src/qemu/index.js';
import { ioArgs, ok, ours, qemuImg, qemuIo, scratchDir, withoutTimings } from './helpers.js';
import { minSize, standardScript, verifyingReads } from './scripts.js';

const dir = scratchDir('io');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const KiB = 1024;
const MiB = 1024 * KiB;

interface Case {
  name: string;
  cs: number;
  opts: string;
  extL2?: boolean;
  compressed?: boolean;
  backing?: 'qcow2' | 'raw';
}

const cases: Case[] = [
  { name: '512 B clusters, refcount 1', cs: 512, opts: 'refcount_bits=1' },
  { name: '2 KiB clusters, refcount 2, compressed writes', cs: 2 * KiB, opts: 'refcount_bits=2', compressed: true },
  { name: '4 KiB clusters, compat 0.10', cs: 4 * KiB, opts: 'compat=0.10' },
  { name: '8 KiB clusters, refcount 4, lazy refcounts', cs: 8 * KiB, opts: 'refcount_bits=4,lazy_refcounts=on' },
  { name: '16 KiB clusters, extended L2, refcount 8', cs: 16 * KiB, opts: 'extended_l2=on,refcount_bits=8', extL2: true },
  { name: '64 KiB clusters, defaults, compressed writes', cs: 64 * KiB, opts: '', compressed: true },
  { name: '64 KiB clusters, zstd, refcount 32, compressed writes', cs: 64 * KiB, opts: 'compression_type=zstd,refcount_bits=32', compressed: true },
  { name: '256 KiB clusters, compat 0.10, compressed writes', cs: 256 * KiB, opts: 'compat=0.10', compressed: true },
  { name: '2 MiB clusters, extended L2, refcount 64', cs: 2 * MiB, opts: 'extended_l2=on,refcount_bits=64', extL2: true },
  { name: '4 KiB clusters, preallocation=metadata', cs: 4 * KiB, opts: 'preallocation=metadata' },
  { name: '1 MiB clusters, lazy refcounts, zstd, compressed writes', cs: MiB, opts: 'lazy_refcounts=on,compression_type=zstd', compressed: true },
  { name: '512 B clusters, compat 0.10', cs: 512, opts: 'compat=0.10' },
  { name: '64 KiB clusters over a qcow2 backing file', cs: 64 * KiB, opts: '', backing: 'qcow2' },
  { name: '4 KiB clusters, compat 0.10, over a qcow2 backing file', cs: 4 * KiB, opts: 'compat=0.10', backing: 'qcow2' },
  { name: '32 KiB clusters, extended L2, over a raw backing file', cs: 32 * KiB, opts: 'extended_l2=on', extL2: true, backing: 'raw' },
];

/** The qemu-img info fields both images must agree on. */
function infoShape(i: QemuInfo): unknown {
  const d = i['format-specific']?.data;
  return {
    'virtual-size': i['virtual-size'],
    'cluster-size': i['cluster-size'],
    format: i.format,
    'dirty-flag': i['dirty-flag'],
    'backing-filename': i['backing-filename'],
    'backing-filename-format': i['backing-filename-format'],
    compat: d?.compat,
    'compression-type': d?.['compression-type'],
    'lazy-refcounts': d?.['lazy-refcounts'],
    'refcount-bits': d?.['refcount-bits'],
    corrupt: d?.corrupt,
    'extended-l2': d?.['extended-l2'],
  };
}

let seq = 0;

async function makeBacking(kind: 'qcow2' | 'raw', size: number): Promise<string> {
  const base = path.join(dir, `base${++seq}.${kind}`);
  ok(await qemuImg(['create', '-q', '-f', kind, base, String(size)]), 'create base');
  ok(await qemuIo(['-f', kind, ...ioArgs([`write -P 0xa5 0 ${size}`, `write -P 0x5a ${Math.floor(size / 3)} 12345`]), base]), 'fill base');
  return base;
}

describe('qemu-io scripts through our io agree with qemu-io', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const size = minSize(c.cs);
      const opts = [`cluster_size=${c.cs}`, c.opts].filter(Boolean).join(',');
      const backingArgs: string[] = [];
      if (c.backing) {
        const base = await makeBacking(c.backing, size);
        backingArgs.push('-b', path.basename(base), '-F', c.backing);
      }
      const n = ++seq;
      const reference = path.join(dir, `ref${n}.qcow2`);
      const byQemu = path.join(dir, `qemu-made${n}.qcow2`);
      const byUs = path.join(dir, `our-made${n}.qcow2`);
      const create = ['create', '-q', '-f', 'qcow2', '-o', opts, ...backingArgs];
      ok(await qemuImg([...create, reference, String(size)]), 'qemu-img create (reference)');
      ok(await qemuImg([...create, byQemu, String(size)]), 'qemu-img create');
      ok(await ours(dir, [...create, path.basename(byUs), String(size)]), 'our create');

      const shape = {
        clusterSize: c.cs,
        size,
        extendedL2: c.extL2,
        compressed: c.compressed,
        discardKeepsData: c.backing !== undefined && c.opts.includes('compat=0.10'),
      };
      const script = [...standardScript(shape), ...verifyingReads(shape)];
      const q = await qemuIo(['-f', 'qcow2', ...ioArgs(script), reference]);
      ok(q, 'qemu-io');
      const refInfo = await imgInfo(reference);

      for (const img of [byQemu, byUs]) {
        const label = path.basename(img);
        const r = await ours(dir, ['io', '-f', 'qcow2', label, ...ioArgs(script)]);
        expect(r.stderr, `${label}: our io stderr`).toBe('');
        expect(withoutTimings(r.stdout), `${label}: our io output`).toBe(withoutTimings(q.stdout));
        expect(r.rc, `${label}: our io exit code`).toBe(q.rc);

        const check = await imgCheck(img);
        expect({ rc: check.rc, corruptions: check.json?.corruptions ?? 0, leaks: check.json?.leaks ?? 0, stderr: check.stderr }, `${label}: qemu-img check`).toEqual({
          rc: 0,
          corruptions: 0,
          leaks: 0,
          stderr: '',
        });
        const cmp = await imgCompare(img, reference, { formatA: 'qcow2', formatB: 'qcow2' });
        expect(`${cmp.rc} ${cmp.stdout.trim()}`, `${label}: qemu-img compare with QEMU's result`).toBe('0 Images are identical.');
        expect(infoShape(await imgInfo(img)), `${label}: qemu-img info`).toEqual(infoShape(refInfo));
      }
    });
  }
});

describe('failures are reported as qemu-io reports them', () => {
  it('a failed pattern verification and a bad command: same output, exit 1', async () => {
    const ref = path.join(dir, 'fail-ref.qcow2');
    const mine = path.join(dir, 'fail-ours.qcow2');
    for (const f of [ref, mine]) ok(await qemuImg(['create', '-q', '-f', 'qcow2', f, '1M']), 'create');
    const script = [
      'write -P 0x42 0 4k',
      'read -P 0x43 0 4k',
      'read -P 0x42 -s 512 -l 1024 0 4k',
      'read -P 0x43 -s 512 -l 1024 0 4k',
      'read -v 0 32',
      'write -P 0x100 0 1',
      'write -u 0 512',
      'read 0',
      'read -1 1',
      'read 0 1 2',
      'read -s 1 0 10',
      'read -P 1 -s 8 -l 8 0 10',
      'read x 1',
      'write -z -P 1 0 1',
      'write -c 1 512',
      'flush 1',
      'discard 0',
      'bogus 1',
      'write -z -c 0 512',
    ];
    const q = await qemuIo(['-f', 'qcow2', ...ioArgs(script), ref]);
    const r = await ours(dir, ['io', '-f', 'qcow2', path.basename(mine), ...ioArgs(script)]);
    expect(withoutTimings(r.stdout)).toBe(withoutTimings(q.stdout));
    expect(r.stderr.trim().split('\n')).toEqual(q.stderr.trim().split('\n'));
    expect(q.rc).toBe(1);
    expect(r.rc).toBe(1);
  });

  it('writes past the end of the disk fail and leave the image clean', async () => {
    const mine = path.join(dir, 'eof.qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', mine, '1M']), 'create');
    const r = await ours(dir, ['io', '-f', 'qcow2', path.basename(mine), '-c', 'write 1M 512', '-c', 'write -P 7 0 512']);
    expect(r.rc).toBe(1);
    expect(r.stdout).toMatch(/^write failed: .+$/m);
    expect(r.stdout).toMatch(/^wrote 512\/512 bytes at offset 0$/m);
    expect((await imgCheck(mine)).rc).toBe(0);
  });
});

describe("io runs the harness's op text form beyond qemu-io", () => {
  it('snapshot, amend, resize, reopen: the same image as the same steps through qemu-io and qemu-img', async () => {
    const ref = path.join(dir, 'ops-ref.qcow2');
    const mine = path.join(dir, 'ops-ours.qcow2');
    for (const f of [ref, mine]) ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', f, '1M']), 'create');
    // Each step: our io line, and the same step for QEMU's tools.
    const steps: [string, string[]][] = [
      ['write -P 0x21 0 20k', ['io', 'write -P 0x21 0 20k']],
      ['snapshot -c s1', ['img', 'snapshot', '-c', 's1']],
      ['write -P 0x22 8k 8k', ['io', 'write -P 0x22 8k 8k']],
      ['amend refcount_bits=4', ['img', 'amend', '-o', 'refcount_bits=4']],
      ['reopen', ['none']],
      ['resize 2M', ['img', 'resize', '-q', '@', '2M']],
      ['write -P 0x23 1536k 4k', ['io', 'write -P 0x23 1536k 4k']],
      ['snapshot -c s2', ['img', 'snapshot', '-c', 's2']],
      ['snapshot -a s1', ['img', 'snapshot', '-a', 's1']],
      ['amend lazy_refcounts=on,compat=1.1', ['img', 'amend', '-o', 'lazy_refcounts=on,compat=1.1']],
      ['snapshot -d s2', ['img', 'snapshot', '-d', 's2']],
      ['resize --shrink 512k', ['img', 'resize', '-q', '--shrink', '@', '512k']],
    ];
    for (const [, q] of steps) {
      if (q[0] === 'io') ok(await qemuIo(['-f', 'qcow2', '-c', q[1]!, ref]), q[1]!);
      // '@' marks where qemu-img wants the file name (resize takes it before the size).
      else if (q[0] === 'img') ok(await qemuImg(q.includes('@') ? q.slice(1).map((w) => (w === '@' ? ref : w)) : [...q.slice(1), ref]), q.join(' '));
    }
    const r = await ours(dir, ['io', '-f', 'qcow2', path.basename(mine), ...ioArgs(steps.map(([line]) => line))]);
    expect({ rc: r.rc, stderr: r.stderr, failed: r.stdout.split('\n').filter((l) => / failed: /.test(l)) }).toEqual({ rc: 0, stderr: '', failed: [] });
    const check = await imgCheck(mine);
    expect({ rc: check.rc, stderr: check.stderr }).toEqual({ rc: 0, stderr: '' });
    const cmp = await imgCompare(mine, ref, { formatA: 'qcow2', formatB: 'qcow2' });
    expect(`${cmp.rc} ${cmp.stdout.trim()}`).toBe('0 Images are identical.');
    const a = await imgInfo(mine);
    const b = await imgInfo(ref);
    expect(infoShape(a)).toEqual(infoShape(b));
    expect((a.snapshots ?? []).map((s) => [s.id, s.name])).toEqual((b.snapshots ?? []).map((s) => [s.id, s.name]));
  });

  it('refusals are failed commands (exit 1), and the image stays clean', async () => {
    const mine = path.join(dir, 'ops-refuse.qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', mine, '1M']), 'create');
    const r = await ours(dir, ['io', '-f', 'qcow2', path.basename(mine), '-c', 'snapshot -a nope', '-c', 'amend refcount_bits=8', '-c', 'resize 1k', '-c', 'write -P 1 0 4k']);
    expect(r.rc).toBe(1);
    expect(r.stdout.split('\n').filter((l) => / failed: /.test(l)).map((l) => l.split(':')[0])).toEqual(['snapshot failed', 'amend failed', 'resize failed']);
    expect((await imgCheck(mine)).rc).toBe(0);
  });
});
