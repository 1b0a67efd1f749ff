/**
 * One test per hostile-image bug the robustness sweep found, each against
 * qemu-img/qemu-io 7.2 on the same bytes: a FIFO as the image, a size not a
 * multiple of 512, NUL bytes inside names, a misaligned allocated zero
 * cluster, snapshot -c over a garbage L2 table, a host offset no refcount
 * table can cover. (check -r all's memory bound is the sweep's: every case
 * runs it under --max-old-space-size.)
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { HEADER_FIELDS } from '../../src/qcow2/format/index.js';
import { ok, ours, qemuImg, qemuIo, scratchDir } from '../cli/helpers.js';
import { bundle } from './runner.js';
import { sweepMutations } from './sweep-mutations.js';

const dir = scratchDir('hostile-regressions');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const MiB = 1024 * 1024;
const put64 = (p: string, at: number, v: bigint): void => {
  const b = fs.readFileSync(p);
  b.writeBigUInt64BE(v, at);
  fs.writeFileSync(p, b);
};

async function image(name: string, opts: string, size: string, writes: string[]): Promise<string> {
  const p = path.join(dir, name);
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), p, size]), 'create');
  if (writes.length) ok(await qemuIo(['-f', 'qcow2', ...writes.flatMap((w) => ['-c', w]), p]), 'qemu-io');
  return p;
}

/** Writes the named targeted mutation of `src` to `dst`. */
function mutate(src: string, name: string, dst: string): string {
  const m = sweepMutations(fs.readFileSync(src)).find((x) => x.name === name);
  if (!m) throw new Error(`no mutation ${name} for ${src}`);
  fs.writeFileSync(dst, m.apply());
  return dst;
}

/** Our built-from-source CLI in a child process, bounded in time: the FIFO test would block this process. */
async function cliChild(args: string[]): Promise<{ rc: number | null; stderr: string; timedOut: boolean }> {
  const main = await bundle('src/cli/main.ts');
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [main, ...args], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let timedOut = false;
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => {
      timedOut = true;
      c.kill('SIGKILL');
    }, 60_000);
    c.on('close', (rc) => {
      clearTimeout(t);
      resolve({ rc, stderr, timedOut });
    });
  });
}

