/**
 * Fuzzing campaigns: fast-check generates (config, op seeds), runs them on a
 * target, shrinks a failure to a minimal one, and the minimal trace is run
 * once more to leave its image behind for the corpus.
 *
 * Each chunk generates until its first failure (or the deadline), then that
 * failure is shrunk by a second fast-check run replaying its path with a
 * budget of its own (`shrinkTimeSec`): the campaign deadline bounds
 * generation only, so a failure found in the last second shrinks as far as
 * one found in the first.
 *
 * A campaign is a sequence of chunks; chunk k has its own seed derived from
 * the campaign seed, so the same seed gives the same runs, and `--shard i/n`
 * takes the chunks k with k % n == i (a deterministic split).
 */
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { configArb, opSeedsArb, type OpSeed } from './arbitraries.js';
import { readerExternal } from './reader/external.js';
import { backingChain, backingFileName, DATA_FILE_NAME, type TraceConfig } from './config.js';
import { corpusMatches, corpusSignatures, describeMatches, entrySignature, writeEntry, type CorpusMatch } from './corpus.js';
import { runTrace, type RunOutcome } from './execute.js';
import type { Failure, OracleName } from './oracles.js';
import { formatOp, type Op } from './ops.js';
import { foldFailure } from './shrink-fold.js';
import { reproScript } from './repro.js';
import { configFeatures, PROTOCOL_LACKS, steer } from './reader/features.js';
import { readerReproScript } from './reader/repro.js';
import { withoutKinds, type Exclusions } from './exclude.js';
import { BITMAP_TRACE_KINDS, bitmapItemsArb, cleanConfigArb, concreteBitmapTrace, firstAddArb, type BitmapOp, type BitmapTraceItem } from './bitmap-trace.js';
import { makeTarget, type ProducerSpec } from './targets/index.js';
import { scratchDir } from '../qemu/scratch.js';
import type { Target } from './targets/types.js';

export interface CampaignOptions {
  target: string;
  seed: number;
  /** Stop after this many generated runs (shrink runs not counted)... */
  runs?: number;
  /** ...or after this many seconds (a chunk in progress finishes). */
  timeSec?: number;
  shard?: { index: number; count: number };
  /** Concurrent chunks in this process (useful for subprocess-bound targets). */
  concurrency?: number;
  corpusDir?: string;
  maxOps: number;
  runsPerChunk?: number;
  tmpRoot?: string;
  /** Reader mode: the engine that writes the images the target reads (docs/cmd-protocol.md, protocol 2). */
  producer?: ProducerSpec;
  onProgress?: (s: CampaignStats) => void;
  /** Seconds each failure may spend shrinking, apart from timeSec (default DEFAULT_SHRINK_TIME_SEC). */
  shrinkTimeSec?: number;
  /** The campaign's clock in ms (default Date.now): tests move it to make a deadline pass at a chosen moment. */
  clock?: () => number;
  /** Builds the implementation instead of makeTarget(target): tests plant a bug in a wrapper of our engine. */
  targetFactory?: () => Target;
  /** Op kinds and configuration features left out (`fuzz --exclude`). */
  exclude?: Exclusions;
  /**
   * `fuzz --include bitmap`: the traces of properties/bitmaps.prop.test.ts
   * (./bitmap-trace.ts: bitmap ops mixed in, clean-closing configurations, no
   * amend/crash/fault/aio) instead of the plain op seeds. Off: the plain ones, unchanged.
   */
  includeBitmaps?: boolean;
}

export interface FailureReport {
  target: string;
  seed: number;
  path: string;
  oracle: OracleName;
  message: string;
  config: TraceConfig;
  ops: string[];
  producer?: ProducerSpec;
  corpusId?: string;
  duplicate?: boolean;
  /** Seconds into the campaign when the failure was found (before shrinking). */
  foundAfterSeconds?: number;
  /** Seconds spent shrinking it, the runs that took, and whether shrinking ran to the end (false: its budget ran out). */
  shrinkSeconds?: number;
  shrinkRuns?: number;
  shrinkComplete?: boolean;
  /** What the pass after fast-check's shrink changed (shrink-fold.ts): folded amends, dropped ops (`path` then names the trace before them). */
  shrinkSteps?: string[];
  /** Corpus entries with the same ops, or whose ops begin this trace's (corpus.ts corpusMatches). */
  corpusMatches?: CorpusMatch[];
  /** Not shrunk: the corpus already had its signature (`corpusId`); `ops` are the trace as generated. */
  shrinkSkipped?: boolean;
}

