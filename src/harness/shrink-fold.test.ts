/**
 * The pass after fast-check's shrink (shrink-fold.ts): an amend folded into
 * the configuration, repeated ops dropped, and only when the failure keeps
 * its signature. Planted bugs in wrappers of our engine, fixed seeds.
 */
import { describe, expect, it } from 'vitest';
import type { TraceConfig } from './config.js';
import { runTrace } from './execute.js';
import { parseOp, type Op } from './ops.js';
import { minimizeTrace } from './minimize.js';
import { runCampaign } from './runner.js';
import { foldAndDrop, foldAmend, foldMoves, repeatMoves } from './shrink-fold.js';
import { TsTarget } from './targets/ts.js';
import type { OpOutcome, StampedOp } from './targets/types.js';
import { plainConfig } from '../../tests/support/trace.js';

/**
 * Our engine with a planted bug: once a trace has made two writes, one of
 * them while the image had 2-bit refcounts (by creation or by amend), every
 * read flips its first byte. With `needsAmend`, only a write after an amend
 * to 2 bits counts.
 */
class TwoBitTarget extends TsTarget {
  private bits = 16;
  private amended = false;
  private bad = false;
  private writes = 0;
  constructor(private readonly needsAmend = false) {
    super();
  }
  override async setup(config: TraceConfig, dir: string): Promise<void> {
    this.bits = config.refcountBits;
    return super.setup(config, dir);
  }
  override async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    const out = await super.run(ops);
    ops.forEach(({ op }, i) => {
      if (!out[i]?.ok) return;
      if (op.kind === 'amend' && op.key === 'refcount_bits') [this.bits, this.amended] = [op.value, true];
      if (op.kind !== 'write') return;
      this.writes++;
      if (this.bits === 2 && (this.amended || !this.needsAmend)) this.bad = true;
    });
    return out;
  }
  override async read(off: number, len: number): Promise<Uint8Array> {
    const b = await super.read(off, len);
    if (this.bad && this.writes >= 2 && b.length > 0) b[0] = b[0]! ^ 0xff;
    return b;
  }
}

const config = plainConfig();

const ops = (...xs: string[]): Op[] => xs.map(parseOp);

/** The pass on concrete ops with a planted target, as the campaign runs it. */
async function fold(needsAmend: boolean, xs: Op[], c = config) {
  const run = (cfg: TraceConfig, o: Op[]) => runTrace(new TwoBitTarget(needsAmend), cfg, { ops: o });
  const first = await run(c, xs);
  expect(first.failure?.oracle).toBe('read');
  return foldAndDrop(c, first.ops, first.failure!, {
    inBudget: () => true,
    run: async (cfg, o) => {
      const r = await run(cfg, o);
      return { failure: r.failure, outcome: r };
    },
  });
}

