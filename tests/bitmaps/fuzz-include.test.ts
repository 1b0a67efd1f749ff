/**
 * `fuzz --include bitmap`: a campaign draws the bitmap suite's traces
 * (src/harness/bitmap-trace.ts) and the bitmap end oracle judges every run.
 * Fixed seed, bounded runs: our engine runs clean with bitmaps really added
 * and dirtied, and an engine planted with a bug that forgets to dirty a
 * granule is caught by the bitmap oracle.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { BITMAP_LEFT_OUT } from '../../src/harness/bitmap-trace.js';
import { runCampaign, type CampaignOptions } from '../../src/harness/runner.js';
import { makeTarget } from '../../src/harness/targets/index.js';
import type { Target } from '../../src/harness/targets/types.js';
import { BitmapSet, setRange } from '../../src/qcow2/bitmap-set.js';

const base: CampaignOptions = { target: 'ts', seed: 2024, runs: 16, maxOps: 10, includeBitmaps: true, shrinkTimeSec: 60 };

/** Our engine, counting the runs at whose end its own reading (held to the model's by the oracle) has a dirty granule. */
function counting(tally: { dirtyRuns: number }, wrap?: (t: Target) => Target): () => Target {
  return () => {
    const t = makeTarget('ts');
    const own = t.bitmaps!.bind(t);
    t.bitmaps = async () => {
      const views = await own();
      if (views.some((b) => b.dirty.length > 0)) tally.dirtyRuns++;
      return views;
    };
    return wrap ? wrap(t) : t;
  };
}

const realMarkDirty = BitmapSet.prototype.markDirty;
afterEach(() => {
  BitmapSet.prototype.markDirty = realMarkDirty;
});

/**
 * The planted bug: while the target runs ops, a request spanning more than
 * one granule of a bitmap leaves its first granule clean (the rest is dirtied as usual).
 */
function forgetsFirstGranule(t: Target): Target {
  const run = t.run.bind(t);
  t.run = async (ops) => {
    BitmapSet.prototype.markDirty = function (this: BitmapSet, offset: number, length: number) {
      if (length <= 0) return;
      for (const b of this.list) {
        if (!b.enabled || b.inconsistent) continue;
        const g = 2 ** b.granularityBits;
        const second = (Math.floor(offset / g) + 1) * g;
        if (offset + length > second) setRange(b, second, offset + length - second);
        else setRange(b, offset, length);
      }
    };
    try {
      return await run(ops);
    } finally {
      BitmapSet.prototype.markDirty = realMarkDirty;
    }
  };
  return t;
}

describe('fuzz --include bitmap', () => {
  it('a fixed-seed campaign on our engine adds and dirties bitmaps and runs clean, without the kinds the bitmap model does not describe', async () => {
    const tally = { dirtyRuns: 0 };
    const s = await runCampaign({ ...base, targetFactory: counting(tally) });
    console.log(`fuzz --include bitmap, ts: ${s.runs} runs, ${s.opCounts['bitmap'] ?? 0} bitmap ops, ${tally.dirtyRuns} runs ending with dirty granules`);
    expect(s.failures.map((f) => `${f.oracle}: ${f.message}`)).toEqual([]);
    expect(s.runs).toBe(16);
    expect(s.opCounts['bitmap'] ?? 0).toBeGreaterThan(16);
    expect(tally.dirtyRuns).toBeGreaterThan(3);
    for (const k of BITMAP_LEFT_OUT) expect(s.opCounts[k], k).toBeUndefined();
    expect(BITMAP_LEFT_OUT).toEqual(['amend', 'crash', 'fault', 'aio']);
  });

  it('an engine that forgets to dirty a granule is caught by the bitmap oracle, and not without --include', async () => {
    // One chunk and a short shrink budget: the verdict needs the first finding, not a minimal one.
    const caught = await runCampaign({ ...base, runsPerChunk: 16, shrinkTimeSec: 10, targetFactory: counting({ dirtyRuns: 0 }, forgetsFirstGranule) });
    expect(caught.failures.length).toBeGreaterThan(0);
    const f = caught.failures[0]!;
    expect(f.oracle, f.message).toBe('bitmap');
    expect(f.message).toMatch(/^bitmap '[abc]': QEMU reads dirty .*, the model has /);
    expect(f.ops.some((o) => o.startsWith('bitmap '))).toBe(true);
    // The plain campaign draws no bitmap op, so the same planted bug goes unseen there.
    const plain = await runCampaign({ ...base, includeBitmaps: false, targetFactory: counting({ dirtyRuns: 0 }, forgetsFirstGranule) });
    expect(plain.opCounts['bitmap']).toBeUndefined();
    expect(plain.failures).toEqual([]);
  });
});
