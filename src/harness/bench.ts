/**
 * `qcow2-harness bench`: our CLI against qemu-img/qemu-io on the same inputs,
 * in one run on one machine, reported as ratios ours/QEMU. Both sides are
 * timed as whole processes (start-up included), the way a user runs them.
 *
 * The machine this runs on is usually shared, so a single timing says little.
 * Each case is measured as N pairs, ours and QEMU back to back (the order
 * alternating from pair to pair), and the report gives the median of the
 * per-pair ratios: load that lasts a few seconds hits both sides of a pair.
 * Before every timed command the inputs are restored and `sync` runs
 * (untimed), so one command's dirty pages are never written back on the
 * next one's time; with --cold the page cache is dropped too.
 *
 * Nothing here is a test verdict: timings never decide an exit code, only
 * whether both sides produced the same result does.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { prng } from './prng.js';
import { packageFile } from '../qcow2/storage/native.js';
import { machine, report, secs, verdict, type BenchResult, type CampaignFigures } from './bench-report.js';

export type { BenchResult, CampaignFigures } from './bench-report.js';

export const BENCH_CASES = ['convert', 'writes', 'check', 'amend', 'startup', 'campaign'] as const;
export type BenchCase = (typeof BENCH_CASES)[number];
type CaseName = BenchCase;

/** What the command line sets (src/cli/commands/bench.ts parses it). */
export interface BenchOptions {
  json: boolean;
  dir?: string;
  size: number;
  writes: number;
  pairs: number;
  only: Set<CaseName>;
  caches: ('warm' | 'cold')[];
  campaignSeconds: number;
  campaignJobs: number;
  cli?: string;
  keep: boolean;
}

const MiB = 1024 * 1024;

/** The package's built CLI, found up from this module (src/, dist/ or a chunk of the bundle). */
function cliPath(): string {
  const found = packageFile('dist/cli/main.js');
  if (!found) throw new Error('built CLI not found (run npm run build)');
  return found;
}

// ------------------------------------------------------------------ timing

/** Seconds the command took; throws when it fails. */
async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  const r = await execa(cmd, args, { reject: false, stdout: 'ignore', stderr: 'pipe', env: { LC_ALL: 'C' } });
  const seconds = (performance.now() - t0) / 1000;
  if (r.exitCode !== 0) throw new Error(`${cmd} ${args.slice(0, 6).join(' ')}… exited ${r.exitCode}: ${String(r.stderr).slice(0, 500)}`);
  return seconds;
}

async function run(cmd: string, args: string[]): Promise<void> {
  await timed(cmd, args);
}

let coldWarned = false;

/** Writes dirty pages back (and with cold, drops the page cache) so the next timed command starts settled. */
async function settle(cache: 'warm' | 'cold'): Promise<boolean> {
  await run('sync', []);
  if (cache === 'warm') return true;
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3\n');
    return true;
  } catch {
    coldWarned = true;
    return false;
  }
}

