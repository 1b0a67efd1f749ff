/**
 * Divergences a differential sweep against qemu-img/qemu-io 7.2 found, each
 * pinned with the real tool as the oracle: the same command on the same
 * image (or on a copy, for writes) must print the same text and exit the same.
 */
import { execa } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { imgCompare, QEMU_IMG } from '../../src/qemu/index.js';
import { ioArgs, ok, ours, qemuImg, qemuIo, scratchDir, withoutTimings } from './helpers.js';

const dir = scratchDir('conform');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let seq = 0;
const fresh = (ext = 'qcow2') => path.join(dir, `c${++seq}.${ext}`);

/** Our words under qemu's program name; qemu-io's timing lines dropped. */
function normal(r: { rc: number; stdout: string; stderr: string }, tool: 'qemu-img' | 'qemu-io'): { rc: number; stdout: string; stderr: string } {
  return { rc: r.rc, stdout: withoutTimings(r.stdout), stderr: r.stderr.replace(/^qcow2-harness: /gm, `${tool}: `) };
}

/** qemu-img ARGS and our ARGS, both run in the scratch directory on relative names, must agree. */
async function sameImg(args: string[]): Promise<void> {
  const q = await execa(QEMU_IMG, args, { cwd: dir, reject: false, stdin: 'ignore', stripFinalNewline: false });
  const r = await ours(dir, args);
  expect(normal(r, 'qemu-img')).toEqual(normal({ rc: q.exitCode ?? -1, stdout: String(q.stdout), stderr: String(q.stderr) }, 'qemu-img'));
}

/** qemu-io and our io run the same commands on two copies of IMG: same output, same exit code, identical images after. */
async function sameIo(img: string, commands: string[], flags: string[] = []): Promise<void> {
  const a = fresh();
  const b = fresh();
  fs.copyFileSync(img, a);
  fs.copyFileSync(img, b);
  const q = await qemuIo([...flags, ...ioArgs(commands), a]);
  const r = await ours(dir, ['io', ...flags, ...ioArgs(commands), b]);
  expect(normal(r, 'qemu-io')).toEqual(normal(q, 'qemu-io'));
  const cmp = await imgCompare(a, b, { formatA: 'qcow2', formatB: 'qcow2' });
  expect(`${cmp.rc} ${cmp.stdout.trim()}`).toBe('0 Images are identical.');
}

async function qemuMade(opts: string, size: string, commands: string[]): Promise<string> {
  const f = fresh();
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), f, size]), 'create');
  if (commands.length) ok(await qemuIo(['-f', 'qcow2', ...ioArgs(commands), f]), 'qemu-io');
  return f;
}

describe('--output json is QEMU JSONWriter text (QDict bucket order, empty lists on two lines)', () => {
  it('check of an image with compressed and fragmented clusters', async () => {
    const f = await qemuMade('', '10M', ['write -P 1 0 64k', 'write -z 1M 64k', 'write -c 2M 64k']);
    await sameImg(['check', '--output', 'json', path.basename(f)]);
  });

  it('check of an image with leaks and corruptions (a lazy-refcount image killed mid-write)', async () => {
    const f = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', f, '8M']), 'create');
    await qemuIo(['-c', 'write -P 1 0 64k', '-c', 'abort', f]); // abort(3) leaves the image dirty: refcounts not written
    await sameImg(['check', '--output', 'json', path.basename(f)]);
  });

  it('check --image-opts names the image by its option string, as qemu-img does', async () => {
    const f = await qemuMade('', '4M', ['write -P 1 0 64k']);
    await sameImg(['check', '--output', 'json', '--image-opts', `driver=qcow2,file.filename=${path.basename(f)}`]);
  });

  it('info of an image with bitmaps, one disabled (an empty flags list)', async () => {
    const f = await qemuMade('', '8M', []);
    ok(await qemuImg(['bitmap', '--add', f, 'b0']), 'bitmap');
    ok(await qemuImg(['bitmap', '--add', '-g', '128k', f, 'b1']), 'bitmap');
    ok(await qemuImg(['bitmap', '--add', '--disable', f, 'b2']), 'bitmap');
    ok(await qemuIo(['-c', 'write -P 1 0 1M', f]), 'qemu-io');
    await sameImg(['info', '--output', 'json', path.basename(f)]);
    await sameImg(['info', '--output', 'json', '--backing-chain', path.basename(f)]);
  });

  it('info of an overlay with a snapshot (backing-filename-format comes before snapshots)', async () => {
    const base = await qemuMade('', '4M', ['write -P 1 0 1M']);
    const top = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-b', path.basename(base), '-F', 'qcow2', top]), 'create');
    ok(await qemuImg(['snapshot', '-c', 'snap', top]), 'snapshot');
    // The snapshot's date differs from run to run but is the same file for both tools.
    await sameImg(['info', '--output', 'json', path.basename(top)]);
  });

  it('a size that rounds to 1000 of its unit prints as %0.3g does (1e+03 KiB)', async () => {
    const f = await qemuMade('', '1023488', []);
    await sameImg(['info', path.basename(f)]);
  });
});

