/**
 * `map` against the real `qemu-img map` 7.2 on the same images, made by
 * qemu-img and qemu-io: byte-identical stdout and stderr, the same exit code,
 * in human and json output, across backing chains (qcow2 and raw layers,
 * backing files shorter than the overlay), zero, compressed and preallocated
 * clusters, extended L2 subclusters, external data files, 512 B and 2 MiB
 * clusters, and sizes that end inside a cluster.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { QEMU_IMG, QEMU_IO } from '../../src/qemu/index.js';
import { ioArgs, ok, ours, qemuImg, qemuIo, sameAsQemuImg, scratchDir, settle } from './helpers.js';

const dir = scratchDir('map');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const at = (name: string) => path.join(dir, name);

let seq = 0;
/** A qcow2 image made by qemu-img create -o OPTS, then qemu-io COMMANDS; returns its name relative to dir. */
async function made(opts: string, size: string, commands: string[], extra: string[] = []): Promise<string> {
  const name = `m${++seq}.qcow2`;
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), ...extra, at(name), size]), 'create');
  if (commands.length) ok(await qemuIo([...ioArgs(commands), at(name)]), 'qemu-io');
  settle(at(name));
  return name;
}

/** Both outputs of map for one image, and the extra arguments given. */
async function sameMaps(name: string, extra: string[] = []): Promise<{ human: string; json: string }> {
  const human = await sameAsQemuImg(dir, ['map', ...extra, name]);
  const json = await sameAsQemuImg(dir, ['map', '--output', 'json', ...extra, name]);
  return { human: human.stdout, json: json.stdout };
}

