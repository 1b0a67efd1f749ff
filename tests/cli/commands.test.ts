/**
 * create, info, check, snapshot, amend and resize against qemu-img itself:
 * the same command on the same image must give the same answer (output,
 * exit code) and leave an image qemu-img finds clean and equal to what
 * qemu-img's own command leaves.
 */
import { execa } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { imgCheck, imgCompare, imgInfo, type QemuInfo } from '../../src/qemu/index.js';
import { ioArgs, ok, ours, qemuImg, qemuIo, scratchDir } from './helpers.js';

const dir = scratchDir('cmds');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let seq = 0;
const fresh = (ext = 'qcow2') => path.join(dir, `f${++seq}.${ext}`);

function shape(i: QemuInfo): unknown {
  const { 'actual-size': _a, filename: _f, ...rest } = i as QemuInfo & { filename?: string };
  return rest;
}

/** Our stderr is qemu-img's with our program name. */
function asQemu(stderr: string): string {
  return stderr.replace(/^qcow2-harness: /gm, 'qemu-img: ').trim();
}

async function expectClean(img: string): Promise<void> {
  const c = await imgCheck(img);
  expect({ rc: c.rc, corruptions: c.json?.corruptions ?? 0, leaks: c.json?.leaks ?? 0, stderr: c.stderr }, `qemu-img check ${path.basename(img)}`).toEqual({
    rc: 0,
    corruptions: 0,
    leaks: 0,
    stderr: '',
  });
}

async function expectIdentical(a: string, b: string): Promise<void> {
  const r = await imgCompare(a, b, { formatA: 'qcow2', formatB: 'qcow2' });
  expect(`${r.rc} ${r.stdout.trim()}${r.stderr.trim()}`).toBe('0 Images are identical.');
}

/** A qemu-made image with data in several clusters. */
async function written(opts = 'cluster_size=4096', size = '1M'): Promise<string> {
  const f = fresh();
  const cs = Number(/cluster_size=(\d+)/.exec(opts)?.[1] ?? 65536);
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, f, size]), 'create');
  ok(await qemuIo(['-f', 'qcow2', ...ioArgs(['write -P 1 0 64k', 'write -P 2 100k 33k', 'write -z 300k 64k', `write -c -P 3 512k ${cs}`]), f]), 'qemu-io');
  return f;
}

async function copy(f: string): Promise<string> {
  const g = fresh();
  fs.copyFileSync(f, g);
  return g;
}