interface Side {
  cmd: string;
  args: string[];
  /** Restores this side's inputs (untimed). */
  prepare?: () => Promise<void> | void;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** `node -e ''`: Node's own start-up, timed beside every pair as the floor of any command of ours. */
const NODE_FLOOR: Side = { cmd: process.execPath, args: ['-e', ''] };

/** A QEMU tool's own start-up, timed beside its pairs: `--version` execs, links and parses, and does nothing else. */
const qemuStartSide = (tool: 'qemu-img' | 'qemu-io'): Side => ({ cmd: tool, args: ['--version'] });
const qemuStartOf = (tool: 'qemu-img' | 'qemu-io', times: number[]) => ({ times, command: `${tool} --version` });

/**
 * Times ours against each QEMU side, `pairs` times, alternating who goes
 * first; returns the seconds per pair of every side (ours first).
 */
async function pairs(n: number, cache: 'warm' | 'cold', ours: Side, qemu: Side[]): Promise<{ times: number[][]; cold: boolean }> {
  const times: number[][] = [[], ...qemu.map(() => [])];
  let cold = cache === 'cold';
  const sides = [ours, ...qemu];
  for (let i = 0; i < n; i++) {
    const order = sides.map((_, k) => k);
    if (i % 2 === 1) order.reverse();
    for (const k of order) {
      const s = sides[k]!;
      await s.prepare?.();
      cold = (await settle(cache)) && cold;
      times[k]!.push(await timed(s.cmd, s.args));
    }
  }
  return { times, cold };
}

function result(
  name: string,
  cache: 'warm' | 'cold' | '-',
  ours: number[],
  qemu: number[],
  cmds: { ours: string; qemu: string },
  verified: boolean,
  note?: string,
  node?: number[],
  likeForLike = true,
  qemuStart?: { times: number[]; command: string },
): BenchResult {
  const ratios = ours.map((u, i) => u / qemu[i]!);
  const floor = node && {
    nodeSeconds: median(node),
    floorRatio: median(node.map((n, i) => n / qemu[i]!)),
    beyondNodeSeconds: median(ours.map((u, i) => u - node[i]!)),
  };
  const start = node &&
    qemuStart && {
      qemuStartSeconds: median(qemuStart.times),
      qemuStartCommand: qemuStart.command,
      beyondQemuStartSeconds: median(qemu.map((q, i) => q - qemuStart.times[i]!)),
      // A QEMU side no slower than its own --version leaves nothing to compare work against.
      workRatio: median(ours.map((u, i) => (u - node[i]!) / Math.max(1e-6, qemu[i]! - qemuStart.times[i]!))),
      startFloorRatio: median(qemu.map((q, i) => (node[i]! + q - qemuStart.times[i]!) / q)),
    };
  return {
    ...floor,
    ...start,
    likeForLike,
    name,
    cache,
    qemuSeconds: median(qemu),
    oursSeconds: median(ours),
    ratio: median(ratios),
    ratioMin: Math.min(...ratios),
    ratioMax: Math.max(...ratios),
    pairs: ratios.length,
    qemuCommand: cmds.qemu,
    oursCommand: cmds.ours,
    verified,
    note,
  };
}

function show(cmd: string, args: string[]): string {
  const shown = args.length > 12 ? [...args.slice(0, 8), `… (${args.length} args)`] : args;
  return [cmd, ...shown].join(' ');
}

// ------------------------------------------------------------------ inputs

/** A raw file of `size` bytes with no zero sector (a 1 MiB random block repeated). */
function makeRaw(path: string, size: number): void {
  const block = randomBytes(MiB);
  const fd = openSync(path, 'w');
  try {
    for (let off = 0; off < size; off += MiB) writeSync(fd, block, 0, Math.min(MiB, size - off), off);
  } finally {
    closeSync(fd);
  }
}

/** A qcow2 image with every cluster written (no zero sector), made by qemu-img convert from a raw file. */
async function makeFullImage(image: string, size: number, clusterSize: number): Promise<void> {
  const raw = `${image}.src.raw`;
  makeRaw(raw, size);
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${clusterSize}`, raw, image]);
  rmSync(raw, { force: true });
}

async function same(a: string, b: string): Promise<boolean> {
  return (await execa('cmp', ['-s', a, b], { reject: false })).exitCode === 0;
}

async function qemuCheckClean(p: string): Promise<boolean> {
  return (await execa('qemu-img', ['check', '-q', p], { reject: false })).exitCode === 0;
}

// ------------------------------------------------------------------ cases

interface Ctx {
  o: BenchOptions;
  dir: string;
  cli: string;
  /** The fully written image at 64 KiB clusters (convert, check, amend). */
  full: string;
}

const sizeName = (o: BenchOptions) => `${o.size / MiB} MiB`;

/**
 * At least this many pairs for convert: qemu-img's own time swings 0.9-4.4 s
 * on a shared machine (its 2 MiB writes into fresh page-cache folios, other
 * helpers' disk traffic), so a median of 5 still moved by 0.3 run to run.
 */
const CONVERT_MIN_PAIRS = 7;

async function benchConvert(c: Ctx, cache: 'warm' | 'cold'): Promise<BenchResult[]> {
  const qOut = join(c.dir, 'convert-qemu.raw');
  const qOutU = join(c.dir, 'convert-qemu-unsafe.raw');
  const oOut = join(c.dir, 'convert-ours.raw');
  const dOut = join(c.dir, 'convert-dd.raw');
  const clear = (p: string) => () => rmSync(p, { force: true });
  const qArgs = ['convert', '-t', 'writeback', '-f', 'qcow2', '-O', 'raw', c.full, qOut];
  const qArgsU = ['convert', '-f', 'qcow2', '-O', 'raw', c.full, qOutU];
  const oArgs = [c.cli, 'convert', '-O', 'raw', c.full, oOut];
  // The image's first size bytes: as many as the guest holds, header and tables included.
  const dArgs = [`if=${c.full}`, `of=${dOut}`, 'bs=2M', `count=${c.o.size / (2 * MiB)}`, 'oflag=direct', 'conv=fsync', 'status=none'];
  const dArgsB = [`if=${c.full}`, `of=${dOut}`, 'bs=1M', `count=${c.o.size / MiB}`, 'conv=fdatasync', 'status=none'];
  const r = await pairs(Math.max(c.o.pairs, CONVERT_MIN_PAIRS), cache, { cmd: process.execPath, args: oArgs, prepare: clear(oOut) }, [
    { cmd: 'qemu-img', args: qArgs, prepare: clear(qOut) },
    { cmd: 'qemu-img', args: qArgsU, prepare: clear(qOutU) },
    NODE_FLOOR,
    { cmd: 'dd', args: dArgs, prepare: clear(dOut) },
    { cmd: 'dd', args: dArgsB, prepare: clear(dOut) },
    qemuStartSide('qemu-img'),
  ]);
  const verified = (await same(qOut, oOut)) && (await same(qOutU, oOut));
  for (const p of [qOut, qOutU, oOut, dOut]) rmSync(p, { force: true });
  const name = `convert -O raw, ${sizeName(c.o)} fully written, 64 KiB clusters`;
  const k = cacheLabel(cache, r.cold);
  // Per pair the faster way to the disk: which one wins depends on the device and the kernel.
  const dd = r.times[4]!.map((d, i) => Math.min(d, r.times[5]![i]!));
  const ioFloor = (qemu: number[]) => ({
    ioFloorSeconds: median(dd),
    ioFloorRatio: median(dd.map((d, i) => d / qemu[i]!)),
    ioFloorCommand: `the faster per pair of ${show('dd', dArgs)} (${secs(median(r.times[4]!))} s) and ${show('dd', dArgsB)} (${secs(median(r.times[5]!))} s)`,
  });
  const start = qemuStartOf('qemu-img', r.times[6]!);
  return [
    {
      ...result(`${name}, vs qemu-img -t writeback (both flush)`, k, r.times[0]!, r.times[1]!, { ours: show('node', oArgs), qemu: show('qemu-img', qArgs) }, verified, undefined, r.times[3], true, start),
      ...ioFloor(r.times[1]!),
    },
    {
      ...result(
        `${name}, vs qemu-img default (-t unsafe: no flush)`,
        k,
        r.times[0]!,
        r.times[2]!,
        { ours: show('node', oArgs), qemu: show('qemu-img', qArgsU) },
        verified,
        'not like for like: ours makes the output durable before renaming it into place, qemu-img -t unsafe never flushes',
        r.times[3],
        false,
        start,
      ),
      ...ioFloor(r.times[2]!),
    },
  ];
}

/**
 * Both tools' default cache mode is writethrough (a flush after every write);
 * the headline figure is `-t writeback` on both sides (one flush, at the
 * close), where the engines' own costs show; the defaults are a row of their
 * own, where the disk's flush time dominates.
 */
async function benchWrites(c: Ctx, cache: 'warm' | 'cold'): Promise<BenchResult[]> {
  const rand = prng(0x5eed);
  const blocks = c.o.size / 4096;
  const cmds: string[] = [];
  for (let i = 0; i < c.o.writes; i++) cmds.push(`write -P ${(i % 255) + 1} ${Math.floor(rand() * blocks) * 4096} 4k`);
  const args = cmds.flatMap((x) => ['-c', x]);
  const img = (n: string) => join(c.dir, `writes-${n}.qcow2`);
  const fresh = (p: string) => async (): Promise<void> => {
    rmSync(p, { force: true });
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', p, String(c.o.size)]);
  };
  const qArgs = ['-t', 'writeback', '-f', 'qcow2', ...args, img('qemu')];
  const qArgsD = ['-f', 'qcow2', ...args, img('qemu-wt')];
  const oArgs = [c.cli, 'io', '-t', 'writeback', img('ours'), ...args];
  const oArgsD = [c.cli, 'io', img('ours-wt'), ...args];
  const r = await pairs(c.o.pairs, cache, { cmd: process.execPath, args: oArgs, prepare: fresh(img('ours')) }, [
    { cmd: 'qemu-io', args: qArgs, prepare: fresh(img('qemu')) },
    { cmd: 'qemu-io', args: qArgsD, prepare: fresh(img('qemu-wt')) },
    NODE_FLOOR,
    qemuStartSide('qemu-io'),
    { cmd: process.execPath, args: oArgsD, prepare: fresh(img('ours-wt')) },
  ]);
  const start = qemuStartOf('qemu-io', r.times[4]!);
  const same = async (a: string, b: string) => (await execa('qemu-img', ['compare', '-q', img(a), img(b)], { reject: false })).exitCode === 0;
  const verified = (await same('qemu', 'ours')) && (await same('qemu-wt', 'ours-wt')) && (await qemuCheckClean(img('ours'))) && (await qemuCheckClean(img('ours-wt')));
  const name = `${c.o.writes} random 4 KiB writes in one process, ${sizeName(c.o)} image, 64 KiB clusters`;
  const k = cacheLabel(cache, r.cold);
  return [
    result(`${name}, vs qemu-io -t writeback`, k, r.times[0]!, r.times[1]!, { ours: show('node', oArgs), qemu: show('qemu-io', qArgs) }, verified, undefined, r.times[3], true, start),
    result(`${name}, both defaults (writethrough: a flush after every write)`, k, r.times[5]!, r.times[2]!, { ours: show('node', oArgsD), qemu: show('qemu-io', qArgsD) }, verified,
      undefined, r.times[3], true, start),
  ];
}

async function benchCheck(c: Ctx, cache: 'warm' | 'cold'): Promise<BenchResult[]> {
  const one = async (image: string, name: string): Promise<BenchResult> => {
    const qArgs = ['check', image];
    const oArgs = [c.cli, 'check', image];
    const r = await pairs(c.o.pairs, cache, { cmd: process.execPath, args: oArgs }, [{ cmd: 'qemu-img', args: qArgs }, NODE_FLOOR, qemuStartSide('qemu-img')]);
    // Both must reach the same verdict on the same image: qemu-img's JSON counts against ours.
    const q = await execa('qemu-img', ['check', '--output=json', image], { reject: false });
    const u = await execa(process.execPath, [c.cli, 'check', '--output', 'json', image], { reject: false });
    const verified = q.exitCode === 0 && u.exitCode === 0 && sameCheckCounts(q.stdout, u.stdout);
    return result(name, cacheLabel(cache, r.cold), r.times[0]!, r.times[1]!, { ours: show('node', oArgs), qemu: show('qemu-img', qArgs) }, verified, undefined, r.times[2], true,
      qemuStartOf('qemu-img', r.times[3]!));
  };
  return [
    await one(c.full, `check, ${sizeName(c.o)} fully written, 64 KiB clusters`),
    // The same check where the walk, not start-up, is the work: 8x fewer bytes but 16x more L2 entries.
    await one(await smallClusterImage(c), `check, ${c.o.size / 8 / MiB} MiB fully written, 512 B clusters (${c.o.size / 8 / 512} L2 entries)`),
  ];
}

function sameCheckCounts(a: string, b: string): boolean {
  try {
    const ja = JSON.parse(a) as Record<string, unknown>;
    const jb = JSON.parse(b) as Record<string, unknown>;
    return ['check-errors', 'image-end-offset', 'total-clusters', 'allocated-clusters', 'fragmented-clusters', 'compressed-clusters'].every((k) => ja[k] === jb[k]);
  } catch {
    return false;
  }
}

/** A fully written image at 512-byte clusters, made once per bench run. */
async function smallClusterImage(c: Ctx): Promise<string> {
  const image = join(c.dir, 'small-clusters.qcow2');
  if (!existsSync(image)) await makeFullImage(image, c.o.size / 8, 512);
  return image;
}

async function benchAmend(c: Ctx, cache: 'warm' | 'cold'): Promise<BenchResult[]> {
  const qImg = join(c.dir, 'amend-qemu.qcow2');
  const oImg = join(c.dir, 'amend-ours.qcow2');
  const qArgs = ['amend', '-f', 'qcow2', '-o', 'refcount_bits=64', qImg];
  const oArgs = [c.cli, 'amend', '-o', 'refcount_bits=64', oImg];
  const r = await pairs(c.o.pairs, cache, { cmd: process.execPath, args: oArgs, prepare: () => copyFileSync(c.full, oImg) }, [
    { cmd: 'qemu-img', args: qArgs, prepare: () => copyFileSync(c.full, qImg) },
    NODE_FLOOR,
    qemuStartSide('qemu-img'),
  ]);
  // amend must leave the guest content unchanged: qemu-img's result is the reference.
  const sameAsQemu = (await execa('qemu-img', ['compare', '-q', qImg, oImg], { reject: false })).exitCode === 0;
  const info = await execa('qemu-img', ['info', '--output=json', oImg], { reject: false });
  const bitsOk = info.exitCode === 0 && JSON.parse(info.stdout)['format-specific']?.data?.['refcount-bits'] === 64;
  const verified = (await qemuCheckClean(oImg)) && sameAsQemu && bitsOk;
  rmSync(qImg, { force: true });
  rmSync(oImg, { force: true });
  const name = `amend -o refcount_bits=64 (from 16), ${sizeName(c.o)} fully written, 64 KiB clusters`;
  return [result(name, cacheLabel(cache, r.cold), r.times[0]!, r.times[1]!, { ours: show('node', oArgs), qemu: show('qemu-img', qArgs) }, verified, undefined, r.times[2], true,
    qemuStartOf('qemu-img', r.times[3]!))];
}

async function benchStartup(c: Ctx): Promise<BenchResult[]> {
  const oArgs = [c.cli, '--version'];
  const nArgs = ['-e', ''];
  const r = await pairs(Math.max(c.o.pairs, 9), 'warm', { cmd: process.execPath, args: oArgs }, [{ cmd: process.execPath, args: nArgs }]);
  return [
    result('CLI start-up (--version) against node -e \'\'', '-', r.times[0]!, r.times[1]!, { ours: show('node', oArgs), qemu: show('node', nArgs) }, true,
      "the 'QEMU' column is node -e '': Node's own start-up, the floor of every command", undefined, false),
  ];
}

/**
 * CPU seconds (user+system) of this process's waited-for children:
 * /proc/self/stat cutime+cstime. It counts the campaign's whole process tree
 * because every level waits for the one below: bench for the CLI, the CLI
 * for its --jobs workers, each of those for its tool shells (src/qemu/shell.ts
 * closes and waits for them when the event loop drains), and each shell for
 * the qemu-img/qemu-io calls it ran. A process left to init (as the tool
 * shells were until they were waited for) drops out of this sum with all
 * it ran, which is why tests/cli/tool-shells.test.ts pins a lower bound on it.
 * Chosen over sampling /proc/stat: that counts every other process on the
 * machine too, and this one is shared.
 */
function childCpuSeconds(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields after the command: state is index 0, so cutime (field 16) is index 13, cstime index 14.
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

async function benchCampaign(c: Ctx): Promise<CampaignFigures> {
  const corpus = join(c.dir, 'campaign-corpus');
  const args = [c.cli, 'fuzz', '--target', 'ts', '--time', String(c.o.campaignSeconds), '--jobs', String(c.o.campaignJobs), '--seed', '1', '--json', '--corpus', corpus];
  const cpu0 = childCpuSeconds();
  const load0 = loadavg()[0]!;
  const r = await execa(process.execPath, args, { reject: false, stdout: 'pipe', stderr: 'ignore', env: { LC_ALL: 'C' } });
  const cpu = childCpuSeconds() - cpu0;
  const lastLine = String(r.stdout).trim().split('\n').pop() ?? '';
  let j: { runs: number; elapsedSeconds: number; failures: number };
  try {
    j = JSON.parse(lastLine);
  } catch {
    throw new Error(`fuzz campaign printed no JSON summary (exit ${r.exitCode})`);
  }
  const perRun = cpu / Math.max(1, j.runs);
  return {
    seconds: j.elapsedSeconds,
    jobs: c.o.campaignJobs,
    runs: j.runs,
    runsPerSecond: j.runs / j.elapsedSeconds,
    cpuSecondsPerRun: perRun,
    idleRunsPerSecond: c.o.campaignJobs / perRun,
    loadAverage: (load0 + loadavg()[0]!) / 2,
    command: show('node', args),
    failures: j.failures,
  };
}

function cacheLabel(cache: 'warm' | 'cold', dropped: boolean): 'warm' | 'cold' {
  return cache === 'cold' && !dropped ? 'warm' : cache;
}

// ------------------------------------------------------------------ command

/** Runs the cases o.only names and prints the table (or JSON); 1 when a result differs or a step failed. */
export async function runBench(o: BenchOptions): Promise<number> {
  let cli: string;
  try {
    cli = o.cli !== undefined ? resolve(o.cli) : cliPath();
    if (!existsSync(cli)) throw new Error(`--cli: '${cli}' does not exist`);
  } catch (e) {
    process.stderr.write(`qcow2-harness bench: ${(e as Error).message}\n`);
    return 1;
  }
  const dir = o.dir ?? mkdtempSync(join(tmpdir(), 'qcow2-bench-'));
  const results: BenchResult[] = [];
  let campaign: CampaignFigures | undefined;
  const log = (s: string): void => {
    if (!o.json) process.stderr.write(s);
  };
  try {
    const c: Ctx = { o, dir, cli, full: join(dir, 'full.qcow2') };
    if (['convert', 'check', 'amend'].some((x) => o.only.has(x as CaseName))) {
      await makeFullImage(c.full, o.size, 65536);
    }
    const perCache: [CaseName, (c: Ctx, k: 'warm' | 'cold') => Promise<BenchResult[]>][] = [
      ['convert', benchConvert],
      ['writes', benchWrites],
      ['check', benchCheck],
      ['amend', benchAmend],
    ];
    for (const [name, fn] of perCache) {
      if (!o.only.has(name)) continue;
      for (const k of o.caches) {
        log(`${name} (${k} cache, ${name === 'convert' ? Math.max(o.pairs, CONVERT_MIN_PAIRS) : o.pairs} pairs)…\n`);
        results.push(...(await fn(c, k)));
      }
    }
    if (o.only.has('startup')) {
      log('start-up…\n');
      results.push(...(await benchStartup(c)));
    }
    if (o.only.has('campaign')) {
      log(`ts campaign (${o.campaignSeconds} s, ${o.campaignJobs} jobs)…\n`);
      campaign = await benchCampaign(c);
    }
  } catch (e) {
    process.stderr.write(`qcow2-harness bench: ${(e as Error).message}\n`);
    return 1;
  } finally {
    if (!o.keep && !o.dir) rmSync(dir, { recursive: true, force: true });
  }
  const notes = coldWarned ? ['the page cache could not be dropped (not root?): cold rows were measured warm and say so'] : [];
  if (o.json) process.stdout.write(`${JSON.stringify({ machine: machine(), results, verdict: verdict(results), campaign, notes }, null, 2)}\n`);
  else process.stdout.write(report(results, campaign, notes));
  return results.every((r) => r.verified) && !campaign?.failures ? 0 : 1;
}
