/**
 * Image locking against the real QEMU 7.2 tools, in both directions: while
 * qemu-io holds an image our commands refuse what QEMU would refuse, with
 * QEMU's words, and leave the file untouched; while our engine holds an image
 * (in a child process) qemu-img and qemu-io refuse it; -U reads work; the lock
 * bytes we take are the ones QEMU takes; a killed holder leaves no lock.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ImageLockedError } from '../../src/qcow2/errors.js';
import { openQcow2File } from '../../src/qcow2/open-file.js';
import { QEMU_IO } from '../../src/qemu/index.js';
import { ok, ours, qemuImg, qemuIo, scratchDir } from '../cli/helpers.js';
import { bundle } from '../hostile/runner.js';

let dir: string;
let holderJs: string;
const children: ChildProcess[] = [];

beforeAll(async () => {
  dir = scratchDir('locking');
  holderJs = await bundle('tests/locking/holder.ts');
});
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let n = 0;
async function newImage(opts: string[] = []): Promise<string> {
  const file = path.join(dir, `img-${n++}.qcow2`);
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', ...opts, file, '1M']), 'qemu-img create');
  return file;
}

/** Resolves once the child has printed a line matching re on stdout. */
function waitFor(child: ChildProcess, re: RegExp, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      if (re.test(out)) {
        child.stdout!.off('data', onData);
        resolve(out);
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${what} exited (${code}) before ready: ${out}`)));
  });
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
}

/** qemu-io kept running on file, fed commands through a pipe; resolves once its first command ran (the image is open). */
async function qemuIoHolding(file: string, args: string[] = []): Promise<ChildProcess> {
  const child = spawn(QEMU_IO, [...args, file], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  const ready = waitFor(child, /read 512\/512 bytes[^]*qemu-io> /, 'qemu-io');
  child.stdin!.write('read 0 512\n');
  await ready;
  return child;
}

/**
 * Runs one command in a held qemu-io and waits for its output and the next
 * prompt. One command at a time: qemu-io reads its input through stdio, so
 * a second line that arrives in the same read waits for more input.
 */
async function qemuIoRun(child: ChildProcess, cmd: string, output: RegExp): Promise<void> {
  const done = waitFor(child, new RegExp(`${output.source}[^]*qemu-io> `), `qemu-io ${cmd}`);
  child.stdin!.write(`${cmd}\n`);
  await done;
}

/** Our engine holding file in another process (holder.ts). */
async function oursHolding(mode: 'rw' | 'ro' | 'ro-shared' | 'raw-rw', file: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [holderJs, mode, file], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  const line = await waitFor(child, /\n/, 'holder');
  if (!line.startsWith('ready')) throw new Error(`holder could not open ${file}: ${line}`);
  return child;
}

/** The OFD read locks on file, as "start-end" ranges split into single bytes, from /proc/locks. */
function lockedBytes(file: string): number[] {
  const ino = fs.statSync(file).ino;
  const bytes: number[] = [];
  for (const line of fs.readFileSync('/proc/locks', 'utf8').split('\n')) {
    const m = /OFDLCK\s+ADVISORY\s+READ\s+\S+\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s+(\d+)\s+(\d+)/.exec(line);
    if (!m || Number(m[1]) !== ino) continue;
    for (let b = Number(m[2]); b <= Number(m[3]); b++) bytes.push(b);
  }
  return bytes.sort((a, b) => a - b);
}

describe('qemu-io holds an image read-write', () => {
  it('our io write is refused with QEMU\'s message and the file stays byte-for-byte the same', async () => {
    const file = await newImage();
    const q = await qemuIoHolding(file);
    await qemuIoRun(q, 'write -P 0xab 0 4k', /wrote 4096\/4096/);
    await qemuIoRun(q, 'flush', /^/);
    const before = fs.readFileSync(file);
    const r = await ours(dir, ['io', path.basename(file), '-c', 'write -P 0xcd 0 4k']);
    expect(r.rc).toBe(1);
    expect(r.stderr).toBe(
      `qcow2-harness: can't open device ${path.basename(file)}: Failed to get "write" lock\nIs another process using the image [${path.basename(file)}]?\n`,
    );
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    // Whatever our command, nothing is written: create and convert onto it are refused too.
    const c = await ours(dir, ['create', '-q', '-f', 'qcow2', path.basename(file), '2M']);
    expect(c.rc).toBe(1);
    expect(c.stderr).toContain('Failed to get "write" lock; Is another process using the image');
    const base = await newImage();
    const v = await ours(dir, ['convert', '-O', 'qcow2', base, path.basename(file)]);
    expect(v.rc).toBe(1);
    expect(v.stderr).toContain('Failed to get "write" lock');
    const s = await ours(dir, ['snapshot', '-c', 'x', file]);
    expect(s.rc).toBe(1);
    expect(s.stderr).toContain('Failed to get "write" lock');
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    q.stdin!.end();
    await exited(q);
    // Once qemu-io is gone the same write goes through.
    ok(await ours(dir, ['io', file, '-c', 'write -P 0xcd 0 4k']), 'our io after qemu-io quit');
    ok(await qemuIo(['-c', 'read -P 0xcd 0 4k', file]), 'qemu-io reads our write');
  });

  it('info and read-only io refuse without -U, and read the live image with -U', async () => {
    const file = await newImage();
    const q = await qemuIoHolding(file);
    await qemuIoRun(q, 'write -P 0x5a 64k 4k', /wrote 4096\/4096/);
    await qemuIoRun(q, 'flush', /^/);
    const info = await ours(dir, ['info', file]);
    expect(info.rc).toBe(1);
    expect(info.stderr).toContain(`Failed to get shared "write" lock\nIs another process using the image [${file}]?`);
    const ro = await ours(dir, ['io', '-r', file, '-c', 'read 0 512']);
    expect(ro.rc).toBe(1);
    expect(ro.stderr).toContain('Failed to get shared "write" lock');
    const shared = ok(await ours(dir, ['info', '-U', file]), 'info -U');
    expect(shared.stdout).toContain('file format: qcow2');
    ok(await ours(dir, ['info', '--force-share', '--output', 'json', file]), 'info --force-share');
    ok(await ours(dir, ['io', '-r', '-U', file, '-c', 'read -P 0x5a 64k 4k']), 'io -r -U sees what qemu-io wrote');
    ok(await ours(dir, ['check', '-U', file]), 'check -U');
    ok(await ours(dir, ['snapshot', '-l', '-U', file]), 'snapshot -l -U');
    ok(await ours(dir, ['convert', '-U', '-O', 'raw', file, path.join(dir, 'copy.raw')]), 'convert -U');
    // -U is for read-only access only, as in QEMU.
    const rw = await ours(dir, ['io', '-U', file, '-c', 'read 0 512']);
    expect(rw.rc).toBe(1);
    expect(rw.stderr).toContain('force-share=on can only be used with read-only images');
    const repair = await ours(dir, ['check', '-U', '-r', 'all', file]);
    expect(repair.rc).toBe(1);
    expect(repair.stderr).toContain('force-share=on can only be used with read-only images');
  });
});