describe('create', () => {
  const variants: string[][] = [
    [],
    ['-o', 'cluster_size=512,refcount_bits=1'],
    ['-o', 'cluster_size=2M,refcount_bits=64,extended_l2=on'],
    ['-o', 'compat=0.10,cluster_size=4k'],
    ['-o', 'compat=v3,lazy_refcounts=on,compression_type=zstd'],
    ['-o', 'preallocation=metadata,cluster_size=16k'],
    ['-o', 'refcount_bits=8', '-o', 'cluster_size=1k'],
  ];
  for (const v of variants) {
    it(`create ${v.join(' ') || '(defaults)'} 5M+1000`, async () => {
      const a = fresh();
      const b = fresh();
      const q = ok(await qemuImg(['create', '-f', 'qcow2', ...v, a, '5243880']), 'qemu-img create');
      const r = await ours(dir, ['create', '-f', 'qcow2', ...v, b, '5243880']);
      expect(r.rc).toBe(0);
      expect(r.stdout.replace(b, a)).toBe(q.stdout);
      expect(shape(await imgInfo(b))).toEqual(shape(await imgInfo(a)));
      await expectClean(b);
      await expectIdentical(a, b);
    });
  }

  it('with a backing file and no size: the backing file gives it', async () => {
    const base = await written();
    const a = fresh();
    const b = fresh();
    const q = ok(await qemuImg(['create', '-f', 'qcow2', '-b', path.basename(base), '-F', 'qcow2', a]), 'qemu-img create');
    const r = await ours(dir, ['create', '-f', 'qcow2', '-b', path.basename(base), '-F', 'qcow2', path.basename(b)]);
    expect(r.rc).toBe(0);
    expect(r.stdout.replace(path.basename(b), a)).toBe(q.stdout);
    expect(shape(await imgInfo(b))).toEqual(shape(await imgInfo(a)));
    await expectIdentical(a, b);
  });

  it('raw', async () => {
    const a = fresh('raw');
    const b = fresh('raw');
    ok(await qemuImg(['create', '-q', '-f', 'raw', a, '1000']), 'qemu-img create');
    expect((await ours(dir, ['create', '-q', '-f', 'raw', b, '1000'])).rc).toBe(0);
    expect(fs.statSync(b).size).toBe(fs.statSync(a).size);
  });

  const refused: [string, string[]][] = [
    ['cluster size not a power of two', ['-o', 'cluster_size=1000']],
    ['cluster size too large', ['-o', 'cluster_size=4M']],
    ['refcount width 3', ['-o', 'refcount_bits=3']],
    ['refcount width 128', ['-o', 'refcount_bits=128']],
    ['refcount width 8 on compat 0.10', ['-o', 'compat=0.10,refcount_bits=8']],
    ['lazy refcounts on compat 0.10', ['-o', 'compat=0.10,lazy_refcounts=on']],
    ['extended L2 with 4 KiB clusters', ['-o', 'extended_l2=on,cluster_size=4k']],
    ['zstd on compat 0.10', ['-o', 'compat=0.10,compression_type=zstd']],
    ['unknown option', ['-o', 'foo=1']],
    ['bad boolean', ['-o', 'lazy_refcounts=maybe']],
    ['bad compat', ['-o', 'compat=2']],
    ['size twice', ['-o', 'size=1M']],
    ['a missing backing file', ['-b', 'x.qcow2']],
    ['a missing backing file, -F given', ['-b', 'x.qcow2', '-F', 'qcow2']],
    ['backing file without format, -u', ['-u', '-b', 'x.qcow2']],
  ];
  for (const [what, args] of refused) {
    it(`refuses ${what} as qemu-img does`, async () => {
      const a = fresh();
      const q = await qemuImg(['create', '-q', '-f', 'qcow2', ...args, a, '1M']);
      const r = await ours(dir, ['create', '-q', '-f', 'qcow2', ...args, a, '1M']);
      expect(q.rc).toBe(1);
      expect(r.rc).toBe(1);
      // Our errors are one line; qemu-img sometimes continues on a second.
      expect(asQemu(r.stderr)).toBe(q.stderr.trim().replace(/\n/g, '; '));
      expect(fs.existsSync(a)).toBe(false);
    });
  }

  it('refuses a bad size as qemu-img does', async () => {
    const q = await qemuImg(['create', '-q', '-f', 'qcow2', fresh(), '1Q']);
    const r = await ours(dir, ['create', '-q', '-f', 'qcow2', fresh(), '1Q']);
    expect(r.rc).toBe(q.rc);
    expect(asQemu(r.stderr)).toContain('Invalid image size specified. You may use k, M, G, T, P or E suffixes for');
  });
});

describe('info', () => {
  it('agrees with qemu-img info (json and human) on an image with snapshots and a backing file', async () => {
    const base = await written();
    const top = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=2,lazy_refcounts=on', '-b', path.basename(base), '-F', 'qcow2', top]), 'create');
    ok(await qemuIo(['-f', 'qcow2', '-c', 'write -P 9 8k 8k', top]), 'qemu-io');
    ok(await qemuImg(['snapshot', '-c', 'one', top]), 'snapshot');
    ok(await qemuImg(['snapshot', '-c', 'two', top]), 'snapshot');
    for (const f of [top, base]) {
      const q = ok(await qemuImg(['info', '--output=json', f]), 'qemu-img info');
      const r = await ours(dir, ['info', '--output', 'json', f]);
      expect(r.rc).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual(JSON.parse(q.stdout));
      const qh = ok(await qemuImg(['info', f]), 'qemu-img info');
      const rh = await ours(dir, ['info', f]);
      expect(rh.stdout).toBe(qh.stdout);
    }
  });

  it('--backing-chain: raw ← qcow2 ← qcow2, json and human', async () => {
    const base = fresh('raw');
    const mid = fresh();
    const top = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'raw', base, '1M']), 'create');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', path.basename(base), '-F', 'raw', mid]), 'create');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-b', path.basename(mid), '-F', 'qcow2', top]), 'create');
    for (const [f, cwdName] of [
      [top, top],
      [top, path.basename(top)],
    ] as const) {
      const q = ok(await qemuImg(['info', '--backing-chain', '--output=json', f]), 'qemu-img info');
      const r = await ours(dir, ['info', '--backing-chain', '--output=json', cwdName]);
      expect(r.rc).toBe(0);
      const mine = JSON.parse(r.stdout) as Record<string, unknown>[];
      // Run from the image's directory, our names are relative where qemu-img's (run elsewhere) are absolute.
      const abs = (x: unknown) => (typeof x === 'string' && !x.startsWith('/') ? path.join(dir, x) : x);
      const norm = (list: Record<string, unknown>[]) =>
        list.map((i) => ({ ...i, filename: abs(i['filename']), 'full-backing-filename': abs(i['full-backing-filename']) }));
      expect(norm(mine)).toEqual(norm(JSON.parse(q.stdout)));
    }
    const qh = ok(await qemuImg(['info', '--backing-chain', top]), 'qemu-img info');
    expect((await ours(dir, ['info', '--backing-chain', top])).stdout).toBe(qh.stdout);
  });

  it('agrees on a compat 0.10 image and on a raw file', async () => {
    const v2 = await written('compat=0.10');
    const raw = fresh('raw');
    ok(await qemuImg(['create', '-q', '-f', 'raw', raw, '3M']), 'create raw');
    for (const f of [v2, raw]) {
      const q = ok(await qemuImg(['info', '--output=json', f]), 'qemu-img info');
      const r = await ours(dir, ['info', '--output=json', f]);
      expect(JSON.parse(r.stdout)).toEqual(JSON.parse(q.stdout));
    }
  });
});

