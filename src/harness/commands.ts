/**
 * What the harness's commands do once their command line is read: run a
 * campaign, replay entries, re-shrink one. The command lines themselves are
 * read by src/cli/commands/{fuzz,replay,minimize}.ts (cli → harness, never the
 * other way); these functions take resolved options and return an exit code:
 * 0 clean, 1 something failed.
 */
import type { Exclusions } from './exclude.js';
import { BITMAP_LEFT_OUT } from './bitmap-trace.js';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { backingChain, backingFileName, DATA_FILE_NAME } from './config.js';
import { writeEntry, type readEntry } from './corpus.js';
import { runTrace } from './execute.js';
import { minimizeTrace } from './minimize.js';
import { formatOp } from './ops.js';
import { replayEntry } from './replay.js';
import { reproScript } from './repro.js';
import { readerReproScript } from './reader/repro.js';
import { formatFailure, runCampaign, type CampaignStats, type FailureReport } from './runner.js';
import { makeTarget, type ProducerSpec } from './targets/index.js';

/** Where a command prints (the CLI's context, or the process streams). */
export interface Output {
  stdout(text: string): void;
  stderr(text: string): void;
}

// ---------------------------------------------------------------- fuzz

export interface FuzzOptions {
  target: string;
  /** Reader mode: this engine writes every image, the target reads it. */
  producer?: ProducerSpec;
  seed: number;
  timeSec?: number;
  /** Seconds each failure may spend shrinking (runner's default when absent). */
  shrinkTimeSec?: number;
  runs?: number;
  jobs: number;
  shard: { index: number; count: number };
  corpusDir: string;
  maxOps: number;
  /** Last stdout line: the summary as JSON (the human summary then goes to stderr). */
  json: boolean;
  junit?: string;
  /** The command line a forked worker starts from (without --jobs, --shard, --seed, --json, --junit). */
  workerArgv: string[];
  /** Op kinds and features left out (--exclude). */
  exclude?: Exclusions;
  /** --include bitmap: the bitmap suite's traces (runner.ts CampaignOptions.includeBitmaps). */
  includeBitmaps?: boolean;
}

export interface FuzzSummary {
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
  /** Ops of the generated runs by kind (shrink runs not counted). */
  opCounts: Record<string, number>;
  /** Generated runs by configuration feature. */
  featureCounts: Record<string, number>;
  /** Op kinds --include mixed in (absent without it). */
  included?: string[];
}

/** A campaign's counters as progress reports carry them. */
export interface Progress {
  runs: number;
  ops: number;
  failures: number;
  elapsedSeconds: number;
}

/** Where a campaign reports progress; done() comes after the last update, before the summary. */
export interface ProgressSink {
  update(s: Progress): void;
  done(): void;
}

/** Runs the campaign, reporting progress as it goes, then prints the summary (and the JUnit file). */
export async function runFuzz(o: FuzzOptions, out: Output, sink?: ProgressSink): Promise<number> {
  const progress = (s: Progress) => sink?.update(s);
  const { target, shard } = o;
  let stats: CampaignStats;
  const forkable = o.jobs > 1 && target === 'ts' && /\.(c|m)?js$/.test(process.argv[1] ?? '');
  if (forkable) {
    stats = await forkWorkers({ argv: [...o.workerArgv, '--seed', String(o.seed)], jobs: o.jobs, shard, progress });
  } else {
    stats = await runCampaign({
      target,
      seed: o.seed,
      runs: o.runs,
      timeSec: o.timeSec,
      shrinkTimeSec: o.shrinkTimeSec,
      shard,
      // Two traces in flight per process: one runs engine ops while the other waits on qemu-img.
      concurrency: Math.max(2, o.jobs),
      corpusDir: o.corpusDir,
      maxOps: o.maxOps,
      producer: o.producer,
      exclude: o.exclude,
      includeBitmaps: o.includeBitmaps,
      onProgress: (s) => progress({ runs: s.runs, ops: s.ops, failures: s.failures.length, elapsedSeconds: s.elapsedSeconds }),
    });
  }
  sink?.done();

  const summary: FuzzSummary = {
    target,
    seed: o.seed,
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
    producer: o.producer ?? (stats.readerMode ? 'qemu' : undefined),
    readRuns: stats.runs - stats.refusedRuns,
    refusals: stats.refusals,
    declined: stats.declined,
    opCounts: stats.opCounts,
    featureCounts: stats.featureCounts,
    ...(o.includeBitmaps ? { included: ['bitmap'] } : {}),
  };
  const human = humanSummary(summary);
  if (o.json) {
    out.stderr(human);
    out.stdout(JSON.stringify(summary) + '\n');
  } else {
    out.stdout(human);
  }
  if (o.junit !== undefined) writeJunit(o.junit, summary);
  return summary.failures > 0 ? 1 : 0;
}

const round1 = (x: number) => Math.round(x * 10) / 10;

function humanSummary(s: FuzzSummary): string {
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
  if (s.included?.includes('bitmap')) lines.push(`bitmap ops mixed in (--include bitmap); left out, as the bitmap model does not describe them: ${BITMAP_LEFT_OUT.join(', ')}`);
  if (s.declined.length) lines.push(`generation steered away from: ${s.declined.join(', ')}`);
  const kinds = Object.entries(s.opCounts ?? {}).sort((a, b) => b[1] - a[1]);
  if (kinds.length) lines.push(`ops by kind: ${kinds.map(([k, n]) => `${k} ${n}`).join(', ')}`);
  const features = Object.entries(s.featureCounts ?? {}).sort((a, b) => b[1] - a[1]);
  if (features.length) lines.push(`runs by configuration feature: ${features.map(([k, n]) => `${k} ${n}`).join(', ')}`);
  if (s.failures === 0) lines.push('no failures');
  for (const f of s.failureReports) lines.push('FAILURE ' + formatFailure(f));
  return lines.join('\n') + '\n';
}

