/**
 * Images with an external data file (data_file, data_file_raw) through our
 * engine and through QEMU, against the reference model: every trace passes
 * every oracle (per-op verdicts — compressed writes, snapshots and
 * downgrades refused there —, read-backs, qemu-img check/compare/info).
 * Seed 20261202, 20 runs of at most 10 ops per target.
 */
import { test } from '@fast-check/vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dataFileConfigArb, opSeedsArb } from '../src/harness/arbitraries.js';
import { runTrace } from '../src/harness/execute.js';
import { makeTarget } from '../src/harness/targets/index.js';
import { describeRun, TraceStats } from '../tests/support/trace.js';

const SEED = 20261202;
const RUNS = 20;
const MAX_OPS = 10;

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-prop-datafile-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

describe.each(['ts', 'qemu'] as const)('%s with an external data file agrees with the reference model', (target) => {
  const stats = new TraceStats();
  const raw = new Set<boolean>();
  test.prop([dataFileConfigArb, opSeedsArb(MAX_OPS)], { seed: SEED, numRuns: RUNS })(
    'every trace passes every oracle',
    async (config, seeds) => {
      const r = await runTrace(makeTarget(target), config, { seeds }, { tmpRoot });
      stats.add(r);
      raw.add(config.dataFile!.raw);
      expect(r.failure, describeRun(r)).toBeUndefined();
    },
    180_000,
  );

  // Guards the property above against a generator that stops reaching data files of both kinds,
  // or the refusals (compressed writes, snapshots) that only data files have.
  it('those runs met both kinds of data file and their refusals', () => {
    expect(stats.runs, 'run together with the property above').toBe(RUNS);
    expect([...raw].sort()).toEqual([false, true]);
    expect(stats.generated('write-compressed'), stats.summary()).toBeGreaterThan(0);
    expect(stats.executed('write-compressed'), stats.summary()).toBe(0);
    expect(stats.generated('snapshot create'), stats.summary()).toBeGreaterThan(0);
    expect(stats.executed('snapshot create'), stats.summary()).toBe(0);
    expect(stats.refused, stats.summary()).toBeGreaterThanOrEqual(3);
  });
});
