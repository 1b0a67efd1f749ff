/**
 * Runs one trace on a target against the model: ops (resolved from seeds, or
 * given concretely when replaying), per-op verdicts, reads of the touched
 * ranges after every op or batch, and the end-of-run oracles.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DiskModel } from '../model/disk.js';
import { HangError } from '../qemu/errors.js';
import { applyOp, expectOp } from './apply-model.js';
import { resolveOp, type OpSeed } from './arbitraries.js';
import { accessOf, toModelConfig, type TraceConfig } from './config.js';
import { CrashTracker, crashSeed, examineCrashStates } from './crash.js';
import { makeData } from './data.js';
import { imgCheck } from '../qemu/index.js';
import { removeScratchDir } from '../qemu/scratch.js';
import { endOracles, readViews, type Failure } from './oracles.js';
import { mediaSizeProblem } from './reader/size.js';
import { dataRangeOf, formatOp, refusedOp, specOf, touchedBy, type Op } from './ops.js';
import { configFeatures } from './reader/features.js';
import { RefusalError, type Refusal } from './reader/types.js';
import type { StampedOp, Target } from './targets/types.js';
import { describeMismatch, mergeRanges, verifyRange } from './verify.js';

/** Longest qemu-io batch: bounds the command line and keeps failures attributable. */
const MAX_BATCH = 64;

export interface RunOutcome {
  config: TraceConfig;
  /** Concrete ops executed (up to and including the failing one). */
  ops: Op[];
  failure?: Failure;
  qemuImgChecks: number;
  /** The model after the run (the expected guest view at the failing point). */
  model?: DiskModel;
  /** 1-based numbers of ops the target refused. */
  refused: Set<number>;
  /** Working directory holding image.qcow2 (kept only when `keepDir`). */
  dir: string;
  /** The implementation declined the configuration (counted, not a failure; docs/cmd-protocol.md). */
  refusal?: Refusal;
  /** The target turned out to be a reader paired with a producer. */
  readerMode?: boolean;
  /** What the implementation said it is, when it said (reader programs). */
  implementation?: string;
}

export interface RunOptions {
  keepDir?: boolean;
  tmpRoot?: string;
  /** Skip the end-of-run oracles (per-op verdicts and reads only). */
  skipEndOracles?: boolean;
}

type Source = { seeds: OpSeed[] } | { ops: Op[] };

export async function runTrace(target: Target, config: TraceConfig, source: Source, o: RunOptions = {}): Promise<RunOutcome> {
  const root = o.tmpRoot ?? os.tmpdir();
  fs.mkdirSync(root, { recursive: true });
  const dir = fs.mkdtempSync(path.join(root, 'qh-'));
  const out: RunOutcome = { config, ops: [], qemuImgChecks: 0, dir, refused: new Set() };
  try {
    out.failure = await execute(target, config, source, dir, out, o);
  } catch (e) {
    if (e instanceof RefusalError) out.refusal = refusalOf(e, config, out.ops.length);
    else out.failure = toFailure(e, out.ops.length);
  } finally {
    await target.close().catch(() => undefined);
    if (!o.keepDir) removeScratchDir(dir);
  }
  return out;
}

function refusalOf(e: RefusalError, config: TraceConfig, atOp: number): Refusal {
  // A program that does not name what it declines is counted against every feature the configuration uses.
  const features = e.features.length ? e.features : configFeatures(config);
  return { features: features.length ? features : ['(plain image)'], message: e.message, atOp };
}

function toFailure(e: unknown, opIndex: number): Failure {
  if (e instanceof HangError) return { oracle: 'hang', message: e.message, opIndex };
  const err = e as Error;
  return { oracle: 'exception', message: `${err?.name ?? 'Error'}: ${err?.message ?? String(e)}`, opIndex };
}

