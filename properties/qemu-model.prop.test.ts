/**
 * QEMU's own driver against the reference model: every generated trace must
 * satisfy every oracle. A failure here is a model mistake or a QEMU bug.
 *
 * The property: for every image configuration and op-seed list fast-check
 * draws (seed 20261127, 30 runs), qemu-io/qemu-img running the trace pass
 * every oracle (per-op verdicts, read-backs, qemu-img check/compare/info).
 */
import { test } from '@fast-check/vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { classicConfigArb as configArb, opSeedsArb } from '../src/harness/arbitraries.js';
import { runTrace } from '../src/harness/execute.js';
import { makeTarget } from '../src/harness/targets/index.js';
import { describeRun, TraceStats } from '../tests/support/trace.js';

const SEED = 20261127;
const RUNS = 30;
const MAX_OPS = 10;

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-prop-qemu-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
const stats = new TraceStats();

describe('qemu-io/qemu-img agree with the reference model', () => {
  test.prop([configArb, opSeedsArb(MAX_OPS)], { seed: SEED, numRuns: RUNS })(
    'every trace passes every oracle',
    async (config, seeds) => {
      const r = await runTrace(makeTarget('qemu'), config, { seeds }, { tmpRoot });
      stats.add(r);
      expect(r.failure, describeRun(r)).toBeUndefined();
    },
    180_000,
  );

  // Guards the property above against a generator that stops reaching what it should.
  // Seed 20261127 gives 143 ops, 18 refused, 30 qemu-img checks; it draws snapshot delete
  // only where no snapshot exists (a generator gap: at 30 runs of <= 10 ops, create-then-delete
  // is rare), so that kind is held to being generated, every other to being accepted.
  it('those runs executed every op kind, met refusals and ran qemu-img check each time', () => {
    expect(stats.runs, 'run together with the property above').toBe(RUNS);
    const caps = makeTarget('qemu').capabilities;
    expect(stats.under(caps, 2, { generated: true }), stats.summary()).toEqual({});
    expect(stats.under(caps, 3, { except: ['snapshot delete'] }), stats.summary()).toEqual({});
    expect(stats.refused, stats.summary()).toBeGreaterThanOrEqual(10);
    expect(stats.wholeDisk, stats.summary()).toBeGreaterThanOrEqual(4);
    expect(stats.qemuImgChecks, stats.summary()).toBeGreaterThanOrEqual(RUNS);
  });
});
