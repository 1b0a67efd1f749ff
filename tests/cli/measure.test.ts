/**
 * `measure` against the real `qemu-img measure` 7.2: the same sizes (human
 * and json), words and exit codes, for new images across cluster sizes,
 * refcount widths, extended L2, compat levels, preallocation modes, LUKS and
 * virtual sizes, and for existing images (data, zeros, compressed clusters,
 * backing chains, bitmaps, raw sources, snapshots).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fullyAllocatedBytes } from '../../src/qcow2/measure.js';
import { ioArgs, ok, ours, qemuImg, qemuIo, sameAsQemuImg, scratchDir, settle } from './helpers.js';

const dir = scratchDir('measure');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const at = (name: string) => path.join(dir, name);

let seq = 0;
async function made(opts: string, size: string, commands: string[], extra: string[] = []): Promise<string> {
  const name = `m${++seq}.qcow2`;
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), ...extra, at(name), size]), 'create');
  if (commands.length) ok(await qemuIo([...ioArgs(commands), at(name)]), 'qemu-io');
  settle(at(name));
  return name;
}

/** measure ARGS in human and json output; an image is read only without --size. */
async function sameBoth(args: string[]): Promise<string> {
  const readsImages = !args.includes('--size');
  const human = await sameAsQemuImg(dir, ['measure', ...args], { readsImages });
  await sameAsQemuImg(dir, ['measure', '--output', 'json', ...args], { readsImages });
  return human.stdout;
}

/** measure ARGS for a new image (--size): no image is read. */
const sameNew = (args: string[]) => sameAsQemuImg(dir, ['measure', ...args], { readsImages: false });