describe('info on an image with persistent bitmaps', () => {
  it('lists them as qemu-img does (json and human)', async () => {
    const f = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', f, '1M']), 'create');
    ok(await qemuImg(['bitmap', '--add', f, 'b0']), 'bitmap --add');
    ok(await qemuImg(['bitmap', '--add', '-g', '128k', '--disable', f, 'b1']), 'bitmap --add');
    const q = ok(await qemuImg(['info', '--output=json', f]), 'qemu-img info');
    const r = await ours(dir, ['info', '--output=json', f]);
    expect(JSON.parse(r.stdout)).toEqual(JSON.parse(q.stdout));
    expect((await ours(dir, ['info', f])).stdout).toBe(ok(await qemuImg(['info', f]), 'qemu-img info').stdout);
  });
});

describe('check', () => {
  it('same JSON, human report and exit code as qemu-img check on clean images', async () => {
    for (const f of [await written(), await written('cluster_size=512,refcount_bits=1', '2M'), await written('cluster_size=1024,compat=0.10', '2M')]) {
      const q = await qemuImg(['check', '--output=json', f]);
      const r = await ours(dir, ['check', '--output=json', f]);
      expect(r.rc).toBe(q.rc);
      expect(JSON.parse(r.stdout)).toEqual(JSON.parse(q.stdout));
      const qh = await qemuImg(['check', f]);
      const rh = await ours(dir, ['check', f]);
      expect(rh.stdout).toBe(qh.stdout);
      expect(rh.rc).toBe(qh.rc);
    }
  });

  it('a raw image: exit 63 as qemu-img', async () => {
    const raw = fresh('raw');
    ok(await qemuImg(['create', '-q', '-f', 'raw', raw, '1M']), 'create');
    const q = await qemuImg(['check', raw]);
    const r = await ours(dir, ['check', raw]);
    expect(q.rc).toBe(63);
    expect(r.rc).toBe(63);
  });

  it('a leaked cluster: exit 3, the same counts, and -r leaks repairs it', async () => {
    const f = await written('cluster_size=4096,refcount_bits=16');
    // Leak a cluster the way a crash would: the file grows by a cluster whose
    // refcount is set but which nothing references. Easiest faithful way: let
    // QEMU allocate it, then drop the L2 reference with a raw edit.
    const info = await imgInfo(f);
    expect(info['cluster-size']).toBe(4096);
    const map = JSON.parse(ok(await qemuImg(['map', '--output=json', '-f', 'qcow2', f]), 'map').stdout) as { start: number; length: number; data: boolean; offset?: number }[];
    const data = map.find((m) => m.data && m.offset !== undefined && m.start === 0)!;
    expect(data).toBeDefined();
    // Find the L2 entry that holds data.offset and zero it (8 bytes, big endian).
    const bytes = fs.readFileSync(f);
    const target = BigInt(data.offset!) | (1n << 63n);
    let at = -1;
    for (let i = 0; i + 8 <= bytes.length; i += 8) {
      if (bytes.readBigUInt64BE(i) === target) {
        at = i;
        break;
      }
    }
    expect(at).toBeGreaterThan(0);
    bytes.writeBigUInt64BE(0n, at);
    fs.writeFileSync(f, bytes);
    const g = await copy(f);
    const q = await qemuImg(['check', '--output=json', f]);
    const r = await ours(dir, ['check', '--output=json', f]);
    expect(q.rc).toBe(3);
    expect(r.rc).toBe(3);
    expect(JSON.parse(r.stdout)).toEqual(JSON.parse(q.stdout));
    const qr = await qemuImg(['check', '-r', 'leaks', '--output=json', g]);
    const rr = await ours(dir, ['check', '-r', 'leaks', '--output=json', f]);
    expect(rr.rc).toBe(qr.rc);
    expect(JSON.parse(rr.stdout)).toEqual({ ...JSON.parse(qr.stdout), filename: f });
    await expectClean(f);
  });
});

