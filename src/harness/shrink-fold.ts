/**
 * The shrink after fast-check's (issue 12 item 4): moves that fast-check
 * cannot make, because it shrinks op *seeds* and a configuration drawn
 * apart from them.
 *
 * - Folding an amend into the configuration: `amend refcount_bits=2` in the
 *   middle of a trace becomes an image created with 2-bit refcounts, one op
 *   shorter. Fast-check can only drop the amend's seed, which loses the bug.
 * - Dropping ops that repeat an earlier op (the same write range, the same
 *   snapshot action on the same name) and snapshot ops: removing a seed
 *   re-resolves every later seed against a different model, so fast-check
 *   rarely removes an op in the middle and keeps the rest as they were.
 * - After a fold, dropping any one op: the ops before the amend now run on
 *   the folded image, and some were there only for the old configuration.
 *
 * Every move runs on concrete ops and is kept only when the trace still
 * fails with the same signature (oracle and message shape, numbers blanked:
 * op numbers shift as ops go). The moves are tried in a fixed order, so a
 * seed gives the same result; the pass is bounded by the caller's budget.
 */
import { configProblems, type TraceConfig } from './config.js';
import { failureSignature } from './corpus.js';
import { runTrace, type RunOutcome } from './execute.js';
import type { Failure } from './oracles.js';
import { formatOp, type AmendOp, type Op } from './ops.js';
import { steer } from './reader/features.js';
import type { Target } from './targets/types.js';

/** One candidate move: the trace it gives and what it did, in words. */
export interface ShrinkMove {
  config: TraceConfig;
  ops: Op[];
  step: string;
  fold?: true;
}

/** The configuration an image created with `c` has after the amend, or null when no creation gives it. */
export function foldAmend(c: TraceConfig, op: AmendOp): TraceConfig | null {
  let out: TraceConfig;
  if (op.key === 'refcount_bits') out = { ...c, refcountBits: op.value };
  else if (op.key === 'compat') out = { ...c, compat: op.value };
  else out = { ...c, lazyRefcounts: op.value };
  return configProblems(out).length === 0 ? out : null;
}

const without = (ops: readonly Op[], i: number) => ops.filter((_, j) => j !== i);

/** Amends folded into the configuration, first amend first (the earliest changes the most ops). */
export function foldMoves(c: TraceConfig, ops: readonly Op[]): ShrinkMove[] {
  const out: ShrinkMove[] = [];
  ops.forEach((op, i) => {
    if (op.kind !== 'amend') return;
    const folded = foldAmend(c, op);
    if (folded) out.push({ config: folded, ops: without(ops, i), step: `folded op #${i + 1} '${formatOp(op)}' into the configuration`, fold: true });
  });
  return out;
}

/** Ops that repeat an earlier op's text, and snapshot ops, each dropped alone; last first. */
export function repeatMoves(c: TraceConfig, ops: readonly Op[]): ShrinkMove[] {
  const out: ShrinkMove[] = [];
  const texts = ops.map(formatOp);
  for (let i = ops.length - 1; i >= 0; i--) {
    const repeat = texts.indexOf(texts[i]!) < i;
    if (!repeat && ops[i]!.kind !== 'snapshot') continue;
    out.push({ config: c, ops: without(ops, i), step: `dropped op #${i + 1} '${texts[i]}'${repeat ? ' (a repeat)' : ''}` });
  }
  return out;
}

/** Every op dropped alone, last first (later ops depend on earlier ones less often). */
export function dropMoves(c: TraceConfig, ops: readonly Op[]): ShrinkMove[] {
  const out: ShrinkMove[] = [];
  for (let i = ops.length - 1; i >= 0; i--) out.push({ config: c, ops: without(ops, i), step: `dropped op #${i + 1} '${formatOp(ops[i]!)}'` });
  return out;
}

export interface FoldOptions<R> {
  /** Runs a trace; the outcome's failure, if any, is judged by its signature. */
  run(config: TraceConfig, ops: Op[]): Promise<{ failure?: Failure; outcome: R }>;
  /** False once the budget is spent: the pass stops, keeping what it has. */
  inBudget(): boolean;
  /** Configurations a move may give (a campaign's --exclude and declined features stay out). */
  allowed?(config: TraceConfig): boolean;
}

export interface FoldResult<R> {
  config: TraceConfig;
  ops: Op[];
  /** The outcome of the last kept move (undefined: no move was kept). */
  outcome?: R;
  steps: string[];
  attempts: number;
  /** False when the budget ran out before no move was left to try. */
  complete: boolean;
}

/** The oracle and message shape: what a move must keep (a fold may move the failing op, so not where it showed). */
export const foldSignature = (f: Failure) => failureSignature('', f.oracle, f.message, '');

/**
 * Tries the moves in rounds until none is kept: folds, then repeats, then
 * (once something was folded) every single drop. The first move kept starts
 * the next round.
 */
export async function foldAndDrop<R>(config: TraceConfig, ops: readonly Op[], failure: Failure, o: FoldOptions<R>): Promise<FoldResult<R>> {
  const sig = foldSignature(failure);
  const res: FoldResult<R> = { config, ops: [...ops], steps: [], attempts: 0, complete: true };
  let folded = false;
  // Traces already tried and rejected: a later round offers many of them again.
  const rejected = new Set<string>();
  for (;;) {
    const moves: ShrinkMove[] = [...foldMoves(res.config, res.ops), ...repeatMoves(res.config, res.ops), ...(folded ? dropMoves(res.config, res.ops) : [])];
    let kept = false;
    for (const m of moves) {
      const key = JSON.stringify(m.config) + '\n' + m.ops.map(formatOp).join('\n');
      if (rejected.has(key) || (m.fold && o.allowed && !o.allowed(m.config))) continue;
      if (!o.inBudget()) {
        res.complete = false;
        return res;
      }
      res.attempts++;
      const r = await o.run(m.config, m.ops);
      if (r.failure && foldSignature(r.failure) === sig) {
        res.config = m.config;
        res.ops = m.ops;
        res.outcome = r.outcome;
        res.steps.push(m.step);
        folded ||= m.fold === true;
        kept = true;
        break;
      }
      rejected.add(key);
    }
    if (!kept) return res;
  }
}

/**
 * The pass as a campaign runs it on a shrunk failure: each attempt is a
 * fresh target, counted through onRun (as a shrink run); folds never give a
 * configuration generation is steered away from.
 */
export async function foldFailure(
  makeTarget: () => Target,
  shrunk: RunOutcome & { failure: Failure },
  o: { tmpRoot?: string; declined: ReadonlySet<string>; inBudget(): boolean; onRun(r: RunOutcome): void },
): Promise<FoldResult<RunOutcome>> {
  return foldAndDrop(shrunk.config, shrunk.ops, shrunk.failure, {
    inBudget: o.inBudget,
    allowed: (c) => JSON.stringify(steer(c, o.declined)) === JSON.stringify(c),
    run: async (config, ops) => {
      const r = await runTrace(makeTarget(), config, { ops }, { tmpRoot: o.tmpRoot });
      o.onRun(r);
      return { failure: r.failure, outcome: r };
    },
  });
}