export interface CampaignStats {
  runs: number;
  shrinkRuns: number;
  ops: number;
  qemuImgChecks: number;
  failures: FailureReport[];
  elapsedSeconds: number;
  corpus: string[];
  /** Declined configurations, by feature (a run declining two features counts under both). */
  refusals: Record<string, number>;
  /** Generated runs the implementation declined (they count as runs, not as coverage). */
  refusedRuns: number;
  /** Features a writer declined at create: generation steers away from them for the rest of the campaign. */
  declined: string[];
  /** The target turned out to be a reader (paired with a producer). */
  readerMode?: boolean;
  /** Ops of the generated runs (shrink runs not counted), by op kind: what the campaign really exercised. */
  opCounts: Record<string, number>;
  /** Generated runs by configuration feature (reader/features.ts names): what the configurations exercised. */
  featureCounts: Record<string, number>;
}

const DEFAULT_RUNS_PER_CHUNK = 25;
/**
 * Each failure's shrink budget: generous, because a barely shrunk trace costs
 * whoever reads it far more (a qemu run takes ~1 s, and shrinking a 12-op
 * trace takes some tens to hundreds of runs).
 */
export const DEFAULT_SHRINK_TIME_SEC = 300;

/** Chunk k's fast-check seed: a fixed mix of the campaign seed and k. */
export function chunkSeed(seed: number, k: number): number {
  let x = (Math.imul(seed | 0, 0x9e3779b1) ^ Math.imul(k + 1, 0x85ebca6b)) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x2c1b3c6d) >>> 0;
  x ^= x >>> 12;
  return x | 0;
}

export function traceProperty(
  target: string,
  maxOps: number,
  onRun: (r: RunOutcome) => void,
  tmpRoot?: string,
  o: {
    crashBias?: boolean;
    producer?: ProducerSpec;
    declined?: Set<string>;
    /** Checked before each run: true interrupts the fast-check run (as its own time limit would). */
    stop?: () => boolean;
    targetFactory?: () => Target;
  } = {},
): fc.IAsyncProperty<[TraceConfig, OpSeed[]]> {
  return fc.asyncProperty(configArb, opSeedsArb(maxOps, o), async (config0, seeds) => {
    if (o.stop?.()) throw new fc.PreconditionFailure(true);
    const config = o.declined ? steer(config0, o.declined) : config0;
    const t = o.targetFactory ? o.targetFactory() : makeTarget(target, { producer: o.producer });
    const r = await runTrace(t, config, { seeds }, { tmpRoot });
    onRun(r);
    return r.failure === undefined;
  });
}

/**
 * The bitmap suite's property (properties/bitmaps.prop.test.ts) for a
 * campaign: seeds resolve only to the kinds the target (after --exclude) has.
 * The bitmap end oracle (./bitmap-oracle.ts) runs at the end of every run, as for any trace.
 */
function bitmapTraceProperty(
  o: CampaignOptions,
  onRun: (r: RunOutcome) => void,
  tmpRoot: string,
  declined: Set<string>,
  stop: () => boolean,
): fc.IAsyncProperty<[TraceConfig, BitmapOp, BitmapTraceItem[]]> {
  return fc.asyncProperty(cleanConfigArb, firstAddArb, bitmapItemsArb(o.maxOps), async (config0, first, items) => {
    if (stop()) throw new fc.PreconditionFailure(true);
    const config = steer(config0, declined);
    const t = o.targetFactory ? o.targetFactory() : makeTarget(o.target, { producer: o.producer });
    const kinds = new Set([...BITMAP_TRACE_KINDS].filter((k) => t.capabilities.has(k)));
    const r = await runTrace(t, config, { ops: concreteBitmapTrace(config, first, items, kinds, t.knownBugs) }, { tmpRoot });
    onRun(r);
    return r.failure === undefined;
  });
}