describe('check on a dirty lazy-refcounts image (left by a crash)', () => {
  it('same report as qemu-img; -r all repairs it as qemu-img does', async () => {
    const a = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,cluster_size=4096', a, '1M']), 'create');
    await qemuIo(['-f', 'qcow2', ...ioArgs(['write -P 1 0 64k', 'write -P 2 200k 4k', 'flush', 'write -P 3 300k 8k', 'abort']), a]);
    expect((await imgInfo(a))['dirty-flag']).toBe(true);
    const b = await copy(a);
    const q = await qemuImg(['check', '--output=json', a]);
    const r = await ours(dir, ['check', '--output=json', b]);
    expect(r.rc).toBe(q.rc);
    expect({ ...JSON.parse(r.stdout), filename: a }).toEqual(JSON.parse(q.stdout));
    expect(r.stderr).toBe(q.stderr);
    const qr = await qemuImg(['check', '-r', 'all', '--output=json', a]);
    const rr = await ours(dir, ['check', '-r', 'all', '--output=json', b]);
    expect(rr.rc).toBe(qr.rc);
    expect({ ...JSON.parse(rr.stdout), filename: a }).toEqual(JSON.parse(qr.stdout));
    await expectClean(b);
    await expectIdentical(a, b);
  });
});

describe('snapshot', () => {
  it('create, list, apply, delete as qemu-img does', async () => {
    const a = await written();
    const b = await copy(a);
    const steps: string[][] = [['-c', 'first'], ['-c', 'second'], ['-a', 'first'], ['-d', 'second'], ['-c', 'third'], ['-a', '2'], ['-d', 'first'], ['-c', 'first']];
    for (const s of steps) {
      ok(await qemuImg(['snapshot', ...s, a]), `qemu-img snapshot ${s.join(' ')}`);
      const r = await ours(dir, ['snapshot', ...s, b]);
      expect({ rc: r.rc, err: r.stderr }, `snapshot ${s.join(' ')}`).toEqual({ rc: 0, err: '' });
      await expectClean(b);
      await expectIdentical(a, b);
      // Between steps, write something different so apply has work to do.
      for (const f of [a, b]) ok(await qemuIo(['-f', 'qcow2', '-c', `write -P ${seq % 200} ${(seq % 7) * 4096} 8k`, f]), 'qemu-io');
      const qa = (await imgInfo(a)).snapshots ?? [];
      const qb = (await imgInfo(b)).snapshots ?? [];
      expect(qb.map((x) => [x.id, x.name, x['vm-state-size']])).toEqual(qa.map((x) => [x.id, x.name, x['vm-state-size']]));
    }
    const ql = ok(await qemuImg(['snapshot', '-l', b]), 'qemu-img snapshot -l');
    const rl = await ours(dir, ['snapshot', '-l', b]);
    expect(rl.stdout).toBe(ql.stdout);
  });

  it('a missing snapshot: exit 1, image unchanged', async () => {
    const a = await written();
    const before = fs.readFileSync(a);
    for (const s of [['-a', 'nope'], ['-d', 'nope']]) {
      const r = await ours(dir, ['snapshot', ...s, a]);
      expect(r.rc).toBe(1);
      expect(r.stderr).toMatch(/^qcow2-harness: Could not (apply|delete) snapshot 'nope': .+\n$/);
    }
    expect(fs.readFileSync(a).equals(before)).toBe(true);
  });
});

