/**
 * `compare` against the real `qemu-img compare` 7.2 on the same pairs of
 * images (made by qemu-img and qemu-io): the same words on stdout and stderr
 * and the same exit code, for identical content in different layouts,
 * mismatches (at qemu's 512-byte granularity from the start of each range it
 * compares), size mismatches with and without -s, strict block status
 * checks, backing chains, raw images, and open failures.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ioArgs, ok, ours, qemuImg, qemuIo, sameAsQemuImg, scratchDir, settle } from './helpers.js';

const dir = scratchDir('compare');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const at = (name: string) => path.join(dir, name);

let seq = 0;
async function made(opts: string, size: string, commands: string[], extra: string[] = []): Promise<string> {
  const name = `c${++seq}.qcow2`;
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), ...extra, at(name), size]), 'create');
  if (commands.length) ok(await qemuIo([...ioArgs(commands), at(name)]), 'qemu-io');
  settle(at(name));
  return name;
}

async function raw(size: string, commands: string[]): Promise<string> {
  const name = `r${++seq}.raw`;
  ok(await qemuImg(['create', '-q', '-f', 'raw', at(name), size]), 'create');
  if (commands.length) ok(await qemuIo(['-f', 'raw', ...ioArgs(commands), at(name)]), 'qemu-io');
  return name;
}

/** compare A B as qemu-img does it, and its first stdout line (which the case is meant to produce). */
async function same(args: string[]): Promise<{ rc: number; line: string }> {
  const r = await sameAsQemuImg(dir, ['compare', ...args]);
  return { rc: r.rc, line: r.stdout.split('\n')[0]! };
}