describe('hostile-image regressions, as qemu-img 7.2', () => {
  test('a FIFO as the image is refused at once, in QEMU\'s words, by every command', async () => {
    const fifo = path.join(dir, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    // qemu-io opens O_RDWR, which does not wait for a writer, and gets raw_open_common's refusal
    // (qemu-img info opens O_RDONLY and waits forever: there we are better than QEMU).
    const q = await qemuIo(['-c', 'read 0 1', 'fifo'].map((a) => (a === 'fifo' ? fifo : a)));
    expect(q.stderr).toBe(`qemu-io: can't open device ${fifo}: 'file' driver requires '${fifo}' to be a regular file\n`);
    for (const args of [['info', 'fifo'], ['info', '-f', 'qcow2', 'fifo'], ['check', 'fifo'], ['convert', '-O', 'raw', 'fifo', 'out.raw'], ['snapshot', '-l', 'fifo'], ['resize', 'fifo', '1M']]) {
      const r = await cliChild(args);
      expect(r.timedOut, args.join(' ')).toBe(false);
      expect(r.rc, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toBe("qcow2-harness: Could not open 'fifo': 'file' driver requires 'fifo' to be a regular file\n");
    }
    for (const args of [['io', '-c', 'read 0 1', 'fifo'], ['io', '-r', '-c', 'read 0 1', 'fifo']]) {
      const r = await cliChild(args);
      expect(r.timedOut, args.join(' ')).toBe(false);
      expect(r.stderr, args.join(' ')).toBe("qcow2-harness: can't open device fifo: 'file' driver requires 'fifo' to be a regular file\n");
    }
  });

  test('a header size that is not a multiple of 512 reads as qemu-img shows it: rounded down', async () => {
    const p = await image('unaligned-size.qcow2', '', '10M', ['write -P 1 0 64k']);
    put64(p, HEADER_FIELDS.size.offset, BigInt(10 * MiB + 1));
    const before = fs.readFileSync(p);
    const q = JSON.parse(ok(await qemuImg(['info', '--output=json', p]), 'qemu-img info').stdout) as { 'virtual-size': number };
    const r = await ours(dir, ['info', '--output', 'json', p]);
    expect(r.rc).toBe(0);
    expect(q['virtual-size']).toBe(10 * MiB);
    expect((JSON.parse(r.stdout) as { 'virtual-size': number })['virtual-size']).toBe(q['virtual-size']);
    expect(fs.readFileSync(p).equals(before)).toBe(true);
    // The last sector is a full one, and nothing lies past it: as qemu-io.
    for (const cmd of [`read -P 0 ${10 * MiB - 512} 512`, `read ${10 * MiB} 1`]) {
      const qi = await qemuIo(['-r', '-f', 'qcow2', '-c', cmd, p]);
      const oi = await ours(dir, ['io', '-r', '-c', cmd, p]);
      expect(oi.rc === 0, cmd).toBe(!/failed/.test(qi.stdout + qi.stderr));
    }
  });

  test('a NUL byte ends the backing file name, the data file name and a snapshot name, as QEMU reads C strings', async () => {
    const base = await image('base.qcow2', '', '4M', ['write -P 0x3c 0 64k']);
    fs.copyFileSync(base, path.join(dir, 'base.'));
    const top = path.join(dir, 'nul-top.qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top]), 'create overlay');
    ok(await qemuImg(['snapshot', '-c', 'snap', top]), 'snapshot');
    const backing = mutate(top, 'nul:backing-name', path.join(dir, 'nul-backing.qcow2'));
    const info = async (p: string, who: 'qemu' | 'ours') => {
      const out = who === 'qemu' ? ok(await qemuImg(['info', '--output=json', p]), 'qemu-img info').stdout : (await ours(dir, ['info', '--output', 'json', p])).stdout;
      return JSON.parse(out) as { 'backing-filename'?: string; 'format-specific': { data: { 'data-file'?: string } }; snapshots?: { name: string }[] };
    };
    expect((await info(backing, 'qemu'))['backing-filename']).toBe('base.');
    expect((await info(backing, 'ours'))['backing-filename']).toBe('base.');
    // The guest reads the backing file the truncated name names.
    expect((await qemuIo(['-r', '-f', 'qcow2', '-c', 'read -P 0x3c 0 64k', backing])).stdout).not.toMatch(/failed/);
    expect((await ours(dir, ['io', '-r', '-c', 'read -P 0x3c 0 64k', backing])).rc).toBe(0);

    const snap = mutate(top, 'nul:snapshot-name', path.join(dir, 'nul-snap.qcow2'));
    expect((await info(snap, 'qemu')).snapshots?.map((s) => s.name)).toEqual(['sn']);
    expect((await info(snap, 'ours')).snapshots?.map((s) => s.name)).toEqual(['sn']);

    const withData = path.join(dir, 'nul-data-src.qcow2');
    // An absolute name: qemu-img create makes a relative data file in its working directory, not the image's.
    const dataName = path.join(dir, 'data.raw');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${dataName}`, withData, '1M']), 'create with data file');
    const data = mutate(withData, 'nul:data-file-name', path.join(dir, 'nul-data.qcow2'));
    // The mutation puts the NUL in the middle of the name.
    const truncated = dataName.slice(0, Math.floor(dataName.length / 2));
    expect((await info(data, 'qemu'))['format-specific'].data['data-file']).toBe(truncated);
    expect((await info(data, 'ours'))['format-specific'].data['data-file']).toBe(truncated);
  });

  for (const [label, opts] of [['standard', 'cluster_size=64k'], ['extended L2', 'cluster_size=64k,extended_l2=on']] as const) {
    test(`an allocated zero cluster with a misaligned host offset fails the read, as qemu-io (${label})`, async () => {
      const src = await image(`zero-${label.replace(' ', '-')}.qcow2`, opts, '4M', ['write -P 7 0 128k']);
      const p = mutate(src, 'l2:zero-alloc-misaligned', `${src}.mut`);
      const before = fs.readFileSync(p);
      for (const cmd of ['read 0 512', 'read 0 128k']) {
        const q = await qemuIo(['-r', '-f', 'qcow2', '-c', cmd, p]);
        expect(q.stdout + q.stderr, cmd).toMatch(/read failed: Input\/output error/);
        const o = await ours(dir, ['io', '-r', '-c', cmd, p]);
        expect(o.rc, cmd).toBe(1);
        expect(o.stderr + o.stdout, cmd).toMatch(/read failed: .*unaligned/);
      }
      expect((await qemuImg(['convert', '-O', 'raw', p, `${p}.q.raw`])).rc).toBe(1);
      const c = await ours(dir, ['convert', '-O', 'raw', p, `${p}.raw`]);
      expect(c.rc).toBe(1);
      expect(c.stderr).toMatch(/^qcow2-harness: .*unaligned[^\n]*\n$/);
      expect(fs.readFileSync(p).equals(before)).toBe(true);
    });
  }

  test('snapshot -c over a garbage L2 table stops at the first misaligned entry: image marked corrupt, nothing else written', async () => {
    const src = await image('garbage-l2.qcow2', '', '16M', ['write -P 1 0 256k']);
    const p = mutate(src, 'l2:garbage', path.join(dir, 'garbage-l2-ours.qcow2'));
    const q = mutate(src, 'l2:garbage', path.join(dir, 'garbage-l2-qemu.qcow2'));
    const before = fs.readFileSync(p);
    const qr = await qemuImg(['snapshot', '-c', 's1', q]);
    expect(qr.stderr).toMatch(/Marking image as corrupt: Cluster allocation offset .* unaligned/);
    expect(qr.stderr).toMatch(/Could not create snapshot 's1': -5 \(Input\/output error\)/);
    const r = await ours(dir, ['snapshot', '-c', 's1', p]);
    expect(r.rc).toBe(1);
    expect(r.stderr).toMatch(/^qcow2-harness: Could not create snapshot 's1': corrupt image: Cluster allocation offset 0x[0-9a-f]+ unaligned \(L2 offset: 0x[0-9a-f]+, L2 index: 0x0\)[^\n]*\n$/);
    const after = fs.readFileSync(p);
    const f = HEADER_FIELDS.incompatibleFeatures;
    const changed = [...after.keys()].filter((i) => after[i] !== before[i]);
    expect(after.length).toBe(before.length);
    expect(changed.every((i) => i >= f.offset && i < f.offset + f.width), `bytes changed at ${changed.slice(0, 5).join(', ')}`).toBe(true);
    expect((await ours(dir, ['info', '--output', 'json', p])).stdout).toMatch(/"corrupt": true/);
  });

  for (const name of ['l1:entry-huge', 'l2:entry-huge']) {
    test(`snapshot -c with a host offset no refcount table can cover (${name}) is refused before anything is written: -27, as qemu-img`, async () => {
      const src = await image(`huge-${name.replace(':', '-')}.qcow2`, '', '16M', ['write -P 1 0 256k']);
      const p = mutate(src, name, `${src}.ours`);
      const q = mutate(src, name, `${src}.qemu`);
      const before = fs.readFileSync(p);
      const qr = await qemuImg(['snapshot', '-c', 's1', q]);
      expect(qr.stderr).toMatch(/^qemu-img: Could not create snapshot 's1': -27 \(File too large\)$/m);
      const r = await ours(dir, ['snapshot', '-c', 's1', p]);
      expect(r.rc).toBe(1);
      expect(r.stderr).toBe("qcow2-harness: Could not create snapshot 's1': -27 (File too large)\n");
      // QEMU counts what it met before the offset and leaks it; ours checks the whole tree first.
      expect(fs.readFileSync(p).equals(before)).toBe(true);
    });
  }
});

