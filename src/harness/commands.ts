/**
 * The harness's own subcommands (fuzz, replay, minimize). The CLI (src/cli)
 * dispatches argv (the words after the subcommand) here. Exit codes: 0 clean,
 * 1 something failed, 2 usage error.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { backingFileName } from './config.js';
import { readEntry, listEntries, writeEntry } from './corpus.js';
import { runTrace } from './execute.js';
import { minimizeTrace } from './minimize.js';
import { formatOp } from './ops.js';
import { replayEntry } from './replay.js';
import { reproScript } from './repro.js';
import { readerReproScript } from './reader/repro.js';
import { formatFailure, runCampaign, type CampaignStats, type FailureReport } from './runner.js';
import { isProducerSpec, isTargetSpec, libqcowMissing, makeTarget } from './targets/index.js';

class UsageError extends Error {}

type Spec = Record<string, 'flag' | 'value'>;

function parseArgs(argv: string[], spec: Spec): { opts: Record<string, string | boolean>; rest: string[] } {
  const opts: Record<string, string | boolean> = {};
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--') || a === '--') {
      rest.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const name = a.slice(2, eq > 0 ? eq : undefined);
    const kind = spec[name];
    if (!kind) throw new UsageError(`unknown option --${name}`);
    if (kind === 'flag') {
      if (eq > 0) throw new UsageError(`--${name} takes no value`);
      opts[name] = true;
    } else {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined) throw new UsageError(`--${name} needs a value`);
      opts[name] = v;
    }
  }
  return { opts, rest };
}

function intOpt(v: string | boolean | undefined, name: string, min: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^-?\d+$/.test(v) || Number(v) < min) throw new UsageError(`--${name} must be an integer >= ${min}`);
  return Number(v);
}

async function guard(run: () => Promise<number>, usage: string): Promise<number> {
  try {
    return await run();
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`error: ${e.message}\n${usage}`);
      return 2;
    }
    throw e;
  }
}

// ---------------------------------------------------------------- fuzz

const FUZZ_USAGE = `usage: qcow2-harness fuzz [options]
  Property-based fuzzing of a qcow2 implementation against the reference model,
  with qemu-img check/compare/info after every run. Failures are shrunk and saved.
  --target T     ts (default: our engine), qemu (qemu-io/qemu-img), libqcow (python3-libqcow, a reader),
                 cmd:PROGRAM (docs/cmd-protocol.md; a program may be a writer or a reader)
  --producer P   reader mode: qemu (default for readers) or ts writes every image, the target reads it;
                 with --target ts or qemu this makes that engine the reader
  --time S       run for S seconds (generation; shrinking a failure has its own budget)
  --shrink-time S  seconds each failure may spend shrinking (default 300), whenever it was found
  --runs N       run N generated cases (default 100 when --time is not given)
  --seed N       campaign seed (default: random, printed); same seed, same runs
  --jobs N       parallel workers (processes for ts, concurrent runs for qemu/cmd)
  --shard i/n    take only shard i of n (0-based); shards split a campaign deterministically
  --corpus DIR   where minimized failures go (default: corpus)
  --max-ops N    ops per case at most (default 12)
  --json         last stdout line: {"runs","readRuns","refusals":{feature:count},"ops","qemuImgChecks","failures",
                 "elapsedSeconds","corpus":[...]}
  --junit FILE   also write a JUnit XML report
  --help         this text
exit: 0 nothing found, 1 failures found, 2 usage error
`;

const FUZZ_SPEC: Spec = {
  target: 'value',
  producer: 'value',
  time: 'value',
  'shrink-time': 'value',
  runs: 'value',
  seed: 'value',
  jobs: 'value',
  shard: 'value',
  corpus: 'value',
  'max-ops': 'value',
  json: 'flag',
  junit: 'value',
  help: 'flag',
  'progress-json': 'flag', // internal: a child worker reports progress to its parent
};

interface Summary {
  target: string;
  seed: number;
  shard: string;
  runs: number;
  shrinkRuns: number;
  ops: number;
  qemuImgChecks: number;
  failures: number;
  elapsedSeconds: number;
  runsPerSecond: number;
  opsPerSecond: number;
  corpus: string[];
  failureReports: FailureReport[];
  producer?: string;
  /** Runs the implementation really read or ran (not declined). */
  readRuns: number;
  refusals: Record<string, number>;
  declined: string[];
}

