/**
 * The fork server against the tools run the plain way: the same command
 * lines, run once through the pool (fork-served) and once exec'd by
 * spawnSync, must give the same exit codes, stdout, stderr and files, over
 * a sequence that creates, writes, snapshots, amends, resizes, checks,
 * converts, reads and writes an encrypted image, and fails. qemu-io's timing lines are the one part
 * that differs from run to run, so their figures are masked. (A compressed
 * write over several clusters is left out: QEMU compresses them in parallel
 * tasks and places them in completion order, so even two exec'd runs differ.)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { forkServed } from './fork-server.js';
import { resolveTool } from './resolve.js';
import { shellPool } from './shell.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-fork-server-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const which = (tool: string) => {
  const r = resolveTool(tool);
  if (!r.ok) throw new Error(r.message);
  return r.file;
};
const IMG = which('qemu-img');
const IO = which('qemu-io');
const SECRET = ['--object', 'secret,id=sec0,data=forkserver'];

/** Each step: tool, arguments (D is the step directory), and the files whose bytes must match afterwards. */
const STEPS: [string, string[], string[]][] = [
  [IMG, ['create', '-f', 'qcow2', '-o', 'cluster_size=4096,lazy_refcounts=on', 'D/a.qcow2', '8M'], ['a.qcow2']],
  [IO, ['-c', 'write -P 0xab 0 64k', '-c', 'write -z 128k 64k', '-c', 'discard 0 4k', '-c', 'write -c -P 0x11 1M 4k', 'D/a.qcow2'], ['a.qcow2']],
  [IO, ['-c', 'read -P 0xab 4k 60k', '-c', 'read -P 0 128k 64k', '-c', 'map', 'D/a.qcow2'], []],
  [IMG, ['info', '--output=json', 'D/a.qcow2'], []],
  [IMG, ['check', '--output=json', 'D/a.qcow2'], []],
  [IMG, ['map', '--output=json', 'D/a.qcow2'], []],
  [IMG, ['convert', '-O', 'raw', 'D/a.qcow2', 'D/a.raw'], ['a.raw']],
  [IMG, ['compare', '-f', 'qcow2', '-F', 'raw', 'D/a.qcow2', 'D/a.raw'], []],
  [IMG, ['amend', '-o', 'refcount_bits=4', 'D/a.qcow2'], ['a.qcow2']],
  [IMG, ['resize', 'D/a.qcow2', '16M'], ['a.qcow2']],
  [IMG, ['check', '-r', 'all', 'D/a.qcow2'], ['a.qcow2']],
  // A snapshot records the time it was taken: from here on, no image bytes are compared and dates are masked.
  [IMG, ['snapshot', '-c', 's1', 'D/a.qcow2'], []],
  [IMG, ['snapshot', '-l', 'D/a.qcow2'], []],
  [IMG, ['info', 'D/a.qcow2'], []],
  [IMG, ['check', 'D/a.qcow2'], []],
  [IMG, ['info', ...SECRET, '--image-opts', 'driver=qcow2,file.filename=D/e.qcow2,encrypt.key-secret=sec0'], []],
  [IO, [...SECRET, '--image-opts', '-c', 'write -P 0x5a 0 4k', 'driver=qcow2,file.filename=D/e.qcow2,encrypt.key-secret=sec0'], []],
  [IO, [...SECRET, '--image-opts', '-c', 'read -P 0x5a 0 4k', 'driver=qcow2,file.filename=D/e.qcow2,encrypt.key-secret=sec0'], []],
  [IMG, ['info', 'D/missing.qcow2'], []],
  [IMG, ['no-such-command'], []],
  [IO, ['-c', 'read 0 1T', 'D/a.qcow2'], []],
  [IMG, ['check', 'D/a.raw'], []],
];

/**
 * What differs from run to run without the tools behaving differently:
 * - the image's disk usage (st_blocks), the file system's allocation state: ext4's delayed allocation gave
 *   86016 for one run's image and 90112 for the other's with the same bytes (a CI run here);
 * - qemu-io's "1 ops; 00.00 sec (1.234 MiB/sec and 5.678 ops/sec)" (or "1 ops; 0:00:01.25 (…)" from one
 *   second on, as a loaded machine gives): timing figures;
 * - a snapshot's date and time, which qemu-img prints as it recorded them.
 */
const masked = (s: string) =>
  s
    .replace(/"actual-size": \d+/g, '"actual-size": N')
    .replace(/^disk size: .*$/gm, 'disk size: N')
    .replace(/ ops; [^(\n]* \([^)\n]*\)/g, ' ops; T (T)')
    .replace(/\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}/g, 'DATE')
    .replace(/"date-(sec|nsec)": \d+/g, '"date-$1": N');

interface Outcome {
  rc: number;
  stdout: string;
  stderr: string;
  files: Record<string, string>;
}

/**
 * The LUKS image the sequence reads and writes, made outside it: qemu-img
 * create's PBKDF2 benchmark fails now and then with "Unable to get accurate
 * CPU usage" however it is run (5 of 20 exec'd here: its first round can end
 * within one scheduler tick of thread CPU time), so it is retried.
 */
