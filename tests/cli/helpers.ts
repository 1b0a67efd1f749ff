/**
 * Shared pieces of the CLI integration tests: a scratch directory, our CLI run
 * in-process (fast, no node start-up per call), and the real qemu-img/qemu-io.
 */
import { CALIBRATION_FAILURE } from '../support/run-sync.js';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bufferContext } from '../../src/cli/context.js';
import { runCli } from '../../src/cli/run.js';
import { QEMU_IMG, QEMU_IO, runTool, type ToolResult } from '../../src/qemu/index.js';
import { firstDiff as firstDiffBytes } from '../support/bytes.js';

export interface Ran {
  rc: number;
  stdout: string;
  stderr: string;
}

export function scratchDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `qcow2-cli-${tag}-`));
}

/** Runs `qcow2-harness ARGV` in this process, with dir as the working directory. */
export async function ours(dir: string, argv: string[]): Promise<Ran> {
  const ctx = bufferContext(dir);
  const rc = await runCli(argv, ctx);
  return { rc, stdout: ctx.out, stderr: ctx.err };
}

/** Runs qemu-img (give absolute paths: backing names resolve against the image's directory anyway). */
/**
 * qemu-img, tried again (up to 5 times) while it fails with "Unable to get
 * accurate CPU usage": creating or amending a LUKS key slot measures PBKDF2
 * speed with thread CPU time (qcrypto_pbkdf2_count_iters) and gives up when a
 * trial reads as 0 ms at the tick resolution, which a loaded machine makes
 * likely. That is the tool failing to calibrate before it writes anything,
 * not a verdict, so only that one message is retried.
 */
export async function qemuImg(args: string[]): Promise<ToolResult> {
  for (let attempt = 1; ; attempt++) {
    const r = await runTool(QEMU_IMG, args, 60_000);
    if (r.rc === 0 || attempt === 5 || !r.stderr.includes(CALIBRATION_FAILURE)) return r;
  }
}

export async function qemuIo(args: string[]): Promise<ToolResult> {
  return runTool(QEMU_IO, args, 60_000);
}

/** Fails with the tool's own words when it did not exit 0. */
export function ok<T extends { rc: number; stdout: string; stderr: string }>(r: T, what: string): T {
  if (r.rc !== 0) throw new Error(`${what} exited ${r.rc}:\n${r.stdout}${r.stderr}`);
  return r;
}

export function ioArgs(commands: readonly string[]): string[] {
  return commands.flatMap((c) => ['-c', c]);
}

/** The first differing byte of two files, or -1 when they are identical. */
export function firstDiff(a: string, b: string): number {
  return firstDiffBytes(fs.readFileSync(a), fs.readFileSync(b));
}

/** qemu-io/our io output without the timing lines, which differ run to run. */
export function withoutTimings(s: string): string {
  return s
    .split('\n')
    // "4 KiB, 1 ops; 00.00 sec (…)" below a second, "4 KiB, 1 ops; 0:00:01.25 (…)" from one second on (qemu-io's
    // timestr): a loaded machine gives the second form, so the line is known by its "N ops; " alone.
    .filter((l) => !/^\S+ \S+, \d+ ops; /.test(l))
    .join('\n');
}

/** The repository root and the compiled CLI that bin-level tests run. */
const REPO_ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BUILT_CLI = path.join(REPO_ROOT, 'dist/cli/main.js');

function newestSource(d: string): number {
  let t = 0;
  for (const e of fs.readdirSync(d, { withFileTypes: true })) {
    const p = path.join(d, e.name);
    t = Math.max(t, e.isDirectory() ? newestSource(p) : fs.statSync(p).mtimeMs);
  }
  return t;
}

const stale = (): boolean => !fs.existsSync(BUILT_CLI) || fs.statSync(BUILT_CLI).mtimeMs < newestSource(path.join(REPO_ROOT, 'src'));

/**
 * Rebuilds dist/ when a source is newer than the compiled CLI (setup.sh builds
 * in CI; a local edit may not have): tsc, then the bundle, as `npm run build`.
 * Test files run in parallel workers and each may find dist/ stale, so one
 * builds under a lock directory while the others wait and then see it fresh:
 * two builds writing dist/ at once once left a mix of old and new modules
 * (a campaign of 288 "decodeCString is not defined" failures).
 */
export async function ensureBuilt(): Promise<void> {
  if (!stale()) return;
  const lock = path.join(os.tmpdir(), `qcow2-harness-build-${Buffer.from(REPO_ROOT).toString('hex').slice(-24)}`);
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      // A lock left by a killed run: no build takes 5 minutes.
      const held = fs.statSync(lock, { throwIfNoEntry: false });
      if (held && Date.now() - held.mtimeMs > 300_000) fs.rmSync(lock, { recursive: true, force: true });
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    if (!stale()) return;
    const { execa } = await import('execa');
    await execa('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT });
    await execa(process.execPath, ['scripts/bundle.mjs'], { cwd: REPO_ROOT });
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

/**
 * qemu-img ARGS and our ARGS, both run in dir on the same files: the exit code,
 * stdout and stderr (our program name read as qemu-img's) must be identical.
 * Only for commands that leave the files as they are (map, compare, measure, info).
 * Returns qemu-img's result, so a test can also check that it says what the
 * case is meant to show.
 */
export async function sameAsQemuImg(dir: string, args: string[], o: { readsImages?: boolean } = {}): Promise<Ran> {
  settleTree(dir);
  const { execa } = await import('execa');
  if (o.readsImages ?? true) {
    // Each tool once first, unjudged: reading an unwritten extent (QEMU's fallocated COW areas) puts
    // zeroed pages in the page cache, after which SEEK_DATA calls it data. Once both tools have read
    // what they read, the cache, and so every later answer, is the same for both.
    await execa(QEMU_IMG, args, { cwd: dir, reject: false, stdin: 'ignore' });
    await ours(dir, args);
  }
  // measure with LUKS options sizes a key slot by timing PBKDF2 too: the same calibration retry as qemuImg.
  let qemu: Ran;
  for (let attempt = 1; ; attempt++) {
    const q = await execa(QEMU_IMG, args, { cwd: dir, reject: false, stdin: 'ignore', stripFinalNewline: false });
    qemu = { rc: q.exitCode ?? -1, stdout: String(q.stdout), stderr: String(q.stderr) };
    if (qemu.rc === 0 || attempt === 5 || !qemu.stderr.includes(CALIBRATION_FAILURE)) break;
  }
  const r = await ours(dir, args);
  const { expect } = await import('vitest');
  expect({ ...r, stderr: r.stderr.replace(/^qcow2-harness: /gm, 'qemu-img: ') }, `qemu-img ${args.join(' ')}`).toEqual(qemu);
  return qemu;
}

/**
 * fsync(2) of a file another process wrote: until the file system has
 * written it back, lseek(SEEK_DATA/SEEK_HOLE) may report its holes
 * differently from one moment to the next (ext4 delayed allocation), and
 * block status (map, compare -s, measure) depends on them.
 */
export function settle(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** settle() for every file under dir: the images a test made before comparing block status. */
export function settleTree(dir: string): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) settleTree(p);
    else if (e.isFile()) settle(p);
  }
}