export async function fuzzCommand(argv: string[]): Promise<number> {
  return guard(async () => {
    const { opts, rest } = parseArgs(argv, FUZZ_SPEC);
    if (opts.help) {
      process.stdout.write(FUZZ_USAGE);
      return 0;
    }
    if (rest.length) throw new UsageError(`unexpected argument '${rest[0]}'`);
    const target = typeof opts.target === 'string' ? opts.target : 'ts';
    if (!isTargetSpec(target)) throw new UsageError(`unknown target '${target}'`);
    const producer = typeof opts.producer === 'string' ? opts.producer : undefined;
    if (producer !== undefined && !isProducerSpec(producer)) throw new UsageError(`--producer must be qemu or ts, not '${producer}'`);
    if (target === 'libqcow') {
      const missing = libqcowMissing();
      if (missing) {
        process.stderr.write(`error: ${missing}\n`);
        return 2;
      }
    }
    const time = intOpt(opts.time, 'time', 1);
    const runs = intOpt(opts.runs, 'runs', 1);
    const shrinkTimeSec = intOpt(opts['shrink-time'], 'shrink-time', 1);
    if (time !== undefined && runs !== undefined) throw new UsageError('give --time or --runs, not both');
    const seed = intOpt(opts.seed, 'seed', -(2 ** 31)) ?? Math.floor(Math.random() * 2 ** 31);
    const jobs = intOpt(opts.jobs, 'jobs', 1) ?? 1;
    const maxOps = intOpt(opts['max-ops'], 'max-ops', 1) ?? 12;
    let shard = { index: 0, count: 1 };
    if (opts.shard !== undefined) {
      const m = /^(\d+)\/(\d+)$/.exec(String(opts.shard));
      if (!m || Number(m[2]) < 1 || Number(m[1]) >= Number(m[2])) throw new UsageError('--shard must be i/n with 0 <= i < n');
      shard = { index: Number(m[1]), count: Number(m[2]) };
    }
    const corpusDir = typeof opts.corpus === 'string' ? opts.corpus : 'corpus';
    const json = opts.json === true;
    const progressJson = opts['progress-json'] === true;
    const tty = process.stderr.isTTY === true && !progressJson;

    const progress = (s: { runs: number; ops: number; failures: number; elapsedSeconds: number }) => {
      if (progressJson) process.stderr.write(`PROGRESS ${JSON.stringify(s)}\n`);
      else if (tty) {
        const rate = s.elapsedSeconds > 0 ? s.runs / s.elapsedSeconds : 0;
        process.stderr.write(
          `\r${target}: ${s.runs} runs, ${s.ops} ops, ${rate.toFixed(1)} runs/s, ${s.failures} failures, ${s.elapsedSeconds.toFixed(0)} s   `,
        );
      }
    };
    if (!progressJson) process.stderr.write(`fuzz: target ${target}, seed ${seed}, shard ${shard.index}/${shard.count}\n`);

    let stats: CampaignStats;
    const forkable = jobs > 1 && target === 'ts' && /\.(c|m)?js$/.test(process.argv[1] ?? '');
    if (forkable) {
      stats = await forkWorkers({ argv, jobs, shard, progress });
    } else {
      let lastTick = 0;
      stats = await runCampaign({
        target,
        seed,
        runs,
        timeSec: time,
        shrinkTimeSec,
        shard,
        // Two traces in flight per process: one runs engine ops while the other waits on qemu-img.
        concurrency: Math.max(2, jobs),
        corpusDir,
        maxOps,
        producer,
        onProgress: (s) => {
          const now = Date.now();
          if (now - lastTick < 200) return;
          lastTick = now;
          progress({ runs: s.runs, ops: s.ops, failures: s.failures.length, elapsedSeconds: s.elapsedSeconds });
        },
      });
    }
    if (tty) process.stderr.write('\n');

    const summary: Summary = {
      target,
      seed,
      shard: `${shard.index}/${shard.count}`,
      runs: stats.runs,
      shrinkRuns: stats.shrinkRuns,
      ops: stats.ops,
      qemuImgChecks: stats.qemuImgChecks,
      failures: stats.failures.length,
      elapsedSeconds: Math.round(stats.elapsedSeconds * 100) / 100,
      runsPerSecond: round1(stats.runs / Math.max(stats.elapsedSeconds, 1e-9)),
      opsPerSecond: round1(stats.ops / Math.max(stats.elapsedSeconds, 1e-9)),
      corpus: stats.corpus,
      failureReports: stats.failures,
      producer: producer ?? (stats.readerMode ? 'qemu' : undefined),
      readRuns: stats.runs - stats.refusedRuns,
      refusals: stats.refusals,
      declined: stats.declined,
    };
    const human = humanSummary(summary);
    if (json) {
      process.stderr.write(human);
      process.stdout.write(JSON.stringify(summary) + '\n');
    } else {
      process.stdout.write(human);
    }
    if (typeof opts.junit === 'string') writeJunit(opts.junit, summary);
    return summary.failures > 0 ? 1 : 0;
  }, FUZZ_USAGE);
}