/** The options with excluded op kinds taken out of every target the campaign builds (generation, shrinking, the saved re-run). */
function withExclusions(o: CampaignOptions): CampaignOptions {
  const kinds = o.exclude?.kinds;
  if (!kinds || kinds.size === 0) return o;
  const base = o.targetFactory ?? (() => makeTarget(o.target, { producer: o.producer }));
  return { ...o, targetFactory: () => withoutKinds(base(), kinds) };
}

/** Counts a declined run; a writer's refusal at create (op 0, no producer) steers the rest of the campaign. */
function countRefusal(stats: CampaignStats, declined: Set<string>, r: RunOutcome, readerMode: boolean): void {
  if (!r.refusal) return;
  stats.refusedRuns++;
  for (const f of r.refusal.features) stats.refusals[f] = (stats.refusals[f] ?? 0) + 1;
  if (!readerMode && r.refusal.atOp === 0) {
    // `declined` also holds the --exclude features; stats.declined lists only what the writer declined.
    for (const f of r.refusal.features) {
      declined.add(f);
      if (!stats.declined.includes(f)) stats.declined.push(f);
    }
    stats.declined.sort();
  }
}

export async function runCampaign(o0: CampaignOptions): Promise<CampaignStats> {
  let o = withExclusions(o0);
  const clock = o.clock ?? Date.now;
  const t0 = clock();
  const stats: CampaignStats = {
    runs: 0,
    shrinkRuns: 0,
    ops: 0,
    qemuImgChecks: 0,
    failures: [],
    elapsedSeconds: 0,
    corpus: [],
    refusals: {},
    refusedRuns: 0,
    declined: [],
    opCounts: {},
    featureCounts: {},
  };
  // Excluded features are steered away from from the start, as declined ones are once declined;
  // so are those the cmd protocol and reader mode cannot carry (a data file, a secret).
  const lacks = o.producer === undefined && (o.target === 'ts' || o.target === 'qemu') ? [] : PROTOCOL_LACKS;
  const declined = new Set<string>([...(o.exclude?.features ?? []), ...lacks]);
  // Reader programs are known to be readers only once they answer; a reader's refusal never steers.
  const c: ChunkContext = { o, clock, t0, stats, declined, readerMode: o.producer !== undefined, tmpRoot: '', deadline: 0, known: new Map() };
  // Small run budgets get small chunks so shards and workers all get some; the
  // chunk size depends only on the budget, so a seed names the same runs however split.
  const perChunk =
    o.runsPerChunk ?? (o.runs !== undefined ? Math.max(1, Math.min(DEFAULT_RUNS_PER_CHUNK, Math.ceil(o.runs / 8))) : DEFAULT_RUNS_PER_CHUNK);
  const shard = o.shard ?? { index: 0, count: 1 };
  c.tmpRoot = o.tmpRoot ?? path.join(scratchDir(), `qcow2-harness-${process.pid}`);
  c.deadline = o.timeSec !== undefined ? t0 + o.timeSec * 1000 : Number.POSITIVE_INFINITY;
  const maxRuns = o.runs ?? (o.timeSec !== undefined ? Number.POSITIVE_INFINITY : 100);
  if (o.runs === undefined && o.timeSec === undefined) c.o = o = { ...o, runs: maxRuns };
  c.known = o.corpusDir ? corpusSignatures(o.corpusDir) : new Map<string, string>();
  let nextChunk = shard.index;
  let planned = 0;

  // With a run budget the campaign is a fixed list of chunks, and a shard takes
  // every n-th of them: the shards of a campaign together run exactly its runs.
  const totalChunks = o.runs !== undefined ? Math.ceil(o.runs / perChunk) : Number.POSITIVE_INFINITY;

  const worker = async () => {
    while (clock() < c.deadline && planned < maxRuns && nextChunk < totalChunks) {
      const k = nextChunk;
      nextChunk += shard.count;
      const numRuns = o.runs !== undefined ? Math.min(perChunk, o.runs - k * perChunk) : perChunk;
      planned += numRuns;
      const generated = await runChunk(c, chunkSeed(o.seed, k), numRuns);
      planned -= numRuns - generated;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 1) }, worker));
  // Retries: a killed program's children may still be leaving files as the campaign ends.
  fs.rmSync(c.tmpRoot, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  stats.elapsedSeconds = (clock() - t0) / 1000;
  return stats;
}

