import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { configArb, opSeedsArb } from './arbitraries.js';
import { chunkSeed, runCampaign } from './runner.js';

describe('campaign determinism and shards', () => {
  it('chunk seeds are a fixed function of (seed, chunk)', () => {
    expect(chunkSeed(1, 0)).toBe(chunkSeed(1, 0));
    expect(chunkSeed(1, 0)).not.toBe(chunkSeed(1, 1));
    expect(chunkSeed(1, 0)).not.toBe(chunkSeed(2, 0));
    const a = fc.sample(fc.tuple(configArb, opSeedsArb(8)), { seed: chunkSeed(5, 3), numRuns: 5 });
    const b = fc.sample(fc.tuple(configArb, opSeedsArb(8)), { seed: chunkSeed(5, 3), numRuns: 5 });
    expect(a).toEqual(b);
  });

  it('the shards of a campaign run exactly its runs, and the same seed gives the same runs', async () => {
    const base = { target: 'qemu', seed: 99, runs: 6, maxOps: 3, runsPerChunk: 2 };
    const whole = await runCampaign(base);
    const again = await runCampaign(base);
    const s0 = await runCampaign({ ...base, shard: { index: 0, count: 2 } });
    const s1 = await runCampaign({ ...base, shard: { index: 1, count: 2 } });
    expect(whole.runs).toBe(6);
    expect(again.ops).toBe(whole.ops);
    expect(s0.runs + s1.runs).toBe(6);
    expect(s0.ops + s1.ops).toBe(whole.ops);
    expect(whole.failures).toEqual([]);
  }, 120_000);
});
