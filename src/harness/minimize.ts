/**
 * Re-shrinking a saved trace (e.g. after a fix changed what it takes to fail):
 * greedy delta debugging over concrete ops and the config (an amend folded
 * into it among the moves), keeping a change whenever the trace still fails
 * with the same oracle.
 */
import { SECTOR } from '../model/layer.js';
import type { BackingConfig, TraceConfig } from './config.js';
import { runTrace } from './execute.js';
import type { Failure, OracleName } from './oracles.js';
import type { Op } from './ops.js';
import { foldMoves } from './shrink-fold.js';
import { makeTarget, type ProducerSpec } from './targets/index.js';
import type { Target } from './targets/types.js';

export interface MinimizeResult {
  config: TraceConfig;
  ops: Op[];
  failure?: Failure;
  attempts: number;
}

export async function minimizeTrace(
  targetName: string,
  config: TraceConfig,
  ops: Op[],
  oracle: OracleName,
  o: {
    messageIncludes?: string;
    maxAttempts?: number;
    strict?: boolean;
    tmpRoot?: string;
    producer?: ProducerSpec;
    /** Builds the implementation instead of makeTarget(targetName): tests plant a bug in a wrapper of our engine. */
    targetFactory?: () => Target;
  } = {},
): Promise<MinimizeResult> {
  let attempts = 0;
  const max = o.maxAttempts ?? 500;
  const fails = async (c: TraceConfig, xs: Op[]): Promise<Failure | undefined> => {
    attempts++;
    const t = o.targetFactory ? o.targetFactory() : makeTarget(targetName, { strict: o.strict, producer: o.producer });
    const r = await runTrace(t, c, { ops: xs }, { tmpRoot: o.tmpRoot });
    const f = r.failure;
    if (f && f.oracle === oracle && (!o.messageIncludes || f.message.includes(o.messageIncludes))) return f;
    return undefined;
  };
  let best = { config, ops, failure: await fails(config, ops) };
  if (!best.failure) return { ...best, attempts };

  let progress = true;
  while (progress && attempts < max) {
    progress = false;
    // 1. drop ops, last first (later ops depend on earlier ones less often)
    for (let i = best.ops.length - 1; i >= 0 && attempts < max; i--) {
      const xs = best.ops.filter((_, j) => j !== i);
      const f = await fails(best.config, xs);
      if (f) {
        best = { config: best.config, ops: xs, failure: f };
        progress = true;
      }
    }
    // 2. shrink ranges and sizes
    for (let i = 0; i < best.ops.length && attempts < max; i++) {
      for (const cand of smallerOps(best.ops[i]!)) {
        const xs = best.ops.slice();
        xs[i] = cand;
        const f = await fails(best.config, xs);
        if (f) {
          best = { config: best.config, ops: xs, failure: f };
          progress = true;
          break;
        }
      }
    }
    // 3. simplify the config
    for (const c of simplerConfigs(best.config)) {
      if (attempts >= max) break;
      const f = await fails(c, best.ops);
      if (f) {
        best = { config: c, ops: best.ops, failure: f };
        progress = true;
      }
    }
    // 4. fold an amend into the config (shrink-fold.ts): the image created as the amend leaves it
    for (const m of foldMoves(best.config, best.ops)) {
      if (attempts >= max) break;
      const f = await fails(m.config, m.ops);
      if (f) {
        best = { config: m.config, ops: m.ops, failure: f };
        progress = true;
        break;
      }
    }
  }
  return { ...best, attempts };
}

function smallerOps(op: Op): Op[] {
  if ('len' in op && op.len > SECTOR) {
    const half = Math.max(SECTOR, Math.floor(op.len / 2 / SECTOR) * SECTOR);
    return [
      { ...op, len: half },
      { ...op, off: op.off + op.len - half, len: half },
    ];
  }
  return [];
}

function dropBottom(b: BackingConfig): BackingConfig {
  if (!b.backing?.backing) {
    const { backing: _drop, ...rest } = b;
    return rest;
  }
  return { ...b, backing: dropBottom(b.backing) };
}

function simplerConfigs(c: TraceConfig): TraceConfig[] {
  const out: TraceConfig[] = [];
  if (c.backing) {
    const { backing: _drop, ...rest } = c;
    out.push(rest);
  }
  // A chain loses its bottom levels one at a time; preallocation goes before the features it needs.
  if (c.backing?.backing) out.push({ ...c, backing: dropBottom(c.backing) });
  if (c.preallocation) {
    const { preallocation: _p, ...rest } = c;
    out.push(rest);
  }
  if (c.dirty) {
    const { dirty: _d, ...rest } = c;
    out.push(rest);
  }
  if (c.lazyRefcounts && !c.dirty) out.push({ ...c, lazyRefcounts: false });
  if (c.compressionType !== 'zlib') out.push({ ...c, compressionType: 'zlib' });
  if (c.extendedL2 && !(c.preallocation && c.backing)) out.push({ ...c, extendedL2: false });
  if (c.refcountBits !== 16) out.push({ ...c, refcountBits: 16 });
  return out;
}
