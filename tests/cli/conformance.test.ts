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