describe('map: one image', () => {
  it('data, zero clusters with and without their host cluster, a discard, a partial last cluster', async () => {
    const f = await made('cluster_size=64k', '1000k', ['write -P 1 0 192k', 'write -z 64k 64k', 'write -P 2 256k 64k', 'write -z -u 256k 64k', 'write -P 3 512k 64k', 'discard 512k 64k', 'write -P 4 990k 10k']);
    const { json } = await sameMaps(f);
    // The case shows what it is meant to: an allocated zero cluster keeps its offset.
    expect(json).toContain('"present": true, "zero": true, "data": false, "offset"');
  });

  it('compressed clusters have no offset: json merges them, human output fails after what it printed', async () => {
    const f = await made('', '4M', ['write -P 1 0 64k', 'write -c -P 2 64k 64k', 'write -c -P 3 128k 64k', 'write -P 4 1M 64k']);
    const { human, json } = await sameMaps(f);
    expect(json).toContain('{ "start": 65536, "length": 131072, "depth": 0, "present": true, "zero": false, "data": true}');
    expect(human).toContain('0x50000');
  });

  it('extended L2: subclusters allocated, zero and unallocated in one cluster (no backing file)', async () => {
    const f = await made('extended_l2=on,cluster_size=64k', '1M', ['write -P 1 0 2k', 'write -P 2 8k 4k', 'write -z 16k 4k', 'write -P 3 64k 64k', 'write -z 80k 8k', 'write -P 5 996k 4k']);
    const { json } = await sameMaps(f);
    expect(json).toContain('"present": false, "zero": true, "data": false, "offset"');
  });

  it('512 B clusters: runs across many L2 tables, host offsets that jump', async () => {
    const f = await made('cluster_size=512', '2M', ['write -P 1 1M 512', 'write -P 2 0 1536', 'write -P 3 300k 64k', 'write -z 310k 1k', 'write -P 4 2047k 1k']);
    await sameMaps(f);
  });

  it('2 MiB clusters, a size inside the last cluster, a large sparse disk', async () => {
    const f = await made('cluster_size=2M', '5M', ['write -P 1 0 4k', 'write -P 2 4M 512', 'write -z 2M 2M']);
    await sameMaps(f);
    // 16 TiB: unallocated L1 entries, runs longer than qcow2_co_block_status's INT_MAX.
    const big = await made('cluster_size=2M', '16T', ['write -P 1 8T 1M']);
    await sameMaps(big);
  });

  it('compat=0.10, lazy refcounts, refcount_bits=1', async () => {
    await sameMaps(await made('compat=0.10', '2M', ['write -P 1 0 64k', 'write -P 2 1M 4k']));
    await sameMaps(await made('lazy_refcounts=on,refcount_bits=1', '2M', ['write -P 1 64k 128k']));
  });

  it('preallocation=metadata: data clusters that are holes of the file read as zeros (BDRV_BLOCK_RECURSE)', async () => {
    const f = await made('preallocation=metadata,cluster_size=64k', '4M', ['write -P 1 64k 4k', 'write -P 2 2M 128k']);
    const { json } = await sameMaps(f);
    expect(json).toContain('"zero": true, "data": true');
  });

  it('an external data file, raw or not: offsets are guest offsets in that file, named as the header names it (qemu-img resolves a relative name against its working directory)', async () => {
    for (const raw of ['off', 'on']) {
      // An absolute name: qemu-img resolves a relative one against its working directory, not the image's.
      const f = await made(`data_file=${at(`d-${raw}.data`)},data_file_raw=${raw},cluster_size=4k`, '256k', ['write -P 1 0 8k', 'write -z 8k 4k', 'write -P 2 100k 4k']);
      expect((await sameMaps(f)).human).toContain(`d-${raw}.data`);
    }
  });

  it('a relative data file name is taken from the working directory, and shown as the header names it', async () => {
    const { execa } = await import('execa');
    fs.mkdirSync(at('rel'), { recursive: true });
    await execa(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-o', 'data_file=rel/x.data', 'rel/x.qcow2', '1M'], { cwd: dir });
    await execa(QEMU_IO, ['-c', 'write -P 1 64k 64k', 'rel/x.qcow2'], { cwd: dir });
    expect((await sameMaps('rel/x.qcow2')).human).toContain('0x10000         0x10000         0x10000         rel/x.data');
  });

  it('a raw image: file holes are zeros, a data extent may end mid-sector at the end of the file', async () => {
    const f = 'r.raw';
    ok(await qemuImg(['create', '-q', '-f', 'raw', at(f), '1M']), 'create');
    ok(await qemuIo(['-f', 'raw', ...ioArgs(['write -P 1 64k 64k', 'write -P 2 512k 4k']), at(f)]), 'qemu-io');
    await sameMaps(f, ['-f', 'raw']);
    fs.appendFileSync(at(f), Buffer.alloc(100, 7)); // 1 MiB + 100 bytes: the size rounds up to a sector
    await sameMaps(f, ['-f', 'raw']);
    // A qcow2 image read as raw: the file's own layout.
    await sameMaps(await made('', '1M', ['write -P 1 0 64k']), ['-f', 'raw']);
  });

  it('--start-offset and --max-length, aligned or not, past the end, zero length', async () => {
    const f = await made('cluster_size=4k', '1M', ['write -P 1 0 64k', 'write -z 64k 8k', 'write -P 2 512k 4k']);
    for (const range of [['--start-offset', '4k'], ['-s', '1001', '-l', '65000'], ['--start-offset=512k', '--max-length=2k'], ['-s', '2M'], ['-l', '0'], ['-s', '0x1000', '-l', '1M']]) {
      await sameMaps(f, range);
    }
  });

  it('LUKS-encrypted: no offsets, so human output refuses the data', async () => {
    const f = `e${++seq}.qcow2`;
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=pw', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', at(f), '1M']), 'create');
    const opts = `driver=qcow2,file.filename=${f},encrypt.key-secret=s0`;
    ok(await qemuIo(['--object', 'secret,id=s0,data=pw', '--image-opts', ...ioArgs(['write -P 1 0 64k']), opts.replace(f, at(f))]), 'qemu-io');
    await sameMaps(opts, ['--object', 'secret,id=s0,data=pw', '--image-opts']);
    await sameAsQemuImg(dir, ['map', f]);
  });
});