interface ChunkContext {
  o: CampaignOptions;
  clock: () => number;
  t0: number;
  stats: CampaignStats;
  declined: Set<string>;
  readerMode: boolean;
  tmpRoot: string;
  deadline: number;
  known: Map<string, string>;
}

/**
 * One chunk: generation until its first failure or the deadline, then a
 * shrink of that failure under its own budget. Returns the runs generated.
 */
async function runChunk(c: ChunkContext, seed: number, numRuns: number): Promise<number> {
  const { o, clock, stats } = c;
  let shrinking = false;
  let last: RunOutcome | undefined;
  let generated = 0;
  let stop = () => clock() >= c.deadline;
  const onRun = (r: RunOutcome) => {
    if (shrinking) stats.shrinkRuns++;
    else {
      stats.runs++;
      generated++;
      c.readerMode ||= r.readerMode === true;
      stats.readerMode = c.readerMode;
      countRefusal(stats, c.declined, r, c.readerMode);
      for (const op of r.ops) stats.opCounts[op.kind] = (stats.opCounts[op.kind] ?? 0) + 1;
      for (const f of configFeatures(r.config)) stats.featureCounts[f] = (stats.featureCounts[f] ?? 0) + 1;
    }
    stats.ops += r.ops.length;
    stats.qemuImgChecks += r.qemuImgChecks;
    if (r.failure) last = r;
    stats.elapsedSeconds = (clock() - c.t0) / 1000;
    o.onProgress?.(stats);
  };
  // Both properties' counterexamples start with the configuration; the rest is only replayed through fast-check's path.
  const prop = (
    o.includeBitmaps
      ? bitmapTraceProperty(o, onRun, c.tmpRoot, c.declined, () => stop())
      : traceProperty(o.target, o.maxOps, onRun, c.tmpRoot, { producer: o.producer, declined: c.declined, stop: () => stop(), targetFactory: o.targetFactory })
  ) as fc.IAsyncProperty<[TraceConfig, ...unknown[]]>;
  // Generation ends at the first failure (endOnFailure: no shrinking here) or at the deadline.
  const gen = await fc.check(prop, {
    seed,
    numRuns,
    endOnFailure: true,
    interruptAfterTimeLimit: Number.isFinite(c.deadline) ? Math.max(1, c.deadline - clock()) : undefined,
    markInterruptAsFailure: false,
  });
  if (!gen.failed || !gen.counterexample || !last) return generated;
  const found = last;
  const foundAt = (clock() - c.t0) / 1000;
  const fcPath = gen.counterexamplePath ?? '';
  const known = knownFailure(c, found, seed, fcPath);
  if (known) {
    known.foundAfterSeconds = Math.round(foundAt * 10) / 10;
    stats.failures.push(known);
    return generated;
  }

  // The shrink: fast-check replays the failing run from its path and shrinks
  // it, under the shrink budget and not the campaign's deadline.
  shrinking = true;
  const shrinkStart = clock();
  const shrinkRuns0 = stats.shrinkRuns;
  const budgetMs = (o.shrinkTimeSec ?? DEFAULT_SHRINK_TIME_SEC) * 1000;
  stop = () => clock() >= shrinkStart + budgetMs;
  const sh = await fc.check(prop, {
    seed,
    path: fcPath,
    numRuns: 1,
    interruptAfterTimeLimit: Number.isFinite(budgetMs) ? Math.max(1, budgetMs) : undefined,
    markInterruptAsFailure: false,
  });
  // A replay that no longer fails (a flaky failure) leaves the failure as generation found it.
  const replayed = sh.failed && sh.counterexample !== null;
  const [config0, seeds] = replayed ? sh.counterexample! : gen.counterexample;
  const shrunk = replayed ? last : found;
  // The config the shrunk run really used (steered away from declined features).
  let config = shrunk.config ?? config0;
  // Hook (shrink-fold.ts): moves fast-check cannot make, on concrete ops, in what is left of the shrink budget.
  // A bitmap trace is concrete already: its run's ops are the trace.
  let source: { seeds: OpSeed[] } | { ops: Op[] } = o.includeBitmaps ? { ops: shrunk.ops } : { seeds: seeds as OpSeed[] };
  let saved = shrunk;
  const fold = replayed && shrunk.failure ? await foldShrunk(c, shrunk as RunOutcome & { failure: Failure }, () => clock() < shrinkStart + budgetMs) : undefined;
  if (fold?.outcome) {
    config = fold.config;
    source = { ops: fold.ops };
    saved = fold.outcome;
  }
  const report = await saveFailure(o, config, source, seed, replayed ? (sh.counterexamplePath ?? fcPath) : fcPath, c.tmpRoot, stats, c.known, saved);
  report.foundAfterSeconds = Math.round(foundAt * 10) / 10;
  report.shrinkSeconds = Math.round((clock() - shrinkStart) / 100) / 10;
  report.shrinkRuns = stats.shrinkRuns - shrinkRuns0;
  report.shrinkComplete = replayed && !sh.interrupted && fold?.complete !== false;
  if (fold?.steps.length) report.shrinkSteps = fold.steps;
  // Hook: corpus entries whose ops this finding repeats, whatever their signature (the entry it was just saved as left out).
  const matches = o.corpusDir ? corpusMatches(o.corpusDir, report, report.duplicate ? undefined : report.corpusId) : [];
  if (matches.length) report.corpusMatches = matches;
  stats.failures.push(report);
  return generated;
}