describe('our engine holds an image', () => {
  it('read-write: qemu-img info and qemu-io write refuse with their lock errors; -U reads work', async () => {
    const file = await newImage();
    const h = await oursHolding('rw', file);
    const info = await qemuImg(['info', file]);
    expect(info.rc).toBe(1);
    expect(info.stderr).toContain(`Failed to get shared "write" lock\nIs another process using the image [${file}]?`);
    const w = await qemuIo(['-c', 'write 0 4k', file]);
    expect(w.rc).toBe(1);
    expect(w.stderr).toContain(`Failed to get "write" lock\nIs another process using the image [${file}]?`);
    ok(await qemuImg(['info', '-U', file]), 'qemu-img info -U');
    ok(await qemuIo(['-r', '-U', '-c', 'read 0 4k', file]), 'qemu-io -r -U');
    // A second open in any process, ours included, is refused the same way.
    const second = await ours(dir, ['io', file, '-c', 'write 0 512']);
    expect(second.rc).toBe(1);
    expect(second.stderr).toContain('Failed to get "write" lock');
    h.stdin!.end();
    await exited(h);
    expect(h.exitCode).toBe(0);
    ok(await qemuIo(['-c', 'write 0 4k', file]), 'qemu-io write after our holder closed');
  });

  it('the lock goes with the process: a killed holder leaves none', async () => {
    const file = await newImage();
    const h = await oursHolding('rw', file);
    expect(lockedBytes(file)).not.toEqual([]);
    expect((await qemuImg(['info', file])).rc).toBe(1);
    h.kill('SIGKILL');
    await exited(h);
    expect(lockedBytes(file)).toEqual([]);
    ok(await qemuImg(['info', file]), 'qemu-img info after the holder was killed');
    ok(await qemuIo(['-c', 'write 0 4k', file]), 'qemu-io write after the holder was killed');
  });

  it('read-only opens on both sides coexist, and both refuse a writer', async () => {
    const file = await newImage();
    const h = await oursHolding('ro', file);
    ok(await qemuImg(['info', file]), 'qemu-img info beside our read-only open');
    ok(await qemuIo(['-r', '-c', 'read 0 4k', file]), 'qemu-io -r beside our read-only open');
    const w = await qemuIo(['-c', 'write 0 4k', file]);
    expect(w.rc).toBe(1);
    expect(w.stderr).toContain('Failed to get "write" lock');
    h.stdin!.end();
    await exited(h);
    const q = await qemuIoHolding(file, ['-r']);
    ok(await ours(dir, ['info', file]), 'our info beside qemu-io -r');
    ok(await ours(dir, ['io', '-r', file, '-c', 'read 0 4k']), 'our io -r beside qemu-io -r');
    const ow = await ours(dir, ['io', file, '-c', 'write 0 4k']);
    expect(ow.rc).toBe(1);
    expect(ow.stderr).toContain('Failed to get "write" lock');
    q.stdin!.end();
  });

  it('a backing file is held read-only: it reads beside us, a writer is refused', async () => {
    const base = await newImage();
    const top = await newImage(['-b', base, '-F', 'qcow2']);
    const h = await oursHolding('rw', top);
    ok(await qemuImg(['info', base]), 'qemu-img info on the backing file');
    const w = await qemuIo(['-c', 'write 0 4k', base]);
    expect(w.rc).toBe(1);
    expect(w.stderr).toContain('Failed to get "write" lock');
    h.stdin!.end();
  });
});