describe('map: backing chains', () => {
  it('three qcow2 layers of different sizes: depth, present, zeros beyond a shorter backing file', async () => {
    const base = await made('cluster_size=64k', '2M', ['write -P 1 0 256k', 'write -P 2 1M 64k']);
    const mid = await made('cluster_size=4k', '3M', ['write -P 3 64k 8k', 'write -z 128k 64k', 'write -P 4 2M 64k'], ['-b', base, '-F', 'qcow2']);
    const top = await made('cluster_size=64k', '4M', ['write -P 5 0 64k', 'write -z -u 1M 64k', 'write -c -P 6 3M 64k'], ['-b', mid, '-F', 'qcow2']);
    const { json } = await sameAsQemuImg(dir, ['map', '--output', 'json', top]).then((r) => ({ json: r.stdout }));
    expect(json).toContain('"depth": 2');
    await sameAsQemuImg(dir, ['map', '--output', 'json', '-s', '64k', '-l', '2M', top]);
    // The compressed cluster is past the range human output walks with -l.
    await sameAsQemuImg(dir, ['map', '-l', '3M', top]);
  });

  it('extended L2 overlay: an allocated cluster whose unallocated subclusters come from the backing file', async () => {
    const base = await made('', '1M', ['write -P 1 0 1M']);
    const top = await made('extended_l2=on,cluster_size=32k', '1M', ['write -P 2 1k 1k', 'write -P 3 40k 4k', 'write -z 100k 1k'], ['-b', base, '-F', 'qcow2']);
    await sameMaps(top);
  });

  it('a raw backing file with holes, named through a subdirectory', async () => {
    fs.mkdirSync(at('sub'), { recursive: true });
    ok(await qemuImg(['create', '-q', '-f', 'raw', at('sub/base.raw'), '1M']), 'create');
    ok(await qemuIo(['-f', 'raw', ...ioArgs(['write -P 1 0 64k', 'write -P 2 700k 4k']), at('sub/base.raw')]), 'qemu-io');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', at('sub/top.qcow2'), '2M']), 'create');
    ok(await qemuIo([...ioArgs(['write -P 3 32k 64k']), at('sub/top.qcow2')]), 'qemu-io');
    await sameMaps('sub/top.qcow2');
  });

  it('an overlay whose backing file is gone, and a missing image', async () => {
    const top = `gone${++seq}.qcow2`;
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', 'nosuch.qcow2', '-F', 'qcow2', at(top), '1M']), 'create');
    await sameAsQemuImg(dir, ['map', top]);
    await sameAsQemuImg(dir, ['map', 'nosuch.qcow2']);
    // A raw file named as qcow2: qcow2_do_open's own sentence.
    fs.writeFileSync(at('plain.raw'), Buffer.alloc(4096, 1));
    expect((await sameAsQemuImg(dir, ['map', '-f', 'qcow2', 'plain.raw'])).stderr).toContain('Image is not in qcow2 format');
  });
});

describe('map, compare, measure: a corrupt image', () => {
  it("the same exit code, stdout and last line; the corruption itself in the engine's words", async () => {
    const f = await made('', '1M', ['write -P 1 0 64k']);
    // An unaligned data cluster offset in the first L2 entry (qcow2_get_host_offset's -EIO).
    const b = fs.readFileSync(at(f));
    const l2 = Number(b.readBigUInt64BE(Number(b.readBigUInt64BE(40))) & 0x00fffffffffffe00n);
    b.writeBigUInt64BE(b.readBigUInt64BE(l2) | 0x200n, l2);
    fs.writeFileSync(at(f), b);
    const { execa } = await import('execa');
    for (const args of [['map', f], ['map', '--output', 'json', f], ['compare', f, f], ['measure', '-O', 'qcow2', f]]) {
      const q = await execa(QEMU_IMG, args, { cwd: dir, reject: false, stripFinalNewline: false });
      const r = await ours(dir, args);
      const lastLine = (t: string) => t.trim().split('\n').at(-1)!.replace(/^qcow2-harness: /, 'qemu-img: ');
      expect([r.rc, r.stdout, lastLine(r.stderr)], args.join(' ')).toEqual([q.exitCode, String(q.stdout), lastLine(String(q.stderr))]);
      expect(r.stderr).toContain('corrupt image');
    }
  });
});

describe('map: command line', () => {
  it('bad sizes and --output in qemu-img words', async () => {
    const f = await made('', '1M', []);
    for (const args of [['--start-offset', 'abc'], ['--max-length', '-1'], ['-s', '9E'], ['--output', 'xml'], ['--max-length', '1.5']]) {
      const r = await sameAsQemuImg(dir, ['map', ...args, f]);
      expect(r.rc).toBe(1);
    }
  });

  it('--help', async () => {
    const r = await ours(dir, ['map', '--help']);
    expect(r.rc).toBe(0);
    expect(r.stdout).toContain('--start-offset');
  });
});
