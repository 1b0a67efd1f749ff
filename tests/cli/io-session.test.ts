/**
 * qemu-io's session commands and cache modes through our io, each script run
 * by qemu-io and by the installed command on twin images: open, close and
 * reopen between commands, and sigraise/abort killing the process with the
 * image as it is on disk. What a kill leaves is judged by qemu-img check, whose
 * whole output must be the same for both images: with qemu-io's default
 * writethrough mode every write is on disk, and on a lazy-refcounts image its
 * refcount is not (iotests 039); with -t writeback nothing is.
 */
import { execa, execaNode } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QEMU_IMG, QEMU_IO } from '../../src/qemu/index.js';
import { ensureBuilt, ok, scratchDir } from './helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.join(root, 'dist/cli/main.js');
const dir = scratchDir('io-session');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
beforeAll(ensureBuilt);

interface Ran {
  rc: number | undefined;
  signal: string | undefined;
  stdout: string;
  stderr: string;
}

/** Runs a qemu-io command line with qemu-io or with our io, in dir. */
async function run(who: 'qemu' | 'ours', args: string[]): Promise<Ran> {
  const o = { cwd: dir, reject: false, stripFinalNewline: false, env: { LC_ALL: 'C' } } as const;
  const r = who === 'qemu' ? await execa(QEMU_IO, args, o) : await execaNode(bin, ['io', ...args], o);
  const canon = (s: string) => s.replace(/; [\d:.]+ (sec )?\(.*\)/g, '; T').replace(/^(qemu-io|qcow2-harness): /gm, '');
  return { rc: r.exitCode, signal: r.signal ?? undefined, stdout: canon(String(r.stdout)), stderr: canon(String(r.stderr)) };
}

async function fresh(name: string, opts = 'compat=1.1'): Promise<string> {
  const f = path.join(dir, name);
  fs.rmSync(f, { force: true });
  ok(await execa(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-o', opts, f, '1M'], { reject: false }).then((r) => ({ rc: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr })), 'create');
  return name;
}

const c = (...cmds: string[]) => cmds.flatMap((x) => ['-c', x]);

describe('io session commands, as qemu-io runs them', () => {
  const scripts: [string, string[], boolean][] = [
    ['a command after close', c('close', 'read 0 1'), true],
    ['close, then open read-only: a write is refused', c('close', 'open -r IMG', 'write 0 1', 'read 0 1'), true],
    ['open -o driver= picks the format', c('close', 'open -o driver=qcow2 IMG', 'write -P 9 0 1', 'close', 'open -o driver=raw IMG', 'read -v 0 4'), true],
    ['close twice', c('close', 'close'), true],
    ['reopen -r, then -w', c('reopen -r', 'write 0 1', 'reopen -w', 'write -P 7 0 1', 'read -P 7 0 1'), true],
    ['open while open', c('open IMG'), true],
    ['open a missing file, then the image', c('close', 'open nonexist.qcow2', 'open IMG', 'length'), true],
    ['open with an option qemu-io does not have', c('close', 'open -f raw IMG'), true],
    ['open with a bad cache mode', c('close', 'open -t bogus IMG'), true],
    ['short names', c('c', 'o IMG', 'length'), true],
    ['no image on the command line', c('open IMG', 'write -P 3 0 512', 'read -P 3 0 512'), false],
    ['open without a name', c('open'), false],
  ];
  for (const [what, args, withImage] of scripts) {
    it(what, async () => {
      const out: Ran[] = [];
      for (const who of ['qemu', 'ours'] as const) {
        const img = await fresh(`${who}-s.qcow2`);
        const a = args.map((x) => x.replace('IMG', img));
        out.push(await run(who, withImage ? [...a, img] : a));
      }
      expect({ ...out[1], stdout: out[1]!.stdout.replaceAll('ours-s', 'X'), stderr: out[1]!.stderr.replaceAll('ours-s', 'X') }).toEqual({
        ...out[0],
        stdout: out[0]!.stdout.replaceAll('qemu-s', 'X'),
        stderr: out[0]!.stderr.replaceAll('qemu-s', 'X'),
      });
    });
  }
});

describe('a killed io leaves the image a killed qemu-io leaves', () => {
  const WRITES = ['write -P 0x5a 0 512', 'write -P 0x5b 64k 64k'];
  const cases: [string, string, string[], string[]][] = [
    ['writethrough (the default), lazy refcounts: data on disk, refcounts not (iotests 039)', 'compat=1.1,lazy_refcounts=on', [], WRITES],
    ['writeback, lazy refcounts: nothing since the open', 'compat=1.1,lazy_refcounts=on', ['-t', 'writeback'], WRITES],
    ['writethrough, refcounts kept exact', 'compat=1.1', [], WRITES],
    ['directsync is writethrough', 'compat=1.1,lazy_refcounts=on', ['-t', 'directsync'], WRITES],
    ['writeback, a FUA write (-f) and one without', 'compat=1.1', ['-t', 'writeback'], ['write -f -P 0x5a 0 512', 'write -P 0x5b 64k 64k']],
  ];
  for (const [what, opts, cache, writes] of cases) {
    for (const kill of ['sigraise 9', 'sigraise 15', 'abort']) {
      it(`${what}, ${kill}`, async () => {
        const seen = [];
        for (const who of ['qemu', 'ours'] as const) {
          const img = await fresh(`${who}-k.qcow2`, opts);
          const r = await run(who, [...cache, ...c(...writes, kill), img]);
          const check = await execa(QEMU_IMG, ['check', img], { cwd: dir, reject: false });
          const read = await execa(QEMU_IO, ['-c', 'read -P 0x5a 0 512', '-c', 'read -P 0x5b 64k 64k', img], { cwd: dir, reject: false });
          seen.push({
            signal: r.signal,
            stdout: r.stdout,
            check: { rc: check.exitCode, out: check.stdout.replaceAll(img, 'IMG'), err: check.stderr.replaceAll(img, 'IMG') },
            read: read.stdout.replace(/; [\d:.]+ (sec )?\(.*\)/g, '; T'),
          });
        }
        expect(seen[1]).toEqual(seen[0]);
      });
    }
  }
});