describe('amend', () => {
  for (const bits of [1, 2, 4, 8, 32, 64, 16]) {
    it(`refcount_bits=${bits}`, async () => {
      const a = await written('cluster_size=4096,refcount_bits=16');
      ok(await qemuImg(['snapshot', '-c', 's', a]), 'snapshot');
      const b = await copy(a);
      const q = await qemuImg(['amend', '-o', `refcount_bits=${bits}`, a]);
      const r = await ours(dir, ['amend', '-o', `refcount_bits=${bits}`, b]);
      expect(r.rc).toBe(q.rc);
      await expectClean(b);
      await expectIdentical(a, b);
      expect(shape(await imgInfo(b))).toEqual(shape(await imgInfo(a)));
    });
  }

  it('compat 1.1 → 0.10 → 1.1 and lazy refcounts on/off', async () => {
    const a = await written('cluster_size=8192');
    const b = await copy(a);
    for (const o of ['compat=0.10', 'compat=1.1', 'lazy_refcounts=on', 'lazy_refcounts=off']) {
      const q = await qemuImg(['amend', '-o', o, a]);
      const r = await ours(dir, ['amend', '-o', o, b]);
      expect(r.rc, o).toBe(q.rc);
      await expectClean(b);
      await expectIdentical(a, b);
      expect(shape(await imgInfo(b)), o).toEqual(shape(await imgInfo(a)));
    }
  });

  it('refuses a narrower refcount that cannot hold a count, and downgrades v2 cannot express, image untouched', async () => {
    const snap = await written();
    ok(await qemuImg(['snapshot', '-c', 'a', snap]), 'snapshot');
    ok(await qemuImg(['snapshot', '-c', 'b', snap]), 'snapshot');
    const ext = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', ext, '1M']), 'create');
    const rc8 = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=8', rc8, '1M']), 'create');
    for (const [f, o] of [
      [snap, 'refcount_bits=1'],
      [ext, 'compat=0.10'],
      [rc8, 'compat=0.10'],
    ] as const) {
      const mine = await copy(f);
      const before = fs.readFileSync(mine);
      const q = await qemuImg(['amend', '-o', o, f]);
      const r = await ours(dir, ['amend', '-o', o, mine]);
      expect(q.rc, `${o}: qemu-img`).toBe(1);
      expect(r.rc, `${o}: ours`).toBe(1);
      expect(r.stderr).toMatch(/^qcow2-harness: [^\n]+\n$/);
      expect(fs.readFileSync(mine).equals(before), `${o}: image untouched`).toBe(true);
    }
  });

  it('refuses what qemu-img refuses, image untouched', async () => {
    const a = await written('compat=0.10');
    const before = fs.readFileSync(a);
    for (const o of ['cluster_size=4096', 'refcount_bits=3', 'lazy_refcounts=on']) {
      const q = await qemuImg(['amend', '-o', o, a]);
      const r = await ours(dir, ['amend', '-o', o, a]);
      expect(q.rc, o).toBe(1);
      expect(r.rc, o).toBe(1);
      expect(fs.readFileSync(a).equals(before)).toBe(true);
    }
  });
});

describe('resize', () => {
  it('grow, relative grow, shrink as qemu-img does', async () => {
    const a = await written('cluster_size=4096', '3M');
    const b = await copy(a);
    for (const args of [['+1M'], ['10M'], ['--shrink', '2M'], ['--shrink', '-512k']]) {
      const size = args.at(-1)!;
      const flags = args.slice(0, -1);
      ok(await qemuImg(['resize', '-q', ...flags, a, size]), `qemu-img resize ${args.join(' ')}`);
      const r = await ours(dir, ['resize', ...flags, b, size]);
      expect(r.rc, args.join(' ')).toBe(0);
      expect(r.stdout).toBe('Image resized.\n');
      await expectClean(b);
      await expectIdentical(a, b);
      expect((await imgInfo(b))['virtual-size']).toBe((await imgInfo(a))['virtual-size']);
    }
  });

  it('a shrink without --shrink is refused, with the warning qemu-img adds after the refusal', async () => {
    const a = await written();
    const b = await copy(a);
    const q = await qemuImg(['resize', b, '-64k']);
    const r = await ours(dir, ['resize', a, '-64k']);
    expect(r.rc).toBe(1);
    expect(q.rc).toBe(1);
    expect(asQemu(r.stderr)).toBe(q.stderr.trim());
    await expectIdentical(a, b);
  });
});