/**
 * A failure whose signature the corpus (or this campaign) already holds,
 * reported without shrinking, as a fuzzer counts a crash it has seen: a
 * shrink would end in the entry that is there, and the known bugs of a target
 * would take the campaign's time instead of new ones. Undefined otherwise.
 */
function knownFailure(c: ChunkContext, found: RunOutcome, seed: number, fcPath: string): FailureReport | undefined {
  const f = found.failure;
  if (!f) return undefined;
  const producer = found.readerMode ? (c.o.producer ?? 'qemu') : undefined;
  const id = c.known.get(entrySignature({ target: c.o.target, producer, oracle: f.oracle, message: f.message, opIndex: f.opIndex, ops: found.ops }));
  if (id === undefined) return undefined;
  const report: FailureReport = {
    target: c.o.target,
    seed,
    path: fcPath,
    oracle: f.oracle,
    message: f.message,
    config: found.config,
    ops: found.ops.map(formatOp),
    corpusId: id,
    duplicate: true,
    shrinkSkipped: true,
  };
  if (producer) report.producer = producer;
  return report;
}

/** The fold pass of shrink-fold.ts with the campaign's targets; its runs count as shrink runs. */
function foldShrunk(c: ChunkContext, shrunk: RunOutcome & { failure: Failure }, inBudget: () => boolean) {
  const { o, stats } = c;
  return foldFailure(() => (o.targetFactory ? o.targetFactory() : makeTarget(o.target, { producer: o.producer })), shrunk, {
    tmpRoot: c.tmpRoot,
    declined: c.declined,
    inBudget,
    onRun: (r) => {
      stats.shrinkRuns++;
      stats.ops += r.ops.length;
      stats.qemuImgChecks += r.qemuImgChecks;
      stats.elapsedSeconds = (c.clock() - c.t0) / 1000;
      o.onProgress?.(stats);
    },
  });
}