async function execute(
  target: Target,
  config: TraceConfig,
  source: Source,
  dir: string,
  out: RunOutcome,
  o: RunOptions,
): Promise<Failure | undefined> {
  const model = new DiskModel(toModelConfig(config), {
    regrowTail: target.knownBugs?.has('stale-tail-after-regrow') ? 'unspecified' : 'zeros',
  });
  out.model = model;
  try {
    await target.setup(config, dir);
  } finally {
    out.readerMode = target.producer !== undefined;
    out.implementation = target.implementation;
  }
  let batch: StampedOp[] = [];
  let tolerateLeaks: string | undefined;
  let pendingWhole = false;
  const crash = target.crashImages ? new CrashTracker(model) : undefined;

  const runBatch = async (ops: StampedOp[]): Promise<Failure | undefined> => {
    if (ops.length === 0) return undefined;
    let outcomes;
    try {
      outcomes = await target.run(ops);
    } catch (e) {
      if (e instanceof RefusalError) throw e;
      return toFailure(e, ops[0]!.index);
    }
    const sizeBefore = model.size;
    let wholeDisk = false;
    const ranges: [number, number][] = [];
    for (let i = 0; i < ops.length; i++) {
      const { op, index } = ops[i]!;
      const outcome = outcomes[i]!;
      const exp = expectOp(model, op);
      const text = formatOp(op);
      if (exp.verdict === 'ok' && !outcome.ok) {
        return { oracle: 'op', opIndex: index, message: `op #${index} '${text}' failed: ${outcome.error}` };
      }
      if (exp.verdict === 'refuse' && outcome.ok) {
        return { oracle: 'op', opIndex: index, message: `op #${index} '${text}' succeeded but must be refused (${exp.reason})` };
      }
      if (outcome.ok) {
        const settle = specOf(op).settle;
        if (settle) {
          // An aio group: the model follows the serial order the target's outcome shows.
          const bad = await settle(model, op, index, (off, len) => target.read(off, len), outcome);
          if (bad) return { oracle: 'read', opIndex: index, message: `op #${index}: ${bad}` };
        } else applyOp(model, op, index);
      } else {
        out.refused.add(index);
        refusedOp(model, op);
        const f = await settleFailure(model, op, index, exp.verdict, target);
        if (f) return f;
        if (op.kind === 'snapshot' && op.action === 'create' && target.knownBugs?.has('leak-after-refused-snapshot')) {
          tolerateLeaks = 'known QEMU bug: a refused snapshot create leaks a cluster';
        }
      }
      tolerateLeaks ??= specOf(op).mayLeak;
      crash?.afterOp(op, outcome.ok);
      if (op.kind === 'crash' && outcome.ok && crash) {
        const f = await checkCrashImages(target, crash, index, out, config);
        if (f) return f;
      }
      const touched = touchedBy(op);
      if (touched === 'whole') wholeDisk = true;
      else ranges.push(...touched);
    }
    const last = ops[ops.length - 1]!.index;
    pendingWhole ||= wholeDisk || model.size !== sizeBefore;
    if (target.verifyAfter === 'batch' && !ops.some((x) => target.batchable(x.op))) return undefined;
    const check: [number, number][] = pendingWhole ? wholeDiskRanges(model) : mergeRanges(ranges);
    pendingWhole = false;
    for (const view of readViews(target)) {
      const sized = await mediaSizeProblem(view.target, model.size, `after op #${last}`, view.label);
      if (sized) return { oracle: 'read', opIndex: last, message: sized };
      for (const [off, len0] of check) {
        const len = Math.min(len0, model.size - off);
        if (len <= 0) continue;
        const bytes = await view.target.read(off, len);
        const m = verifyRange(model, model.active, off, bytes);
        if (m) return { oracle: 'read', opIndex: last, message: describeMismatch(`${view.label}after op #${last}`, m) };
      }
    }
    return undefined;
  };

  const flushBatch = async () => {
    const b = batch;
    batch = [];
    return runBatch(b);
  };

  const items: (OpSeed | Op)[] = 'seeds' in source ? source.seeds : source.ops;
  for (const item of items) {
    const op = 'seeds' in source ? resolveOp(item as OpSeed, model, target) : (item as Op);
    if (!op) continue;
    out.ops.push(op);
    const index = out.ops.length;
    const stamped: StampedOp = { op, index };
    const data = dataRangeOf(op);
    if (data) stamped.data = makeData(index, data[0], data[1]);
    if (target.batchable(op)) {
      batch.push(stamped);
      if (batch.length >= MAX_BATCH) {
        const f = await flushBatch();
        if (f) return trim(out, f);
      }
      continue;
    }
    const f = (await flushBatch()) ?? (await runBatch([stamped]));
    if (f) return trim(out, f);
  }
  const f = await flushBatch();
  if (f) return trim(out, f);
  if (o.skipEndOracles) return undefined;
  const end = await endOracles(target, model, config, dir, { tolerateLeaks });
  out.qemuImgChecks += end.qemuImgChecks;
  return end.failure;
}

/**
 * An op that failed where the model let it succeed may still have changed its
 * range part-way (a fault op): its spec settles the model on what the target
 * shows, which must be each sector's old or new value.
 */
async function settleFailure(model: DiskModel, op: Op, index: number, verdict: string, target: Target): Promise<Failure | undefined> {
  const settle = specOf(op).settleFailure;
  if (!settle || verdict === 'refuse') return undefined;
  const bad = await settle(model, op, index, (off, len) => target.read(off, len));
  return bad ? { oracle: 'read', opIndex: index, message: `op #${index}: ${bad}` } : undefined;
}

/** The crash oracle at op `index`: every crash state must open, read as the tracker allows, and (those sampled) check clean. */
async function checkCrashImages(target: Target, crash: CrashTracker, index: number, out: RunOutcome, config: TraceConfig): Promise<Failure | undefined> {
  const access = accessOf(config);
  const r = await examineCrashStates(target.crashImages!.bind(target), crash, `op #${index}`, crashSeed(index, 0), (f) => imgCheck(f, { access }));
  out.qemuImgChecks += r.qemuChecks;
  return r.problem ? { oracle: 'crash', opIndex: index, message: r.problem } : undefined;
}

/** Above this size a mid-run "whole disk" check reads only where content can be (the end reads everything). */
const FULL_READ_LIMIT = 4 * 1024 * 1024;

/**
 * The ranges a mid-run whole-disk check reads: everything on small disks; on
 * big ones every sector the model holds content for (data, explicit zeros over
 * a backing file, backing content), plus the first and last clusters.
 */
function wholeDiskRanges(model: DiskModel): [number, number][] {
  const size = model.size;
  if (size <= FULL_READ_LIMIT) return [[0, size]];
  const cs = model.meta.clusterSize;
  const ranges: [number, number][] = [
    [0, Math.min(size, 2 * cs)],
    [Math.max(0, size - 2 * cs), Math.min(size, 2 * cs)],
  ];
  const sectors = [...model.active.sectors.keys()];
  if (model.backing) for (const s of model.backing.sectors.keys()) if (s < model.active.backingEnd) sectors.push(s);
  for (const s of sectors) ranges.push([s * 512, 512]);
  return mergeRanges(ranges).map(([o, l]) => [o, Math.min(l, size - o)] as [number, number]).filter(([, l]) => l > 0);
}

/** A failure ends the trace at the op that revealed it. */
function trim(out: RunOutcome, f: Failure): Failure {
  if (f.opIndex !== undefined && f.opIndex > 0) out.ops.length = Math.min(out.ops.length, f.opIndex);
  return f;
}