describe('measure --size: a new image', () => {
  it('cluster sizes, refcount widths, extended L2 and compat levels over a range of sizes', async () => {
    const sizes = ['0', '1000', '1M', '1G', '3G', '1T'];
    const options = ['', 'cluster_size=512', 'cluster_size=4k,refcount_bits=1', 'cluster_size=2M', 'refcount_bits=64', 'extended_l2=on', 'extended_l2=on,cluster_size=16k', 'compat=0.10', 'cluster_size=128k,refcount_bits=8,extended_l2=on'];
    for (const o of options) {
      for (const size of sizes) await sameNew(['-O', 'qcow2', ...(o ? ['-o', o] : []), '--size', size]);
    }
    await sameBoth(['-O', 'qcow2', '-o', 'cluster_size=2M,refcount_bits=1', '--size', '1P']);
  });

  it('preallocation modes, a backing file, options that change nothing, a raw target', async () => {
    for (const o of ['preallocation=metadata', 'preallocation=falloc', 'preallocation=full', 'backing_file=x.qcow2', 'lazy_refcounts=on,compression_type=zstd,nocow=on', 'size=5G']) {
      await sameBoth(['-O', 'qcow2', '-o', o, '--size', '1G']);
    }
    expect(await sameBoth(['--size', '1001'])).toBe('required size: 1024\nfully allocated size: 1024\n');
  });

  it('LUKS: the header area counts, by cipher; the secret must exist', async () => {
    const secret = ['--object', 'secret,id=s0,data=pw'];
    for (const o of ['', ',encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc', ',encrypt.cipher-alg=aes-192']) {
      await sameBoth([...secret, '-O', 'qcow2', '-o', `encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10${o}`, '--size', '1G']);
    }
    await sameNew(['-O', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=s0', '--size', '1G']);
    await sameNew(['-O', 'qcow2', '-o', 'encrypt.format=luks', '--size', '1G']);
  });

  it('the fixed point of the refcount metadata counts the refcount blocks themselves', () => {
    // 1 PiB at 2 MiB clusters, 1-bit refcounts: a case where the blocks need blocks of their own.
    expect(fullyAllocatedBytes(2 ** 50, 2 ** 21, 0, false)).toBe(1125904277307392);
  });
});

describe('measure FILE: an existing image', () => {
  it('data, zeros, a compressed cluster, a run starting inside a target cluster', async () => {
    const f = await made('cluster_size=4k', '10M', ['write -P 1 0 64k', 'write -z 1M 1M', 'write -c -P 2 3M 4k', 'write -P 3 5000k 6k']);
    for (const o of ['', 'cluster_size=64k', 'cluster_size=2M', 'cluster_size=512,extended_l2=off', 'backing_file=b.qcow2', 'preallocation=full']) {
      await sameBoth(['-O', 'qcow2', ...(o ? ['-o', o] : []), f]);
    }
    await sameBoth([f]);
  });

  it('a backing chain counts what the whole chain holds; a shorter backing file', async () => {
    const base = await made('', '2M', ['write -P 1 0 1M']);
    const top = await made('cluster_size=4k', '4M', ['write -P 2 3M 4k', 'write -z 0 64k'], ['-b', base, '-F', 'qcow2']);
    await sameBoth(['-O', 'qcow2', top]);
  });

  it('persistent bitmaps: counted for v3 targets of v3 sources only', async () => {
    const f = await made('', '64M', ['write -P 1 0 1M']);
    ok(await qemuImg(['bitmap', '--add', at(f), 'b0']), 'bitmap');
    ok(await qemuImg(['bitmap', '--add', '-g', '512', at(f), 'a-longer-bitmap-name']), 'bitmap');
    const human = await sameBoth(['-O', 'qcow2', f]);
    expect(human).toContain('bitmaps size: ');
    await sameBoth(['-O', 'qcow2', '-o', 'compat=0.10', f]);
    await sameBoth(['-O', 'qcow2', await made('compat=0.10', '1M', ['write -P 1 0 4k'])]);
  });

  it('raw sources (holes, an odd size), --image-opts, a snapshot, -f raw on a qcow2 image', async () => {
    const r = `r${++seq}.raw`;
    fs.writeFileSync(at(r), Buffer.alloc(1000, 1));
    await sameBoth(['-O', 'qcow2', r]);
    await sameBoth([r]);
    const holes = `r${++seq}.raw`;
    ok(await qemuImg(['create', '-q', '-f', 'raw', at(holes), '8M']), 'create');
    ok(await qemuIo(['-f', 'raw', ...ioArgs(['write -P 1 1M 64k']), at(holes)]), 'qemu-io');
    await sameBoth(['-O', 'qcow2', '-f', 'raw', holes]);
    const q = await made('', '4M', ['write -P 1 0 64k']);
    ok(await qemuImg(['snapshot', '-c', 'snap', at(q)]), 'snapshot');
    ok(await qemuIo([...ioArgs(['write -P 2 1M 1M']), at(q)]), 'qemu-io');
    for (const l of ['snap', 'snapshot.name=snap', 'snapshot.id=1', 'nosuch']) await sameBoth(['-O', 'qcow2', '-l', l, q]);
    await sameAsQemuImg(dir, ['measure', '-l', 'snap', '-f', 'raw', holes]);
    await sameBoth(['-O', 'qcow2', '--image-opts', `driver=qcow2,file.filename=${q}`]);
    await sameBoth(['-O', 'qcow2', '-f', 'raw', q]);
  });
});

describe('measure: refusals in qemu-img words', () => {
  it('operands, sizes, formats, --output', async () => {
    const f = await made('', '1M', []);
    for (const args of [[], ['--size', '1G', f], [f, f], ['-f', 'qcow2'], ['--size', 'abc'], ['--size', '-5'], ['--size', '9E'], ['-O', 'vmdk', '--size', '1G'], ['-O', 'foo', '--size', '1G'], ['--output', 'xml', '--size', '1G'], ['nosuch.qcow2']]) {
      const r = await sameAsQemuImg(dir, ['measure', ...args]);
      expect(r.rc).toBe(1);
    }
  });

  it('-o: types checked first (with "Invalid options for file format"), then qcow2_measure\'s own checks', async () => {
    const bad = [
      'foo=bar',
      'help',
      'cluster_size=abc',
      'size=abc',
      'refcount_bits=abc',
      'lazy_refcounts=maybe',
      'extended_l2=maybe',
      'cluster_size=3k',
      'cluster_size=0',
      'cluster_size=4M',
      'cluster_size=1k,extended_l2=on',
      'refcount_bits=3',
      'refcount_bits=128',
      'compat=0.10,refcount_bits=8',
      'compat=2',
      'compat=v3',
      'preallocation=bogus',
    ];
    for (const o of bad) {
      const r = await sameNew(['-O', 'qcow2', '-o', o, '--size', '1G']);
      expect(r.rc, o).toBe(1);
    }
    expect((await sameNew(['-O', 'qcow2', '-o', 'cluster_size=512', '--size', '100T'])).stderr).toContain('too large');
    await sameNew(['-O', 'raw', '-o', 'cluster_size=4k', '--size', '1G']);
  });

  it('--help', async () => {
    const r = await ours(dir, ['measure', '--help']);
    expect(r.rc).toBe(0);
    expect(r.stdout).toContain('fully allocated size');
  });
});