describe('the lock bytes are the ones QEMU 7.2 takes', () => {
  const cases: { what: string; qemu: string[]; ours: 'rw' | 'ro' | 'ro-shared' | 'raw-rw'; raw?: boolean; backing?: boolean }[] = [
    { what: 'qcow2 read-write', qemu: [], ours: 'rw' },
    { what: 'qcow2 read-only', qemu: ['-r'], ours: 'ro' },
    { what: 'qcow2 read-only, force-share', qemu: ['-r', '-U'], ours: 'ro-shared' },
    { what: 'raw read-write', qemu: ['-f', 'raw'], ours: 'raw-rw', raw: true },
    { what: 'the backing file of a read-write qcow2', qemu: [], ours: 'rw', backing: true },
  ];
  for (const c of cases) {
    it(c.what, async () => {
      let file: string;
      let held: string;
      if (c.raw) {
        file = held = path.join(dir, `raw-${n++}.img`);
        fs.writeFileSync(file, Buffer.alloc(1 << 20));
      } else if (c.backing) {
        held = await newImage();
        file = await newImage(['-b', held, '-F', 'qcow2']);
      } else {
        file = held = await newImage();
      }
      const q = await qemuIoHolding(file, c.qemu);
      const theirs = lockedBytes(held);
      q.stdin!.end();
      await exited(q);
      expect(lockedBytes(held)).toEqual([]);
      const h = await oursHolding(c.ours, file);
      const mine = lockedBytes(held);
      h.stdin!.end();
      await exited(h);
      expect(theirs.length).toBeGreaterThan(0);
      expect(mine).toEqual(theirs);
    });
  }
});

describe('in one process', () => {
  it('two opens of one image conflict as two processes would (OFD locks)', async () => {
    const file = await newImage();
    const a = openQcow2File(file);
    try {
      expect(() => openQcow2File(file)).toThrow(ImageLockedError);
      expect(() => openQcow2File(file, { readOnly: true })).toThrow(/Failed to get shared "write" lock/);
      openQcow2File(file, { readOnly: true, forceShare: true }).close();
    } finally {
      a.close();
    }
    // Closing released everything.
    openQcow2File(file).close();
    expect(lockedBytes(file)).toEqual([]);
  });
});

describe('the addon', () => {
  it('tests and takes byte-range locks with explicit start, length and type, and rejects bad arguments', async () => {
    const { createRequire } = await import('node:module');
    const addon = createRequire(import.meta.url)(path.join(__dirname, '../../native/build/Release/ofd_lock.node')) as {
      setlk(fd: number, start: number, len: number, type: number): number;
      getlk(fd: number, start: number, len: number, type: number): number;
    };
    const file = path.join(dir, `addon-${n++}`);
    fs.writeFileSync(file, '');
    const a = fs.openSync(file, 'r+');
    const b = fs.openSync(file, 'r+');
    try {
      expect(addon.setlk(a, 100, 1, 1)).toBe(0);
      // Another open file description sees the shared lock when testing for an exclusive one, not for a shared one.
      expect(addon.getlk(b, 100, 1, 2)).toBe(1);
      expect(addon.getlk(b, 100, 1, 1)).toBe(0);
      expect(addon.getlk(b, 101, 1, 2)).toBe(0);
      // Never blocking: a conflicting exclusive lock fails at once with EAGAIN.
      expect(addon.setlk(b, 100, 1, 2)).toBe(-11);
      expect(addon.setlk(a, 100, 1, 0)).toBe(0);
      expect(addon.getlk(b, 100, 1, 2)).toBe(0);
      expect(addon.setlk(-1 >>> 1, 0, 1, 1)).toBe(-9);
      expect(() => addon.setlk(a, 0, 1, 3)).toThrow(RangeError);
      expect(() => addon.setlk(a, -1, 1, 1)).toThrow(RangeError);
      expect(() => addon.getlk(a, 0, 1, 0)).toThrow(RangeError);
      expect(() => (addon.setlk as (...x: unknown[]) => number)(a, 0)).toThrow(TypeError);
    } finally {
      fs.closeSync(a);
      fs.closeSync(b);
    }
  });
});
