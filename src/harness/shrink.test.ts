/**
 * Shrinking has its own budget (issue 12 item 4): a failure found just before
 * the campaign deadline is shrunk as far as one found with no deadline at all.
 * The deadline is made to pass by a campaign clock the planted target moves,
 * so no verdict depends on how fast this machine runs.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { StampedOp, OpOutcome } from './targets/types.js';
import { TsTarget } from './targets/ts.js';
import { runCampaign, type CampaignOptions, type CampaignStats } from './runner.js';

/**
 * Our engine with a planted bug: once a trace has run two plain writes,
 * every read returns its first byte flipped. Any failing trace shrinks to
 * two writes, and the writes themselves shrink further.
 */
class PlantedTarget extends TsTarget {
  private writes = 0;
  constructor(private readonly onMisread: () => void) {
    super();
  }
  override async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    const out = await super.run(ops);
    this.writes += ops.filter((o, i) => o.op.kind === 'write' && out[i]?.ok).length;
    return out;
  }
  override async read(off: number, len: number): Promise<Uint8Array> {
    const b = await super.read(off, len);
    if (this.writes >= 2 && b.length > 0) {
      this.onMisread();
      b[0] = b[0]! ^ 0xff;
    }
    return b;
  }
}

/** A campaign clock that stands still until `jump` moves it by an hour. */
function steppedClock() {
  let now = 1_000_000;
  return { clock: () => now, jump: () => void (now += 3_600_000) };
}

const base = { target: 'ts', seed: 12, maxOps: 10, runsPerChunk: 10, concurrency: 1 } satisfies Partial<CampaignOptions>;

describe('shrinking has a budget of its own', () => {
  // The reference: the campaign with no deadline at all.
  let free: CampaignStats;
  beforeAll(async () => {
    free = await runCampaign({ ...base, runs: 10, targetFactory: () => new PlantedTarget(() => {}) });
  });

  it('a failure found as the deadline passes is shrunk to the same trace as with no deadline', async () => {
    // The first failing chunk's failure (later chunks may find more).
    expect(free.failures.length).toBeGreaterThanOrEqual(1);
    const full = free.failures[0]!;
    expect(full.shrinkComplete).toBe(true);
    expect(full.ops.filter((x) => x.startsWith('write ')).length, full.ops.join('; ')).toBe(2);

    // A 60 s campaign whose clock jumps past the deadline the moment the planted bug first shows.
    const t = steppedClock();
    let jumped = false;
    const late = await runCampaign({
      ...base,
      timeSec: 60,
      clock: t.clock,
      targetFactory: () =>
        new PlantedTarget(() => {
          if (!jumped) t.jump();
          jumped = true;
        }),
    });
    expect(late.failures.length).toBe(1);
    const f = late.failures[0]!;
    expect(f.foundAfterSeconds).toBeGreaterThanOrEqual(60);
    expect(f.shrinkComplete).toBe(true);
    expect(f.shrinkRuns).toBeGreaterThan(1);
    expect(f.ops).toEqual(full.ops);
    expect(f.config).toEqual(full.config);
    // Generation stopped at the deadline: the chunk's later runs and later chunks never ran.
    expect(late.runs).toBeLessThanOrEqual(free.runs);
  });

  it('a shrink that outlives its budget is reported as such, with the best trace so far', async () => {
    const t = steppedClock();
    // The clock jumps past the 10 s shrink budget on the fourth misread: during the shrink.
    let misreads = 0;
    const cut = await runCampaign({
      ...base,
      runs: 10,
      shrinkTimeSec: 10,
      clock: t.clock,
      targetFactory: () =>
        new PlantedTarget(() => {
          if (++misreads === 4) t.jump();
        }),
    });
    expect(cut.failures.length).toBeGreaterThanOrEqual(1);
    const f = cut.failures[0]!;
    expect(f.shrinkComplete).toBe(false);
    expect(f.shrinkSeconds).toBeGreaterThanOrEqual(10);
    expect(f.ops.length).toBeGreaterThan(free.failures[0]!.ops.length);
  });
});