describe('qemu-io command conformance', () => {
  it('read -q suppresses the -v dump; options may follow the operands (getopt permutes)', async () => {
    const f = await qemuMade('', '1M', ['write -P 0x41 0 4k']);
    await sameIo(f, ['read -q -v 0 64', 'read 0 32 -v', 'write 512 512 -P 0x42', 'read -v 500 24', 'read 0 -5']);
  });

  it('requests past the end fail with EIO; lengths past BDRV_REQUEST_MAX_BYTES are refused', async () => {
    const f = await qemuMade('', '1M', []);
    await sameIo(f, ['read 1048064 1024', 'write 1048064 1024', 'write -z 1048064 1024', 'discard 1048064 1024', 'write -c 1M 64k', 'read 1T 1', 'read 0 3G', 'write 0 3G', 'discard 0 3G']);
  });

  it("write's option checks in qemu-io's order; a pattern range that starts past the read", async () => {
    const f = await qemuMade('', '1M', []);
    await sameIo(f, ['write -n 0 512', 'write -b -z 0 512', 'write -u -P 1 0 512', 'write -z -P 1 0 512', 'read -P 0 -s 10 0 5', 'read -P 0 -s 2 -l 3 0 5']);
  });

  it('length, map, alloc, readv, writev, aio_read, aio_write and aio_flush', async () => {
    const f = await qemuMade('cluster_size=4k', '8M', ['write -P 1 0 64k', 'write -z 300k 64k', 'write -P 5 1M 4k', 'write -c -P 7 1088k 4k']);
    await sameIo(f, [
      'length',
      'map',
      'alloc 0',
      'alloc 0 1M',
      'alloc 511',
      'alloc 4M 64k',
      'alloc 9M',
      'readv -P 1 0 512 3584',
      'readv -v 1M 16 16',
      'writev -P 3 2M 512 1k 64k',
      // qemu-io prints an aio request's lines when it completes: aio_flush after each keeps the order fixed.
      'aio_write -P 4 3M 8k 8k',
      'aio_flush',
      'aio_read -P 4 3M 16k',
      'aio_flush',
      'aio_read -P 9 3M 512',
      'aio_flush',
      // A successful aio_write -z is left out: qemu-io 7.2 never starts its clock, so its timing line is garbage.
      'aio_write -z 0 4k 4k',
      'aio_write -u 0 4k',
      'map',
      'length 1',
    ]);
  });

  it('a compressed write to an image with an external data file is ENOTSUP', async () => {
    const f = await qemuMade(`data_file=${fresh('data')}`, '1M', []);
    // Both copies share the data file the header names; a refused write changes neither.
    await sameIo(f, ['write -c 0 64k']);
  });
});

/** qemu-img ARGS(name) and ours on two copies of IMG of the same name in two directories: same words, same exit, same image after. */
async function sameImgOnCopies(img: string, args: (name: string) => string[]): Promise<void> {
  const name = path.basename(img);
  const [da, db] = [fs.mkdtempSync(path.join(dir, 'a-')), fs.mkdtempSync(path.join(dir, 'b-'))];
  fs.copyFileSync(img, path.join(da, name));
  fs.copyFileSync(img, path.join(db, name));
  const q = await execa(QEMU_IMG, args(name), { cwd: da, reject: false, stdin: 'ignore', stripFinalNewline: false });
  const r = await ours(db, args(name));
  expect(normal(r, 'qemu-img')).toEqual(normal({ rc: q.exitCode ?? -1, stdout: String(q.stdout), stderr: String(q.stderr) }, 'qemu-img'));
  const cmp = await imgCompare(path.join(da, name), path.join(db, name), { formatA: 'qcow2', formatB: 'qcow2' });
  expect(`${cmp.rc} ${cmp.stdout.trim()}`).toBe('0 Images are identical.');
}