const round1 = (x: number) => Math.round(x * 10) / 10;

function humanSummary(s: Summary): string {
  const lines = [
    `${s.target}: ${s.runs} runs (${s.shrinkRuns} more while shrinking), ${s.ops} ops, ${s.qemuImgChecks} qemu-img checks in ${s.elapsedSeconds} s` +
      ` (${s.runsPerSecond} runs/s, ${s.opsPerSecond} ops/s); seed ${s.seed}, shard ${s.shard}`,
  ];
  const refusals = Object.entries(s.refusals).sort((a, b) => b[1] - a[1]);
  if (refusals.length || s.producer) {
    lines.push(
      `${s.readRuns} of ${s.runs} runs really read${s.producer ? ` (images by ${s.producer})` : ''}` +
        (refusals.length ? `; declined: ${refusals.map(([f, n]) => `${f} ${n}`).join(', ')}` : ''),
    );
  }
  if (s.declined.length) lines.push(`generation steered away from: ${s.declined.join(', ')}`);
  if (s.failures === 0) lines.push('no failures');
  for (const f of s.failureReports) lines.push('FAILURE ' + formatFailure(f));
  return lines.join('\n') + '\n';
}

function xmlEscape(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

function writeJunit(file: string, s: Summary): void {
  const cases = s.failureReports.map(
    (f, i) =>
      `  <testcase classname="qcow2-harness.fuzz.${xmlEscape(s.target)}" name="failure ${i + 1}: ${xmlEscape(f.oracle)}${f.corpusId ? ` (corpus ${f.corpusId})` : ''}">\n` +
      `    <failure message="${xmlEscape(f.message)}">${xmlEscape(formatFailure(f))}</failure>\n  </testcase>`,
  );
  if (cases.length === 0) {
    cases.push(`  <testcase classname="qcow2-harness.fuzz.${xmlEscape(s.target)}" name="${s.runs} runs, seed ${s.seed}" time="${s.elapsedSeconds}"/>`);
  }
  const xml =
    `<?xml version="1.0" encoding="UTF-8"?>\n` +
    `<testsuite name="qcow2-harness fuzz" tests="${cases.length}" failures="${s.failures}" time="${s.elapsedSeconds}">\n` +
    `${cases.join('\n')}\n</testsuite>\n`;
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, xml);
  fs.renameSync(tmp, file);
}

