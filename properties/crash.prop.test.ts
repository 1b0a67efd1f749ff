/**
 * Crash consistency through the harness (DESIGN.md "Crash consistency"): our
 * engine on recording storage, with `crash` ops among the generated ones.
 * Each crash op holds the crash states of the writes since the last flush
 * (every subset or every prefix of the write log, plus torn writes, within
 * CRASH_STATE_BUDGET; a sample when the log is long) to the crash oracle,
 * with stale bytes wherever a lost write would have extended the file; the
 * run then goes on, so the end-of-run oracles still apply.
 */
import { expect, it } from 'vitest';
import { CRASH_QEMU_CHECKS_PER_OP, crashTotals } from '../src/harness/crash.js';
import { assertTraces } from '../src/harness/property.js';

it('crash images of our engine open, check clean and keep flushed data (fixed seed)', async () => {
  const before = structuredClone(crashTotals);
  const r = await assertTraces('ts', { seed: 1127, numRuns: 50, maxOps: 16, crashOps: true });
  expect(r.runs).toBeGreaterThanOrEqual(50);
  // The property is about crashes: make sure they actually happened.
  expect(r.crashOps).toBeGreaterThan(35);
  const d = {
    crashOps: crashTotals.crashOps - before.crashOps,
    states: crashTotals.states - before.states,
    torn: crashTotals.tornStates - before.tornStates,
    everySubset: crashTotals.byMode['every-subset'] - before.byMode['every-subset'],
    everyPrefix: crashTotals.byMode['every-prefix'] - before.byMode['every-prefix'],
    sampled: crashTotals.byMode.sampled - before.byMode.sampled,
    qemuChecks: crashTotals.qemuChecks - before.qemuChecks,
  };
  console.log(`crash oracle: ${JSON.stringify(d)}`);
  // Every crash op was examined, and short write logs were enumerated, not sampled.
  expect(d.crashOps).toBe(r.crashOps);
  expect(d.everySubset).toBeGreaterThan(0);
  expect(d.states).toBeGreaterThan(2 * d.crashOps);
  // qemu-img check (a process each) stays within its per-op budget.
  expect(d.qemuChecks).toBeLessThanOrEqual(CRASH_QEMU_CHECKS_PER_OP * d.crashOps);
});