describe('folding an amend into the configuration', () => {
  it('foldAmend gives the configuration an image created with the amended option has, and only valid ones', () => {
    expect(foldAmend(config, { kind: 'amend', key: 'refcount_bits', value: 2 })).toEqual({ ...config, refcountBits: 2 });
    expect(foldAmend(config, { kind: 'amend', key: 'lazy_refcounts', value: true })).toEqual({ ...config, lazyRefcounts: true });
    expect(foldAmend(config, { kind: 'amend', key: 'compat', value: '0.10' })).toEqual({ ...config, compat: '0.10' });
    // compat=0.10 needs 16-bit refcounts: no creation gives a v2 image with 2-bit ones.
    expect(foldAmend({ ...config, refcountBits: 2 }, { kind: 'amend', key: 'compat', value: '0.10' })).toBeNull();
    const moves = foldMoves(config, ops('write 0 512', 'amend refcount_bits=2', 'amend compat=1.1'));
    expect(moves.map((m) => m.ops.length)).toEqual([2, 2]);
    expect(moves[0]!.config.refcountBits).toBe(2);
  });

  it('repeatMoves offers the ops that repeat an earlier one and the snapshot ops, last first', () => {
    const xs = ops('write 0 512', 'snapshot -c s0', 'write 512 512', 'write 0 512');
    expect(repeatMoves(config, xs).map((m) => m.step)).toEqual(["dropped op #4 'write 0 512' (a repeat)", "dropped op #2 'snapshot -c s0'"]);
  });

  it('an amend in the middle is folded, and the snapshot and the repeated write go: 5 ops become 2 on a 2-bit image', async () => {
    const r = await fold(false, ops('write 0 512', 'amend refcount_bits=2', 'snapshot -c s0', 'write 0 512', 'write 0 512'));
    expect(r.config).toEqual({ ...config, refcountBits: 2 });
    expect(r.ops.map((o) => o.kind)).toEqual(['write', 'write']);
    expect(r.steps[0]).toBe("folded op #2 'amend refcount_bits=2' into the configuration");
    expect(r.complete).toBe(true);
    expect(r.outcome?.failure?.oracle).toBe('read');
  });

  it('an amend the bug needs stays (the folded trace passes), while the repeats still go', async () => {
    const r = await fold(true, ops('write 0 512', 'amend refcount_bits=2', 'snapshot -c s0', 'write 0 512', 'write 0 512'));
    expect(r.config).toEqual(config);
    expect(r.ops.map((o) => o.kind)).toEqual(['write', 'amend', 'write']);
    expect(r.steps.some((s) => s.startsWith('folded'))).toBe(false);
  });

  it('a move that changes the failure (another oracle or message) is not kept', async () => {
    // Without the writes the planted bug never shows: dropping them would pass, never fail alike.
    const r = await fold(false, ops('write 0 512', 'write 512 512'), { ...config, refcountBits: 2 });
    expect(r.ops).toHaveLength(2);
    expect(r.steps).toEqual([]);
  });

  it('the pass stops when its budget is spent, keeping what it has', async () => {
    let left = 1;
    const first = await runTrace(new TwoBitTarget(), config, { ops: ops('write 0 512', 'amend refcount_bits=2', 'write 0 512', 'write 0 512') });
    const r = await foldAndDrop(config, first.ops, first.failure!, {
      inBudget: () => left-- > 0,
      run: async (cfg, o) => {
        const x = await runTrace(new TwoBitTarget(), cfg, { ops: o });
        return { failure: x.failure, outcome: x };
      },
    });
    expect(r.attempts).toBe(1);
    expect(r.complete).toBe(false);
    // The first move (the fold) was kept: the failing op is the third, so 3 ops ran and 2 are left.
    expect(r.ops.map((o) => o.kind)).toEqual(['write', 'write']);
    expect(r.config.refcountBits).toBe(2);
  });
});

describe('minimize folds too', () => {
  it('a saved trace with an amend in the middle is re-minimized onto a 2-bit image', async () => {
    const m = await minimizeTrace('ts', config, ops('write 0 512', 'amend refcount_bits=2', 'write 4096 512', 'flush'), 'read', {
      targetFactory: () => new TwoBitTarget(),
    });
    expect(m.failure?.oracle).toBe('read');
    expect(m.config.refcountBits).toBe(2);
    expect(m.ops.map((o) => o.kind)).toEqual(['write', 'write']);
  });
});

describe('a campaign saves the folded trace', () => {
  it('seed 12: a failure found through an amend to 2-bit refcounts is saved on a 2-bit image, one op shorter', async () => {
    // Chunk 20 of 21 is the first to fail, through an amend: fast-check alone leaves
    // 'amend refcount_bits=2; write 0 512; write 0 512' on a 16-bit image.
    // A clock that stands still: the shrink budget never runs out, whatever this machine's speed.
    const s = await runCampaign({ target: 'ts', seed: 12, maxOps: 10, runs: 63, runsPerChunk: 3, concurrency: 1, clock: () => 0, targetFactory: () => new TwoBitTarget() });
    expect(s.failures).toHaveLength(1);
    const f = s.failures[0];
    expect(f!.shrinkSteps).toEqual(["folded op #1 'amend refcount_bits=2' into the configuration"]);
    expect(f!.config.refcountBits).toBe(2);
    expect(f!.ops).toEqual(['write 0 512', 'write 0 512']);
    expect(f!.shrinkComplete).toBe(true);
    expect(f!.oracle).toBe('read');
  });
});