/** Runs `jobs` child processes of this same command, each a sub-shard, and adds up their summaries. */
async function forkWorkers(o: {
  argv: string[];
  jobs: number;
  shard: { index: number; count: number };
  progress: (s: { runs: number; ops: number; failures: number; elapsedSeconds: number }) => void;
}): Promise<CampaignStats> {
  const base = stripOptions(o.argv, ['jobs', 'shard', 'json', 'junit', 'progress-json']);
  const t0 = Date.now();
  const live = new Array(o.jobs).fill(null).map(() => ({ runs: 0, ops: 0, failures: 0 }));
  const children = Array.from({ length: o.jobs }, (_, j) => {
    const sub = `${o.shard.index * o.jobs + j}/${o.shard.count * o.jobs}`;
    const args = [...process.execArgv, process.argv[1]!, 'fuzz', ...base, '--jobs', '1', '--shard', sub, '--json', '--progress-json'];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      if (line.startsWith('PROGRESS ')) {
        live[j] = JSON.parse(line.slice(9));
        const sum = live.reduce((a, b) => ({ runs: a.runs + b.runs, ops: a.ops + b.ops, failures: a.failures + b.failures }));
        o.progress({ ...sum, elapsedSeconds: (Date.now() - t0) / 1000 });
      }
    });
    return new Promise<Summary>((resolve, reject) => {
      child.on('exit', () => {
        const last = out.trim().split('\n').pop() ?? '';
        try {
          resolve(JSON.parse(last) as Summary);
        } catch {
          reject(new Error(`fuzz worker ${sub} printed no summary`));
        }
      });
    });
  });
  const sums = await Promise.all(children);
  return {
    runs: sums.reduce((a, s) => a + s.runs, 0),
    shrinkRuns: sums.reduce((a, s) => a + s.shrinkRuns, 0),
    ops: sums.reduce((a, s) => a + s.ops, 0),
    qemuImgChecks: sums.reduce((a, s) => a + s.qemuImgChecks, 0),
    failures: sums.flatMap((s) => s.failureReports),
    elapsedSeconds: (Date.now() - t0) / 1000,
    corpus: [...new Set(sums.flatMap((s) => s.corpus))],
    refusals: sums.reduce<Record<string, number>>((a, s) => {
      for (const [f, n] of Object.entries(s.refusals ?? {})) a[f] = (a[f] ?? 0) + n;
      return a;
    }, {}),
    refusedRuns: sums.reduce((a, s) => a + (s.runs - (s.readRuns ?? s.runs)), 0),
    declined: [...new Set(sums.flatMap((s) => s.declined ?? []))].sort(),
  };
}

function stripOptions(argv: string[], names: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const name = a.startsWith('--') ? a.slice(2).split('=')[0]! : '';
    if (names.includes(name)) {
      if (!a.includes('=') && FUZZ_SPEC[name] === 'value') i++;
      continue;
    }
    out.push(a);
  }
  return out;
}

// ---------------------------------------------------------------- replay

const REPLAY_USAGE = `usage: qcow2-harness replay [--target T] [--json] DIR|corpus/<id> ...
  Replays corpus entries. DIR may be one entry or a corpus directory (every entry in it).
  An entry of ours passes when its trace now runs clean; an entry documenting an
  external bug passes while that bug still shows as documented.
  --target T   replay on another target than the one that found it
  --json       last stdout line: {"entries","passed","failed","results":[...]}
exit: 0 all pass, 1 some fail, 2 usage error
`;

export async function replayCommand(argv: string[]): Promise<number> {
  return guard(async () => {
    const { opts, rest } = parseArgs(argv, { target: 'value', json: 'flag', help: 'flag' });
    if (opts.help) {
      process.stdout.write(REPLAY_USAGE);
      return 0;
    }
    if (rest.length === 0) throw new UsageError('give a corpus entry or a corpus directory');
    const target = typeof opts.target === 'string' ? opts.target : undefined;
    if (target && !isTargetSpec(target)) throw new UsageError(`unknown target '${target}'`);
    const dirs: string[] = [];
    for (const d of rest) {
      if (fs.existsSync(path.join(d, 'trace.json'))) dirs.push(d);
      else if (fs.existsSync(d) && fs.statSync(d).isDirectory()) dirs.push(...listEntries(d));
      else throw new UsageError(`'${d}' is neither a corpus entry nor a corpus directory`);
    }
    const results = [];
    for (const d of dirs) {
      const r = await replayEntry(d, { target });
      results.push({ id: r.id, dir: d, target: r.target, passed: r.passed, expected: r.expected, failure: r.failure });
      const got = r.failure ? `${r.failure.oracle}: ${r.failure.message}` : 'clean';
      const line = `${r.passed ? 'pass' : 'FAIL'} ${r.id} [${r.target}] expected ${r.expected}; got ${got}${r.note ? `\n  ${r.note}` : ''}\n`;
      (opts.json ? process.stderr : process.stdout).write(line);
    }
    const failed = results.filter((r) => !r.passed).length;
    if (opts.json) process.stdout.write(JSON.stringify({ entries: results.length, passed: results.length - failed, failed, results }) + '\n');
    return failed > 0 ? 1 : 0;
  }, REPLAY_USAGE);
}