let template: string | undefined;
function luksTemplate(): string {
  if (template) return template;
  const file = path.join(root, 'luks-template.qcow2');
  const args = ['create', '-q', '-f', 'qcow2', ...SECRET, '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', file, '1M'];
  for (let i = 0; ; i++) {
    const r = spawnSync(IMG, args, { encoding: 'utf8' });
    if (r.status === 0) return (template = file);
    if (i === 20 || !/Unable to get accurate CPU usage/.test(r.stderr)) throw new Error(`qemu-img create of a LUKS image failed: ${r.stderr}`);
  }
}

async function sequence(dir: string, served: boolean): Promise<Outcome[]> {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir);
  // One LUKS image for both runs: its UUID, salts and iteration counts are drawn anew by every create.
  fs.copyFileSync(luksTemplate(), path.join(dir, 'e.qcow2'));
  const out: Outcome[] = [];
  for (const [tool, args, files] of STEPS) {
    const argv = args.map((a) => a.replace(/\bD\//g, `${dir}/`));
    let r: { rc: number; stdout: string; stderr: string };
    if (served) {
      r = (await shellPool.run([{ tool, args: argv, timeoutMs: 60_000 }]))[0]!;
    } else {
      const s = spawnSync(tool, argv, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
      r = { rc: s.status ?? 128, stdout: s.stdout, stderr: s.stderr };
    }
    const bytes = Object.fromEntries(files.map((f) => [f, createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex')]));
    out.push({ rc: r.rc, stdout: masked(r.stdout), stderr: masked(r.stderr), files: bytes });
  }
  return out;
}

/** The PID of the parent of a running process (field 4 of /proc/PID/stat). */
const parentOf = (pid: number) => {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
};
const commOf = (pid: number) => fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();

describe('fork server', () => {
  it('serves qemu-img and qemu-io here (built library, QH_FORK_SERVER unset)', () => {
    expect(process.env.QH_FORK_SERVER).toBeUndefined();
    expect(forkServed(IMG)).toBe(true);
    expect(forkServed(IO)).toBe(true);
    expect(forkServed('/bin/sh')).toBe(false);
  });

  it('a served command runs as a child of a qemu-io server, not of bash', async () => {
    const dir = path.join(root, 'parent');
    fs.mkdirSync(dir);
    execFileSync(IMG, ['create', '-q', '-f', 'qcow2', path.join(dir, 'p.qcow2'), '1M']);
    const marker = path.join(dir, 'p.qcow2');
    const running = shellPool.run([{ tool: IO, args: ['-c', 'sleep 1500', marker], timeoutMs: 60_000 }]);
    // Found by the image it holds open: a forked command's /proc cmdline is still the server's (main() got a new
    // argv array, the kernel's record of the arguments is the exec's), so ps shows it without its arguments.
    let pid: number | undefined;
    for (let i = 0; i < 600 && pid === undefined; i++) {
      await new Promise((r) => setTimeout(r, 20));
      for (const p of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
        try {
          if (fs.readdirSync(`/proc/${p}/fd`).some((fd) => fs.readlinkSync(`/proc/${p}/fd/${fd}`) === marker)) pid = Number(p);
        } catch {
          // gone meanwhile, or not ours to look into
        }
      }
    }
    expect(pid).toBeDefined();
    expect(commOf(parentOf(pid!))).toBe('qemu-io');
    const [r] = await running;
    expect(r!.rc).toBe(0);
  });

  it('gives what the exec\'d tools give: exit codes, stdout, stderr and image bytes, step by step', async () => {
    const dir = path.join(root, 'seq');
    const served = await sequence(dir, true);
    const plain = await sequence(dir, false);
    for (let i = 0; i < STEPS.length; i++) {
      const [tool, args] = STEPS[i]!;
      expect({ step: `${path.basename(tool)} ${args.join(' ')}`, ...served[i] }).toEqual({ step: `${path.basename(tool)} ${args.join(' ')}`, ...plain[i] });
    }
    // The sequence exercised both outcomes.
    expect(served.some((o) => o.rc === 0) && served.some((o) => o.rc !== 0)).toBe(true);
  });

  it('a tool the preload cannot reach (a static binary) runs through bash instead, with the same result', async () => {
    const cc = spawnSync('/bin/sh', ['-c', 'command -v cc']).stdout.toString().trim();
    expect(cc, 'a C compiler (the native build needs one)').not.toBe('');
    const dir = path.join(root, 'static');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'echo.c'), '#include <stdio.h>\nint main(int c, char **v) { for (int i = 1; i < c; i++) printf("%s\\n", v[i]); return 3; }\n');
    const bin = path.join(dir, 'qemu-img');
    execFileSync(cc, ['-static', '-o', bin, path.join(dir, 'echo.c')]);
    expect(forkServed(bin)).toBe(true);
    const [r] = await shellPool.run([{ tool: bin, args: ['a b', 'c'], timeoutMs: 60_000 }]);
    expect(r).toEqual({ rc: 3, stdout: 'a b\nc\n', stderr: '', timedOut: false });
  });
});