/** Re-runs the minimal counterexample, keeping its directory, and saves it to the corpus. */
async function saveFailure(
  o: CampaignOptions,
  config: TraceConfig,
  source: { seeds: OpSeed[] } | { ops: Op[] },
  seed: number,
  fcPath: string,
  tmpRoot: string,
  stats: CampaignStats,
  known: Map<string, string>,
  shrunk: RunOutcome,
): Promise<FailureReport> {
  const t = o.targetFactory ? o.targetFactory() : makeTarget(o.target, { producer: o.producer });
  const r = await runTrace(t, config, source, { keepDir: true, tmpRoot });
  // A reader program paired with the default producer is recorded with it, so replay rebuilds the same image.
  const producer = r.readerMode || shrunk.readerMode ? (o.producer ?? 'qemu') : undefined;
  try {
    // A failure that does not come back on a re-run is reported, never saved:
    // the corpus holds only what replays.
    const flaky = r.failure === undefined;
    const failure = r.failure ?? {
      ...shrunk.failure!,
      message: `${shrunk.failure!.message} [did not reproduce on a re-run: flaky]`,
    };
    const report: FailureReport = {
      target: o.target,
      seed,
      path: fcPath,
      oracle: failure.oracle,
      message: failure.message,
      config,
      ops: (flaky ? shrunk.ops : r.ops).map(formatOp),
    };
    if (producer) report.producer = producer;
    const sig = entrySignature({ target: o.target, producer, oracle: failure.oracle, message: failure.message, opIndex: failure.opIndex, ops: flaky ? shrunk.ops : r.ops });
    const seen = known.get(sig);
    if (seen) {
      report.corpusId = seen;
      report.duplicate = true;
    } else if (o.corpusDir && r.model && !flaky) {
      const e = writeEntry(o.corpusDir, {
        target: o.target,
        config,
        ops: r.ops,
        seed,
        path: fcPath,
        oracle: failure.oracle,
        message: failure.message,
        opIndex: failure.opIndex,
        imageFile: path.join(r.dir, 'image.qcow2'),
        backingFile: config.backing ? path.join(r.dir, backingFileName(config.backing)) : undefined,
        chainFiles: backingChain(config).slice(1).map((l) => path.join(r.dir, l.file)),
        dataFile: config.dataFile ? path.join(r.dir, DATA_FILE_NAME) : undefined,
        producer,
        implementation: r.implementation,
        external: producer ? readerExternal(o.target, r.implementation, failure.oracle, failure.message, `qcow2-harness fuzz --target ${o.target} --producer ${producer} (seed ${seed})`) : undefined,
        repro: producer
          ? readerReproScript({ target: o.target, producer, config, ops: r.ops, oracle: failure.oracle, message: failure.message, implementation: r.implementation })
          : reproScript({ target: o.target, config, ops: r.ops, model: r.model, refused: r.refused, oracle: failure.oracle, message: failure.message }),
      });
      report.corpusId = e.id;
      report.duplicate = e.duplicate;
      known.set(sig, e.id);
      if (!stats.corpus.includes(e.id)) stats.corpus.push(e.id);
    }
    return report;
  } finally {
    fs.rmSync(r.dir, { recursive: true, force: true });
  }
}

/** A failure as text: what a failing property prints. */
export function formatFailure(f: FailureReport): string {
  return [
    `${f.oracle}: ${f.message}`,
    `  target ${f.target}${f.producer ? ` (images by ${f.producer})` : ''}, seed ${f.seed}, path "${f.path}"${f.corpusId ? `, corpus ${f.corpusId}${f.duplicate ? ' (already known)' : ''}` : ''}`,
    `  config ${JSON.stringify(f.config)}`,
    ...(f.shrinkSeconds !== undefined
      ? [
          `  found after ${f.foundAfterSeconds} s; shrunk in ${f.shrinkSeconds} s (${f.shrinkRuns} runs)` +
            (f.shrinkComplete ? '' : ': shrinking did not run to the end (its budget, --shrink-time, ran out, or the failure did not replay), the trace may not be minimal'),
        ]
      : []),
    ...(f.shrinkSkipped ? [`  found after ${f.foundAfterSeconds} s; not shrunk: corpus entry ${f.corpusId} has its signature (the ops below are the trace as generated)`] : []),
    ...(f.shrinkSteps?.length ? [`  then, past fast-check: ${f.shrinkSteps.join('; ')}`] : []),
    ...(f.corpusMatches?.length ? [`  ${describeMatches(f.corpusMatches)}`] : []),
    ...f.ops.map((x, i) => `  ${String(i + 1).padStart(3)}: ${x}`),
  ].join('\n');
}