// ---------------------------------------------------------------- minimize

const MINIMIZE_USAGE = `usage: qcow2-harness minimize [--target T] [--corpus DIR] [--max-attempts N] [--json] corpus/<id>
  Re-shrinks a saved failure (e.g. after a fix) and saves the smaller trace as a new entry.
exit: 0 minimized (or already minimal), 1 the entry no longer fails, 2 usage error
`;

export async function minimizeCommand(argv: string[]): Promise<number> {
  return guard(async () => {
    const { opts, rest } = parseArgs(argv, { target: 'value', corpus: 'value', 'max-attempts': 'value', json: 'flag', help: 'flag' });
    if (opts.help) {
      process.stdout.write(MINIMIZE_USAGE);
      return 0;
    }
    if (rest.length !== 1) throw new UsageError('give exactly one corpus entry');
    const dir = rest[0]!;
    if (!fs.existsSync(path.join(dir, 'trace.json'))) throw new UsageError(`'${dir}' is not a corpus entry`);
    const entry = readEntry(dir);
    const target = typeof opts.target === 'string' ? opts.target : entry.target;
    if (!isTargetSpec(target)) throw new UsageError(`unknown target '${target}'`);
    const corpusDir = typeof opts.corpus === 'string' ? opts.corpus : path.dirname(path.resolve(dir));
    const producer = target === entry.target ? entry.producer : undefined;
    const m = await minimizeTrace(target, entry.config, entry.parsedOps, entry.oracle, {
      messageIncludes: entry.external?.messageIncludes,
      maxAttempts: intOpt(opts['max-attempts'], 'max-attempts', 1),
      strict: true,
      producer,
    });
    const out = opts.json ? process.stderr : process.stdout;
    if (!m.failure) {
      out.write(`${entry.id}: no longer fails with ${entry.oracle} on ${target} (${m.attempts} attempts)\n`);
      if (opts.json) process.stdout.write(JSON.stringify({ id: entry.id, fails: false, attempts: m.attempts }) + '\n');
      return 1;
    }
    const r = await runTrace(makeTarget(target, { strict: true, producer }), m.config, { ops: m.ops }, { keepDir: true });
    try {
      const failure = r.failure ?? m.failure;
      const e = writeEntry(corpusDir, {
        target,
        config: m.config,
        ops: r.ops,
        oracle: failure.oracle,
        message: failure.message,
        opIndex: failure.opIndex,
        external: entry.external,
        producer,
        implementation: r.implementation ?? entry.implementation,
        imageFile: path.join(r.dir, 'image.qcow2'),
        backingFile: m.config.backing ? path.join(r.dir, backingFileName(m.config.backing)) : undefined,
        repro: producer
          ? readerReproScript({ target, producer, config: m.config, ops: r.ops, oracle: failure.oracle, message: failure.message, implementation: r.implementation })
          : reproScript({ target, config: m.config, ops: r.ops, model: r.model!, refused: r.refused, oracle: failure.oracle, message: failure.message }),
      });
      out.write(
        `${entry.id}: ${entry.ops.length} ops -> ${r.ops.length} ops in ${m.attempts} attempts; saved as ${e.id}${e.duplicate ? ' (already there)' : ''}\n` +
          r.ops.map((x, i) => `  ${i + 1}: ${formatOp(x)}\n`).join(''),
      );
      if (opts.json) {
        process.stdout.write(JSON.stringify({ id: entry.id, fails: true, attempts: m.attempts, newId: e.id, ops: r.ops.map(formatOp) }) + '\n');
      }
      return 0;
    } finally {
      fs.rmSync(r.dir, { recursive: true, force: true });
    }
  }, MINIMIZE_USAGE);
}

function makeStrict(target: string) {
  return makeTarget(target, { strict: true });
}