function xmlEscape(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

function writeJunit(file: string, s: FuzzSummary): void {
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
  progress: (s: Progress) => void;
}): Promise<CampaignStats> {
  const t0 = Date.now();
  const live = new Array(o.jobs).fill(null).map(() => ({ runs: 0, ops: 0, failures: 0 }));
  const children = Array.from({ length: o.jobs }, (_, j) => {
    const sub = `${o.shard.index * o.jobs + j}/${o.shard.count * o.jobs}`;
    const args = [...process.execArgv, process.argv[1]!, 'fuzz', ...o.argv, '--jobs', '1', '--shard', sub, '--json', '--progress-json'];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      if (line.startsWith('PROGRESS ')) {
        live[j] = JSON.parse(line.slice(9));
        const sum = live.reduce((a, b) => ({ runs: a.runs + b.runs, ops: a.ops + b.ops, failures: a.failures + b.failures }));
        o.progress({ ...sum, elapsedSeconds: (Date.now() - t0) / 1000 });
      }
    });
    return new Promise<FuzzSummary>((resolve, reject) => {
      child.on('exit', () => {
        const last = stdout.trim().split('\n').pop() ?? '';
        try {
          resolve(JSON.parse(last) as FuzzSummary);
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
    opCounts: sums.reduce<Record<string, number>>((a, s) => {
      for (const [k, n] of Object.entries(s.opCounts ?? {})) a[k] = (a[k] ?? 0) + n;
      return a;
    }, {}),
    featureCounts: sums.reduce<Record<string, number>>((a, s) => {
      for (const [k, n] of Object.entries(s.featureCounts ?? {})) a[k] = (a[k] ?? 0) + n;
      return a;
    }, {}),
  };
}

// ---------------------------------------------------------------- replay

export async function runReplay(o: { dirs: string[]; target?: string; json: boolean }, out: Output): Promise<number> {
  const results = [];
  for (const d of o.dirs) {
    const r = await replayEntry(d, { target: o.target });
    results.push({ id: r.id, dir: d, target: r.target, passed: r.passed, expected: r.expected, failure: r.failure });
    const got = r.failure ? `${r.failure.oracle}: ${r.failure.message}` : 'clean';
    const line = `${r.passed ? 'pass' : 'FAIL'} ${r.id} [${r.target}] expected ${r.expected}; got ${got}${r.note ? `\n  ${r.note}` : ''}\n`;
    if (o.json) out.stderr(line);
    else out.stdout(line);
  }
  const failed = results.filter((r) => !r.passed).length;
  if (o.json) out.stdout(JSON.stringify({ entries: results.length, passed: results.length - failed, failed, results }) + '\n');
  return failed > 0 ? 1 : 0;
}

// ---------------------------------------------------------------- minimize

export interface MinimizeOptions {
  entry: ReturnType<typeof readEntry>;
  target: string;
  corpusDir: string;
  maxAttempts?: number;
  json: boolean;
}

export async function runMinimize(o: MinimizeOptions, out: Output): Promise<number> {
  const { entry, target } = o;
  const producer = target === entry.target ? entry.producer : undefined;
  const m = await minimizeTrace(target, entry.config, entry.parsedOps, entry.oracle, {
    messageIncludes: entry.external?.messageIncludes,
    maxAttempts: o.maxAttempts,
    strict: true,
    producer,
  });
  const say = (t: string) => (o.json ? out.stderr(t) : out.stdout(t));
  if (!m.failure) {
    say(`${entry.id}: no longer fails with ${entry.oracle} on ${target} (${m.attempts} attempts)\n`);
    if (o.json) out.stdout(JSON.stringify({ id: entry.id, fails: false, attempts: m.attempts }) + '\n');
    return 1;
  }
  const r = await runTrace(makeTarget(target, { strict: true, producer }), m.config, { ops: m.ops }, { keepDir: true });
  try {
    const failure = r.failure ?? m.failure;
    const e = writeEntry(o.corpusDir, {
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
      chainFiles: backingChain(m.config).slice(1).map((l) => path.join(r.dir, l.file)),
      dataFile: m.config.dataFile ? path.join(r.dir, DATA_FILE_NAME) : undefined,
      repro: producer
        ? readerReproScript({ target, producer, config: m.config, ops: r.ops, oracle: failure.oracle, message: failure.message, implementation: r.implementation })
        : reproScript({ target, config: m.config, ops: r.ops, model: r.model!, refused: r.refused, oracle: failure.oracle, message: failure.message }),
    });
    say(
      `${entry.id}: ${entry.ops.length} ops -> ${r.ops.length} ops in ${m.attempts} attempts; saved as ${e.id}${e.duplicate ? ' (already there)' : ''}\n` +
        r.ops.map((x, i) => `  ${i + 1}: ${formatOp(x)}\n`).join(''),
    );
    if (o.json) {
      out.stdout(JSON.stringify({ id: entry.id, fails: true, attempts: m.attempts, newId: e.id, ops: r.ops.map(formatOp) }) + '\n');
    }
    return 0;
  } finally {
    fs.rmSync(r.dir, { recursive: true, force: true });
  }
}