describe('compare: content', () => {
  it('the same content in different layouts is identical; -s tells the layouts apart', async () => {
    const a = await made('cluster_size=64k', '4M', ['write -P 1 0 128k', 'write -P 2 1M 64k']);
    const b = await made('cluster_size=4k', '4M', ['write -c -P 1 0 64k', 'write -P 1 64k 64k', 'write -z 256k 64k', 'write -P 2 1M 64k']);
    const c = await made('extended_l2=on,cluster_size=32k', '4M', ['write -P 1 0 128k', 'write -P 2 1M 64k', 'write -z 2M 1k']);
    expect(await same([a, b])).toEqual({ rc: 0, line: 'Images are identical.' });
    expect(await same([b, c])).toEqual({ rc: 0, line: 'Images are identical.' });
    expect((await same(['-s', a, b])).line).toMatch(/^Strict mode: Offset \d+ block status mismatch!$/);
    await same(['-s', a, a]);
  });

  it('a mismatch is reported at the start of its 512-byte piece; -q says nothing', async () => {
    const a = await made('', '4M', ['write -P 1 0 64k']);
    const b = await made('', '4M', ['write -P 1 0 64k', 'write -P 2 1000 1']);
    expect(await same([a, b])).toEqual({ rc: 1, line: 'Content mismatch at offset 512!' });
    expect(await same(['-q', a, b])).toEqual({ rc: 1, line: '' });
    // Data against unallocated zeros, each way round.
    const c = await made('', '4M', ['write -P 1 0 64k', 'write -P 3 3M 4k']);
    expect((await same([a, c])).line).toBe('Content mismatch at offset 3145728!');
    await same([c, a]);
  });

  it('a long data run is compared 2 MiB at a time: the offset counts from the chunk that holds it', async () => {
    const a = await made('cluster_size=2M', '8M', ['write -P 1 0 6M']);
    const b = await made('cluster_size=2M', '8M', ['write -P 1 0 6M', 'write -P 2 3333333 1']);
    expect((await same([a, b])).line).toBe('Content mismatch at offset 3333120!');
  });

  it('sizes that differ: a zero tail is a warning, data in it a mismatch, -s refuses at once', async () => {
    const small = await made('', '4M', ['write -P 1 0 64k']);
    const zeroTail = await made('', '5M', ['write -P 1 0 64k', 'write -z 4M 64k']);
    const dataTail = await made('', '5M', ['write -P 1 0 64k', 'write -P 3 4100k 1']);
    expect(await same([small, zeroTail])).toEqual({ rc: 0, line: 'Warning: Image size mismatch!' });
    expect(await same([dataTail, small])).toEqual({ rc: 1, line: 'Warning: Image size mismatch!' });
    expect(await same(['-s', small, zeroTail])).toEqual({ rc: 1, line: 'Strict mode: Image size mismatch!' });
  });

  it('backing chains: an overlay equals its flattened copy; zeros past a shorter backing file', async () => {
    const base = await made('', '2M', ['write -P 1 0 1M']);
    const top = await made('cluster_size=4k', '3M', ['write -P 2 512k 4k', 'write -z 100k 4k'], ['-b', base, '-F', 'qcow2']);
    const flat = `f${++seq}.qcow2`;
    ok(await qemuImg(['convert', '-O', 'qcow2', at(top), at(flat)]), 'convert');
    expect((await same([top, flat])).rc).toBe(0);
    await same(['-s', top, flat]);
    await same([base, top]);
  });

  it('raw images: file holes, an odd file size that rounds up to a sector, a qcow2 read as raw', async () => {
    const r = await raw('1M', ['write -P 1 0 64k', 'write -P 2 512k 4k']);
    const q = await made('', '1M', ['write -P 1 0 64k', 'write -P 2 512k 4k']);
    expect((await same([r, q])).rc).toBe(0);
    await same(['-s', r, q]);
    await same(['-f', 'raw', '-F', 'qcow2', q, q]);
    const odd = `o${++seq}.raw`;
    fs.writeFileSync(at(odd), Buffer.alloc(1000, 1));
    const q2 = await made('', '1024', ['write -P 1 0 1000', 'write -P 9 1010 1']);
    await same([odd, q2]);
    await same(['-s', q2, odd]);
  });

  it('a metadata-preallocated image and one with an external data file', async () => {
    const pre = await made('preallocation=metadata', '2M', ['write -P 1 64k 4k']);
    const plain = await made('', '2M', ['write -P 1 64k 4k']);
    const df = await made(`data_file=${at(`c${seq}.data`)},cluster_size=4k`, '2M', ['write -P 1 64k 4k']);
    expect((await same([pre, plain])).rc).toBe(0);
    await same(['-s', pre, plain]);
    await same([df, plain]);
    // Data at 0 in both: a status that asks the file (BDRV_BLOCK_RECURSE) is not a status mismatch; the holes after it are.
    const pa = await made('preallocation=metadata', '4M', ['write -P 1 0 64k']);
    const pb = await made('', '4M', ['write -P 1 0 64k']);
    expect((await same(['-s', pa, pb])).line).toBe('Strict mode: Offset 65536 block status mismatch!');
    await same(['-s', df, pre]);
  });
});

describe('compare: failures', () => {
  it('an image that cannot be opened is exit code 2, whichever it is', async () => {
    const a = await made('', '1M', []);
    expect((await same([a, 'nosuch.qcow2'])).rc).toBe(2);
    await same(['nosuch.qcow2', a]);
    const gone = await made('', '1M', [], ['-u', '-b', 'nosuch.qcow2', '-F', 'qcow2']);
    await same([a, gone]);
    await same(['-T', 'bogus', a, a]);
  });

  it('LUKS: the key through --image-opts, or qemu-img\'s refusal without it', async () => {
    const f = `e${++seq}.qcow2`;
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=pw', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', at(f), '1M']), 'create');
    const opts = `driver=qcow2,file.filename=${f},encrypt.key-secret=s0`;
    expect((await same(['--object', 'secret,id=s0,data=pw', '--image-opts', opts, opts])).rc).toBe(0);
    const plain = await made('', '1M', []);
    expect((await same([f, plain])).rc).toBe(2);
  });

  it('the wrong number of operands, --help', async () => {
    const r = await ours(dir, ['compare', 'one.qcow2']);
    expect(r.rc).toBe(1);
    expect(r.stderr).toContain('Expecting two image file names');
    const h = await ours(dir, ['compare', '--help']);
    expect(h.rc).toBe(0);
    expect(h.stdout).toContain('-s       strict');
  });
});
