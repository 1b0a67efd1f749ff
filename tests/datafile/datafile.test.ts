/**
 * External data files against the real QEMU 7.2 tools: images qemu-img
 * makes with data_file (raw on and off) take the same qemu-io script through
 * our io and through qemu-io and end up equal, with qemu-img check clean and
 * byte-identical L2 tables and data files; images our create makes are read
 * back by qemu-io; with data_file_raw the data file is the guest view;
 * refusals use qemu-img's words; hostile data file names fail cleanly.
 */
import { execa } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INCOMPAT_DATA_FILE } from '../../src/qcow2/format/constants.js';
import { encodeFirstCluster, readFirstCluster } from '../../src/qcow2/header-io.js';
import { FileStorage } from '../../src/qcow2/storage/file.js';
import { QEMU_IMG, QEMU_IO } from '../../src/qemu/index.js';
import { firstDiff, ioArgs, ok, ours, qemuImg, qemuIo, scratchDir } from '../cli/helpers.js';

let dir: string;
beforeAll(() => {
  dir = scratchDir('datafile');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let n = 0;
function names(tag: string): { img: string; data: string } {
  const i = n++;
  return { img: path.join(dir, `${tag}-${i}.qcow2`), data: path.join(dir, `${tag}-${i}.data`) };
}

async function qemuCreate(opts: string, size = '4M'): Promise<{ img: string; data: string }> {
  const f = names('q');
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${f.data}${opts}`, f.img, size]), 'qemu-img create');
  return f;
}

/** A script touching every path: partial and whole-cluster writes, discard, write-zeroes with and without unmap. */
const SCRIPT = [
  'write -P 0xaa 0 4k',
  'write -P 0xbb 512k 64k',
  'write -P 0xcc 130k 3k',
  'write -P 0x11 1M 200k',
  'discard 512k 64k',
  'write -z 0 64k',
  'write -P 0xdd 700k 3k',
  'write -z -u 1088k 64k',
  'write -z 702k 512',
  'write -P 0xee 3968k 128k',
  'discard 1M 64k',
];

function l2Bytes(file: string): Buffer {
  // Both tools put the first L2 table in the cluster after the L1 table's (cluster 4, 64 KiB clusters).
  return fs.readFileSync(file).subarray(4 * 65536, 5 * 65536);
}

describe.each([
  ['data_file', ''],
  ['data_file_raw', ',data_file_raw=on'],
  ['data_file with extended_l2', ',extended_l2=on'],
])('%s images made by qemu-img', (_name, opts) => {
  it('take a qemu-io script through our io exactly as through qemu-io', async () => {
    const a = await qemuCreate(opts);
    const b = await qemuCreate(opts);
    const r = await ours(dir, ['io', ...ioArgs(SCRIPT), a.img]);
    expect(r.stderr).toBe('');
    expect(r.rc).toBe(0);
    ok(await qemuIo([...ioArgs(SCRIPT), b.img]), 'qemu-io');
    const check = await qemuImg(['check', a.img]);
    expect(check.stdout + check.stderr).toContain('No errors were found on the image.');
    expect(check.rc).toBe(0);
    ok(await qemuImg(['compare', a.img, b.img]), 'qemu-img compare');
    expect(firstDiff(a.data, b.data)).toBe(-1);
    expect(l2Bytes(a.img).equals(l2Bytes(b.img))).toBe(true);
    if (opts.includes('data_file_raw')) {
      const guest = path.join(dir, `guest-${n++}.raw`);
      ok(await qemuImg(['convert', '-O', 'raw', a.img, guest]), 'qemu-img convert');
      expect(firstDiff(guest, a.data)).toBe(-1);
    }
  });

  it('convert the qemu-io written image to the same raw bytes as qemu-img does', async () => {
    const a = await qemuCreate(opts);
    ok(await qemuIo([...ioArgs(SCRIPT), a.img]), 'qemu-io');
    const mine = path.join(dir, `mine-${n++}.raw`);
    const theirs = path.join(dir, `theirs-${n++}.raw`);
    expect((await ours(dir, ['convert', '-O', 'raw', a.img, mine])).rc).toBe(0);
    ok(await qemuImg(['convert', '-O', 'raw', a.img, theirs]), 'qemu-img convert');
    expect(firstDiff(mine, theirs)).toBe(-1);
    const check = await ours(dir, ['check', a.img]);
    expect(check.stdout).toContain('No errors were found on the image.');
  });
});

describe('images our create makes', () => {
  it.each([[''], [',data_file_raw=on']])('with data_file%s are read back by qemu-io and pass qemu-img check', async (opts) => {
    const f = names('ours');
    const r = await ours(dir, ['create', '-q', '-f', 'qcow2', '-o', `data_file=${f.data}${opts}`, f.img, '2M']);
    expect(r.stderr).toBe('');
    expect(fs.statSync(f.data).size).toBe(2 << 20);
    expect((await ours(dir, ['io', '-c', 'write -P 0x5a 64k 100k', '-c', 'write -P 0xa5 0 512', f.img])).rc).toBe(0);
    const read = await qemuIo(['-c', 'read -P 0x5a 64k 100k', '-c', 'read -P 0xa5 0 512', '-c', 'read -P 0 1M 1M', f.img]);
    expect(read.stdout).not.toContain('Pattern verification failed');
    expect(read.rc).toBe(0);
    ok(await qemuImg(['check', f.img]), 'qemu-img check');
    const info = JSON.parse(ok(await qemuImg(['info', '--output=json', f.img]), 'info').stdout);
    expect(info['format-specific'].data['data-file']).toBe(f.data);
    expect(info['format-specific'].data['data-file-raw']).toBe(opts !== '');
    // The image file itself holds no guest data: header, refcount table and block, L1, L2.
    expect(fs.statSync(f.img).size).toBeLessThanOrEqual(5 * 65536);
  });

  it('match qemu-img create byte for byte apart from the data file name', async () => {
    for (const opts of ['', ',data_file_raw=on']) {
      const q = await qemuCreate(opts, '1M');
      const f = names('same');
      // Same name length, so the header extensions line up.
      const data = q.data.replace(/q-(\d+)\.data$/, (_m, d: string) => `s-${d}.data`);
      ok(await ours(dir, ['create', '-q', '-f', 'qcow2', '-o', `data_file=${data}${opts}`, f.img, '1M']), 'our create');
      const mine = fs.readFileSync(f.img);
      const theirs = fs.readFileSync(q.img);
      // QEMU writes an 8-byte L1 table at the file end; we pad it to its cluster (as for every image we create).
      const len = Math.min(mine.length, theirs.length);
      const diffs: number[] = [];
      for (let i = 0; i < len; i++) if (mine[i] !== theirs[i]) diffs.push(i);
      const nameAt = mine.indexOf(Buffer.from(data));
      expect(diffs.every((i) => i >= nameAt && i < nameAt + data.length)).toBe(true);
    }
  });
});

describe('refusals as qemu-img words them', () => {
  const cases: [string, string[]][] = [
    ['data_file_raw without data_file', ['-o', 'data_file_raw=on']],
    ['compat=0.10', ['-o', 'data_file=DATA,compat=0.10']],
    ['backing file with data_file_raw', ['-b', '/dev/null', '-F', 'raw', '-o', 'data_file=DATA,data_file_raw=on']],
    ['empty data file name', ['-o', 'data_file=']],
  ];
  it.each(cases)('%s', async (_name, args) => {
    const f = names('refuse');
    const argv = (img: string) => ['create', '-f', 'qcow2', ...args.map((a) => a.replace('DATA', f.data)), img, '1M'];
    const q = await qemuImg(argv(f.img));
    const r = await ours(dir, argv(f.img));
    expect(q.rc).toBe(1);
    expect(r.rc).toBe(1);
    expect(r.stderr.replace(/^qcow2-harness: /, '')).toBe(q.stderr.replace(/^qemu-img: /, ''));
  });

  it('snapshots and compressed writes', async () => {
    const a = await qemuCreate('');
    const q = await qemuImg(['snapshot', '-c', 's1', a.img]);
    const r = await ours(dir, ['snapshot', '-c', 's1', a.img]);
    expect([q.rc, r.rc]).toEqual([1, 1]);
    expect(r.stderr.replace(/^qcow2-harness: /, '')).toBe(q.stderr.replace(/^qemu-img: /, ''));
    const before = fs.readFileSync(a.img);
    const w = await ours(dir, ['io', '-c', 'write -c 0 64k', a.img]);
    expect(w.stdout + w.stderr).toContain('write failed: Operation not supported');
    expect(fs.readFileSync(a.img).equals(before)).toBe(true);
  });
});

/** Rewrites an image's first cluster: the data file name (undefined: no extension) and the data file bit. */
function setDataFile(img: string, name: string | undefined, bit = true): void {
  const storage = FileStorage.open(img, { lock: false });
  try {
    const fc = readFirstCluster(storage);
    if (name === undefined) delete fc.ext.dataFile;
    else fc.ext.dataFile = name;
    fc.header.incompatibleFeatures = bit ? fc.header.incompatibleFeatures | INCOMPAT_DATA_FILE : fc.header.incompatibleFeatures & ~INCOMPAT_DATA_FILE;
    storage.write(0, encodeFirstCluster(fc, 2 ** fc.header.clusterBits));
  } finally {
    storage.close();
  }
}

describe('check', () => {
  it('reports internal snapshots in an image with a data file as qemu-img check does', async () => {
    const f = names('snap');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', f.img, '1M']), 'create');
    ok(await qemuImg(['snapshot', '-c', 's1', f.img]), 'snapshot');
    fs.writeFileSync(f.data, Buffer.alloc(1 << 20));
    setDataFile(f.img, f.data);
    const q = await qemuImg(['check', '--output=json', f.img]);
    const r = await ours(dir, ['check', '--output=json', f.img]);
    expect(r.rc).toBe(q.rc);
    expect(JSON.parse(r.stdout)).toEqual(JSON.parse(q.stdout));
    expect(q.stderr).toContain('ERROR 1 snapshots in image with data file');
    expect(r.stderr).toContain('ERROR 1 snapshots in image with data file');
  });
});

describe('hostile data file names fail cleanly, as QEMU fails them', () => {
  const cases: [string, (d: string) => string | undefined, string][] = [
    ['a missing file', (d) => path.join(d, 'no-such.data'), 'No such file or directory'],
    ['a directory', (d) => d, 'Is a directory'],
    ['no name at all', () => undefined, "'data-file' is required for this image"],
  ];
  it.each(cases)('%s', async (_name, nameFor, why) => {
    const a = await qemuCreate('');
    setDataFile(a.img, nameFor(dir));
    const before = fs.readFileSync(a.img);
    for (const argv of [['io', '-c', 'write 0 4k', a.img], ['convert', '-O', 'raw', a.img, path.join(dir, 'x.raw')], ['check', a.img]]) {
      const r = await ours(dir, argv);
      expect(r.rc).toBe(1);
      expect(r.stderr).toContain(why);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(fs.readFileSync(a.img).equals(before)).toBe(true);
    const q = await qemuIo(['-c', 'read 0 4k', a.img]);
    expect(q.rc).toBe(1);
  });

  it('the image naming itself as its data file is refused by the lock, not corrupted', async () => {
    const a = await qemuCreate('');
    setDataFile(a.img, a.img);
    const before = fs.readFileSync(a.img);
    const r = await ours(dir, ['io', '-c', 'write -P 0x99 0 64k', a.img]);
    expect(r.rc).toBe(1);
    expect(r.stderr).toContain('lock');
    expect(fs.readFileSync(a.img).equals(before)).toBe(true);
  });

  it('a data file name on an image without the data file bit is ignored, as QEMU ignores it', async () => {
    const f = names('nobit');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', f.img, '1M']), 'create');
    setDataFile(f.img, '/nonexistent/data', false);
    const r = await ours(dir, ['io', '-c', 'write -P 0x42 0 4k', '-c', 'read -P 0x42 0 4k', f.img]);
    expect(r.rc).toBe(0);
    ok(await qemuIo(['-c', 'read -P 0x42 0 4k', f.img]), 'qemu-io');
  });
});

describe('resize', () => {
  it.each([[''], [',data_file_raw=on']])('grows and shrinks the data file as qemu-img resize does%s', async (opts) => {
    const a = await qemuCreate(opts, '1M');
    const b = await qemuCreate(opts, '1M');
    expect((await ours(dir, ['resize', a.img, '3M'])).rc).toBe(0);
    ok(await qemuImg(['resize', b.img, '3M']), 'qemu-img resize');
    expect(fs.statSync(a.data).size).toBe(fs.statSync(b.data).size);
    const mapA = ok(await qemuImg(['map', '--output=json', a.img]), 'map').stdout;
    const mapB = ok(await qemuImg(['map', '--output=json', b.img]), 'map').stdout;
    expect(mapA).toBe(mapB);
    expect((await ours(dir, ['resize', '--shrink', a.img, '512k'])).rc).toBe(0);
    ok(await qemuImg(['resize', '--shrink', b.img, '512k']), 'qemu-img resize');
    expect(fs.statSync(a.data).size).toBe(fs.statSync(b.data).size);
    ok(await qemuImg(['check', a.img]), 'check');
  });
});

describe('amend', () => {
  it('renames the data file, drops data_file_raw and refuses what qemu-img amend refuses, in its words', async () => {
    const a = await qemuCreate(',data_file_raw=on', '1M');
    const b = await qemuCreate(',data_file_raw=on', '1M');
    const plain = names('plain');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', plain.img, '1M']), 'create');
    const steps: [string, string][] = [
      [plain.img, `data_file=${plain.data}`],
      [plain.img, 'data_file_raw=on'],
      ['A', 'data_file_raw=off'],
      ['A', 'data_file_raw=on'],
      ['A', 'compat=0.10'],
      ['A', 'data_file=RENAMED'],
    ];
    for (const [which, opt] of steps) {
      const mine = which === 'A' ? a : which === plain.img ? plain : a;
      const theirs = which === 'A' ? b : mine;
      const q = await qemuImg(['amend', '-o', opt.replace('RENAMED', `${theirs.data}.renamed`), which === 'A' ? theirs.img : which]);
      const r = await ours(dir, ['amend', '-o', opt.replace('RENAMED', `${mine.data}.renamed`), which === 'A' ? mine.img : which]);
      expect(r.rc, `${opt}: ${r.stderr}`).toBe(q.rc);
      expect(r.stderr.replace(/^qcow2-harness: /, ''), opt).toBe(q.stderr.replace(/^qemu-img: /, ''));
    }
    const mi = JSON.parse(ok(await qemuImg(['info', '--output=json', a.img]), 'info').stdout)['format-specific'].data;
    const qi = JSON.parse(ok(await qemuImg(['info', '--output=json', b.img]), 'info').stdout)['format-specific'].data;
    expect(mi['data-file']).toBe(`${a.data}.renamed`);
    expect({ ...mi, 'data-file': undefined }).toEqual({ ...qi, 'data-file': undefined });
  });
});

describe('the data file name', () => {
  it('is taken relative to the current directory, as qemu-io 7.2 takes it', async () => {
    const sub = fs.mkdtempSync(path.join(dir, 'sub-'));
    const inDir = async (cwd: string, tool: string, args: string[]) => {
      const r = await execa(tool, args, { cwd, reject: false, env: { LC_ALL: 'C' } });
      return { rc: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
    };
    ok(await inDir(sub, QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-o', 'data_file=rel.data', 'img.qcow2', '1M']), 'create');
    ok(await inDir(sub, QEMU_IO, ['-c', 'write -P 0x77 0 4k', 'img.qcow2']), 'qemu-io');
    // From the scratch directory the name does not resolve (QEMU agrees), from sub/ it does.
    const q = await inDir(dir, QEMU_IO, ['-c', 'read 0 4k', path.join(sub, 'img.qcow2')]);
    const r = await ours(dir, ['io', '-c', 'read 0 4k', path.join(sub, 'img.qcow2')]);
    expect(q.rc).toBe(1);
    expect(q.stderr).toContain("Could not open 'rel.data': No such file or directory");
    expect(r.rc).toBe(1);
    expect(r.stderr).toContain("Could not open 'rel.data': No such file or directory");
    const here = await ours(sub, ['io', '-c', 'read -P 0x77 0 4k', 'img.qcow2']);
    expect(here.stdout).not.toContain('Pattern verification failed');
    expect(here.rc).toBe(0);
    // info needs no data file (qemu-img info opens with BDRV_O_NO_IO).
    const info = await ours(dir, ['info', path.join(sub, 'img.qcow2')]);
    expect(info.rc).toBe(0);
    expect(info.stdout).toContain('    data file: rel.data\n    data file raw: false\n');
  });
});
