/**
 * Fault ops (src/harness/ops/fault.ts): guest I/O with one I/O error injected
 * into it, on our engine (the n-th storage read, write or flush of the op,
 * through FaultyStorage) and on QEMU (a blkdebug event). After each fault the
 * op's range must hold old or new data sector by sector, everything else is
 * unchanged, later ops behave as the model says, and qemu-img check finds no
 * corruption (leaks allowed, as QEMU's iotest 026 allows them). On our engine
 * no write of the op may land in a data cluster it may not touch.
 *
 * Arbitraries: the usual configurations and op seeds, with about half the
 * guest I/O seeds turned into faults (faultBias). Run: a fixed seed, bounded
 * runs. Verdict: no run fails, and faults really ran and really failed ops.
 */
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { configArb, opSeedsArb } from '../src/harness/arbitraries.js';
import { runTrace, type RunOutcome } from '../src/harness/execute.js';
import { formatOp } from '../src/harness/ops.js';
import { makeTarget } from '../src/harness/targets/index.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-fault-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

interface Tally {
  runs: number;
  faults: number;
  failedFaults: number;
  failures: string[];
}

async function faultCampaign(target: string, seed: number, numRuns: number, maxOps: number): Promise<Tally> {
  const t: Tally = { runs: 0, faults: 0, failedFaults: 0, failures: [] };
  const record = (r: RunOutcome) => {
    t.runs++;
    r.ops.forEach((op, i) => {
      if (op.kind !== 'fault') return;
      t.faults++;
      if (r.refused.has(i + 1)) t.failedFaults++;
    });
    if (r.failure) {
      t.failures.push([`${r.failure.oracle}: ${r.failure.message}`, JSON.stringify(r.config), ...r.ops.map((o, i) => `  ${i + 1}: ${formatOp(o)}`)].join('\n'));
    }
  };
  const prop = fc.asyncProperty(configArb, opSeedsArb(maxOps, { faultBias: true }), async (config, seeds) => {
    const r = await runTrace(makeTarget(target), config, { seeds }, { tmpRoot });
    record(r);
    return r.failure === undefined;
  });
  // No shrinking here: the first failing trace is reported as it ran.
  await fc.check(prop, { seed, numRuns, endOnFailure: true });
  return t;
}

it('our engine survives an I/O error at any point of an op (fixed seed)', async () => {
  const t = await faultCampaign('ts', 2612, 60, 10);
  console.log(`fault suite ts: ${t.runs} runs, ${t.faults} fault ops, ${t.failedFaults} failed by their fault`);
  expect(t.failures).toEqual([]);
  expect(t.runs).toBe(60);
  expect(t.faults).toBeGreaterThan(80);
  expect(t.failedFaults).toBeGreaterThan(20);
});

it('QEMU survives an I/O error at a blkdebug event of an op (fixed seed)', async () => {
  const t = await faultCampaign('qemu', 1226, 40, 8);
  console.log(`fault suite qemu: ${t.runs} runs, ${t.faults} fault ops, ${t.failedFaults} failed by their fault`);
  expect(t.failures).toEqual([]);
  expect(t.runs).toBe(40);
  expect(t.faults).toBeGreaterThan(40);
  expect(t.failedFaults).toBeGreaterThan(10);
});