describe('amend, resize, snapshot and bitmap refusals in qemu-img words', () => {
  it('amend: create-only options, the backing file, bad values, size', async () => {
    const f = await qemuMade('cluster_size=4k', '8M', ['write -P 1 0 1M']);
    for (const o of ['cluster_size=64k', 'encrypt.format=luks', 'backing_fmt=raw', 'compat=2', 'lazy_refcounts=maybe', 'refcount_bits=3', 'refcount_bits=8,compat=0.10', 'size=16M', 'size=512k', 'size=abc']) {
      await sameImgOnCopies(f, (n) => ['amend', '-o', o, n]);
    }
  });

  it('amend: what the engine refuses is worded as qcow2_amend_options words it', async () => {
    const el2 = await qemuMade('extended_l2=on', '4M', ['write -P 1 0 64k']);
    await sameImgOnCopies(el2, (n) => ['amend', '-o', 'compat=0.10', n]);
    const snap = await qemuMade('', '4M', ['write -P 1 0 64k']);
    ok(await qemuImg(['snapshot', '-c', 's', snap]), 'snapshot');
    await sameImgOnCopies(snap, (n) => ['amend', '-o', 'refcount_bits=1', n]);
  });

  it('resize: the shrink warning only when --shrink is missing; a size qemu cannot parse; an L1 table too large', async () => {
    const f = await qemuMade('cluster_size=512', '8M', ['write -P 1 0 8M']);
    await sameImgOnCopies(f, (n) => ['resize', n, '2M']);
    await sameImgOnCopies(f, (n) => ['resize', '--shrink', n, '2M']);
    await sameImgOnCopies(f, (n) => ['resize', n, 'abc']);
    await sameImgOnCopies(f, (n) => ['resize', n, '1P']);
  });

  it('snapshot: -a of an unknown snapshot, -a with bitmaps, -c with an empty name, -c that overflows refcount_bits=1', async () => {
    const f = await qemuMade('', '4M', ['write -P 1 0 64k']);
    await sameImgOnCopies(f, (n) => ['snapshot', '-a', 'nosuch', n]);
    await sameImgOnCopies(f, (n) => ['snapshot', '-c', '', n]);
    const bm = await qemuMade('', '4M', []);
    ok(await qemuImg(['snapshot', '-c', 's1', bm]), 'snapshot');
    ok(await qemuImg(['bitmap', '--add', '--disable', bm, 'b']), 'bitmap');
    await sameImgOnCopies(bm, (n) => ['snapshot', '-a', 's1', n]);
    // qemu-img leaves leaked clusters behind there (QEMU's own behaviour, not copied); words, exit code and content agree.
    const rc1 = await qemuMade('refcount_bits=1,cluster_size=512', '1M', ['write -P 1 0 64k']);
    await sameImgOnCopies(rc1, (n) => ['snapshot', '-c', 's', n]);
  });

  it('bitmap --merge looks the target up before the source', async () => {
    const f = await qemuMade('', '4M', []);
    await sameImgOnCopies(f, (n) => ['bitmap', '--merge', 'src', n, 'dst']);
  });
});

describe('open failures in qemu-img and qemu-io words', () => {
  it('a missing file, a directory, an image whose backing file is gone', async () => {
    fs.mkdirSync(path.join(dir, 'adir'), { recursive: true });
    for (const cmd of [['info'], ['check'], ['snapshot', '-l'], ['resize'], ['amend', '-o', 'lazy_refcounts=on']]) {
      const extra = cmd[0] === 'resize' ? ['1M'] : [];
      await sameImg([...cmd, 'nosuch.qcow2', ...extra]);
      await sameImg([...cmd, 'adir', ...extra]);
    }
    const q = await qemuIo(['-c', 'read 0 1', path.join(dir, 'nosuch.qcow2')]);
    const r = await ours(dir, ['io', '-c', 'read 0 1', 'nosuch.qcow2']);
    expect(normal(r, 'qemu-io')).toEqual(normal({ ...q, stderr: q.stderr.split(dir + '/').join('') }, 'qemu-io'));
    const top = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', top, '1M']), 'create');
    await sameImg(['info', path.basename(top)]);
    await sameImg(['info', '--output', 'json', path.basename(top)]);
  });

  it('an image another process holds: the lock hint on its own line; -r refuses writes as qemu-io does', async () => {
    const f = await qemuMade('', '1M', ['write -P 1 0 4k']);
    const holder = execa('qemu-io', [f], { stdin: 'pipe', reject: false });
    try {
      // qemu-io takes its locks at open, before reading its first command.
      for (let i = 0; i < 50 && (await qemuImg(['info', f])).rc === 0; i++) await new Promise((res) => setTimeout(res, 100));
      await sameImg(['info', path.basename(f)]);
      await sameImg(['check', path.basename(f)]);
      await sameImg(['resize', path.basename(f), '2M']);
      const q = await execa('qemu-io', ['-c', 'read 0 1', path.basename(f)], { cwd: dir, reject: false, stripFinalNewline: false });
      const r = await ours(dir, ['io', '-c', 'read 0 1', path.basename(f)]);
      expect(normal(r, 'qemu-io')).toEqual(normal({ rc: q.exitCode ?? -1, stdout: String(q.stdout), stderr: String(q.stderr) }, 'qemu-io'));
    } finally {
      holder.stdin?.end('quit\n');
      await holder;
    }
    await sameIo(f, ['write 0 512', 'read -P 1 0 4k', 'discard 0 4k'], ['-r']);
  });

  it('check -r leaks of a dirty image that needs a rebuild: "Check failed" and the errno alone', async () => {
    const f = fresh();
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', f, '8M']), 'create');
    await qemuIo(['-c', 'write -P 1 0 64k', '-c', 'abort', f]);
    // (qemu-img then marks the unrepaired image clean on close, QEMU's own behaviour; ours leaves it dirty.)
    await sameImgOnCopies(f, (n) => ['check', '-r', 'leaks', n]);
  });
});
