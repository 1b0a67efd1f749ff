/**
 * Our engine (in process, memory storage) against the reference model, with
 * qemu-img check/compare/info on every resulting image and our own check
 * compared with qemu-img's.
 *
 * The property: for every image configuration and op-seed list fast-check
 * draws (seed 4242, 80 runs), the trace passes every oracle. The seeds
 * become concrete ops against the model as it is when each op runs (see
 * src/harness/arbitraries.ts), so an op after a resize or a snapshot apply
 * still lands on the image's boundaries.
 */
import { test } from '@fast-check/vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configArb, opSeedsArb } from '../src/harness/arbitraries.js';
import { runTrace } from '../src/harness/execute.js';
import { makeTarget } from '../src/harness/targets/index.js';
import { describeRun, TraceStats } from '../tests/support/trace.js';

const SEED = 4242;
const RUNS = 80;
const MAX_OPS = 12;

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-prop-ts-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
const stats = new TraceStats();

describe('our engine agrees with the reference model and qemu-img', () => {
  test.prop([configArb, opSeedsArb(MAX_OPS)], { seed: SEED, numRuns: RUNS })(
    'every trace passes every oracle',
    async (config, seeds) => {
      const r = await runTrace(makeTarget('ts'), config, { seeds }, { tmpRoot });
      stats.add(r);
      expect(r.failure, describeRun(r)).toBeUndefined();
    },
    180_000,
  );

  // Guards the property above against a generator that stops reaching what it should.
  // Seed 4242 gives: 477 ops, 49 refused, 21 whole-disk, 124 qemu-img checks (crash images
  // included); the rarest accepted kinds are snapshot delete (2) and snapshot apply (4).
  it('those runs executed every op kind, met refusals, covered the whole disk and ran qemu-img check each time', () => {
    expect(stats.runs, 'run together with the property above').toBe(RUNS);
    expect(stats.under(makeTarget('ts').capabilities, 2), stats.summary()).toEqual({});
    expect(stats.refused, stats.summary()).toBeGreaterThanOrEqual(20);
    expect(stats.wholeDisk, stats.summary()).toBeGreaterThanOrEqual(10);
    expect(stats.qemuImgChecks, stats.summary()).toBeGreaterThanOrEqual(RUNS);
  });
});
