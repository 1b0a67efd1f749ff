/**
 * Crash consistency through the harness (DESIGN.md "Crash consistency"): our
 * engine on recording storage, with `crash` ops among the generated ones.
 * Each crash op opens two crash images and holds them to the crash oracle;
 * the run then goes on, so the end-of-run oracles still apply.
 */
import { expect, it } from 'vitest';
import { assertTraces } from '../src/harness/property.js';

it('crash images of our engine open, check clean and keep flushed data (fixed seed)', async () => {
  const r = await assertTraces('ts', { seed: 1127, numRuns: 50, maxOps: 16, crashOps: true });
  expect(r.runs).toBeGreaterThanOrEqual(50);
  // The property is about crashes: make sure they actually happened.
  expect(r.crashOps).toBeGreaterThan(35);
}, 120_000);
