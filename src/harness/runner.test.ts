import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { configArb, opSeedsArb } from './arbitraries.js';
import { runTrace } from './execute.js';
import { chunkSeed, runCampaign } from './runner.js';
import { makeTarget } from './targets/index.js';

describe('campaign determinism and shards', () => {
  it('chunk seeds are a fixed function of (seed, chunk): pinned values, all distinct', () => {
    // What `fuzz --seed 1` (and 99, -5) has always run: changing chunkSeed silently changes
    // every campaign and every seed recorded in a corpus entry.
    expect([chunkSeed(1, 0), chunkSeed(99, 0), chunkSeed(99, 1), chunkSeed(-5, 7)]).toEqual([-2041251858, -1218252285, 352489990, -1600035708]);
    const seen = new Set<number>();
    for (const seed of [0, 1, 2, 99, -1, 2 ** 31 - 1]) for (let k = 0; k < 500; k++) seen.add(chunkSeed(seed, k));
    expect(seen.size).toBe(6 * 500);
  });

  it('a chunk seed draws the same runs in two independent samplings', () => {
    const a = fc.sample(fc.tuple(configArb, opSeedsArb(8)), { seed: chunkSeed(5, 3), numRuns: 5 });
    const b = fc.sample(fc.tuple(configArb, opSeedsArb(8)), { seed: chunkSeed(5, 3), numRuns: 5 });
    expect(a).toEqual(b);
    const other = fc.sample(fc.tuple(configArb, opSeedsArb(8)), { seed: chunkSeed(5, 4), numRuns: 5 });
    expect(other).not.toEqual(a);
  });

  it('shards run every chunk of the campaign exactly once, and the same seed gives the same runs', async () => {
    const base = { target: 'ts', seed: 7, runs: 6, maxOps: 6, runsPerChunk: 2 };
    // The campaign is chunks 0, 1, 2 of two runs each; shard 0/2 takes chunks 0 and 2, shard 1/2 chunk 1.
    const chunkOps: number[] = [];
    const kinds: Record<string, number> = {};
    for (let k = 0; k < 3; k++) {
      let ops = 0;
      for (const [config, seeds] of fc.sample(fc.tuple(configArb, opSeedsArb(base.maxOps)), { seed: chunkSeed(base.seed, k), numRuns: 2 })) {
        const r = await runTrace(makeTarget('ts'), config, { seeds });
        ops += r.ops.length;
        for (const op of r.ops) kinds[op.kind] = (kinds[op.kind] ?? 0) + 1;
      }
      chunkOps.push(ops);
    }
    // Chunks that differ in size make a shard's total name its chunks.
    expect(new Set(chunkOps).size, `ops per chunk ${chunkOps.join(', ')}`).toBe(3);
    const whole = await runCampaign(base);
    const again = await runCampaign(base);
    const s0 = await runCampaign({ ...base, shard: { index: 0, count: 2 } });
    const s1 = await runCampaign({ ...base, shard: { index: 1, count: 2 } });
    expect(whole.failures).toEqual([]);
    expect([whole.runs, whole.ops]).toEqual([6, chunkOps[0]! + chunkOps[1]! + chunkOps[2]!]);
    expect([again.runs, again.ops]).toEqual([whole.runs, whole.ops]);
    expect([s0.runs, s0.ops]).toEqual([4, chunkOps[0]! + chunkOps[2]!]);
    expect([s1.runs, s1.ops]).toEqual([2, chunkOps[1]!]);
    // The summary's opCounts are the generated runs' ops, kind by kind.
    expect(whole.opCounts).toEqual(kinds);
  });
});