describe('convert -O qcow2', () => {
  const variants: [string, string[]][] = [
    ['defaults', []],
    ['4 KiB clusters, refcount 1', ['-o', 'cluster_size=4096,refcount_bits=1']],
    ['compressed, zlib', ['-c']],
    ['compressed, zstd, 16 KiB clusters, extended L2', ['-c', '-o', 'compression_type=zstd,cluster_size=16k,extended_l2=on']],
    ['compat 0.10, compressed', ['-c', '-o', 'compat=0.10,cluster_size=8k']],
  ];
  for (const [what, args] of variants) {
    it(what, async () => {
      const src = await written('cluster_size=4096', '3M');
      ok(await qemuIo(['-f', 'qcow2', ...ioArgs(['write -P 0x61 1M 700k', 'write -P 0x62 2M 5']), src]), 'qemu-io');
      const dst = fresh();
      const r = await ours(dir, ['convert', '-O', 'qcow2', ...args, src, dst]);
      expect({ rc: r.rc, stderr: r.stderr }).toEqual({ rc: 0, stderr: '' });
      await expectClean(dst);
      await expectIdentical(src, dst);
      const check = await imgCheck(dst);
      if (args.includes('-c')) expect(check.json?.['compressed-clusters'] ?? 0).toBeGreaterThan(0);
      else expect(check.json?.['compressed-clusters'] ?? 0).toBe(0);
    });
  }

  it('from a snapshot, through a backing chain', async () => {
    const base = await written();
    const top = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-b', path.basename(base), '-F', 'qcow2', top]), 'create');
    ok(await qemuIo(['-f', 'qcow2', '-c', 'write -P 0x70 4k 4k', top]), 'qemu-io');
    ok(await qemuImg(['snapshot', '-c', 'snap', top]), 'snapshot');
    ok(await qemuIo(['-f', 'qcow2', '-c', 'write -P 0x71 0 64k', top]), 'qemu-io');
    const mine = fresh();
    const theirs = fresh();
    expect((await ours(dir, ['convert', '-l', 'snapshot.name=snap', '-O', 'qcow2', top, mine])).rc).toBe(0);
    ok(await qemuImg(['convert', '-l', 'snapshot.name=snap', '-O', 'qcow2', top, theirs]), 'qemu-img convert');
    await expectClean(mine);
    await expectIdentical(mine, theirs);
  });
});

describe('convert never replaces what is not a regular file', () => {
  it('refuses a symlink or a fifo as the destination and leaves it alone', async () => {
    const src = await written();
    const target = fresh('raw');
    fs.writeFileSync(target, 'keep me');
    const link = fresh('raw');
    fs.symlinkSync(target, link);
    const r = await ours(dir, ['convert', '-O', 'raw', src, link]);
    expect(r.rc).toBe(1);
    expect(r.stderr).toMatch(/^qcow2-harness: .+ is not a regular file.*\n$/);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readFileSync(target, 'utf8')).toBe('keep me');
    const fifo = fresh('fifo');
    await execa('mkfifo', [fifo]);
    const f = await ours(dir, ['convert', '-O', 'qcow2', src, fifo]);
    expect(f.rc).toBe(1);
    expect(fs.lstatSync(fifo).isFIFO()).toBe(true);
  });
});

describe('io on a raw file', () => {
  it('does what qemu-io does', async () => {
    const a = fresh('raw');
    const b = fresh('raw');
    for (const f of [a, b]) ok(await qemuImg(['create', '-q', '-f', 'raw', f, '1M']), 'create');
    const script = ['write -P 0x12 1000 5000', 'write -z 2k 1k', 'discard 512k 64k', 'read -P 0x12 3k 3000', 'write 1M 1', 'flush'];
    const q = await qemuIo(['-f', 'raw', ...ioArgs(script), a]);
    const r = await ours(dir, ['io', '-f', 'raw', b, ...ioArgs(script)]);
    expect(r.rc).toBe(q.rc);
    expect(fs.readFileSync(b).equals(fs.readFileSync(a))).toBe(true);
  });
});
