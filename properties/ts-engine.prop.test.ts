/**
 * Our engine (in process, memory storage) against the reference model, with
 * qemu-img check/compare/info on every resulting image and our own check
 * compared with qemu-img's.
 */
import { expect, it } from 'vitest';
import { assertTraces } from '../src/harness/property.js';

it('our engine agrees with the reference model and qemu-img (fixed seed)', async () => {
  const r = await assertTraces('ts', { seed: 4242, numRuns: 80, maxOps: 12 });
  expect(r.runs).toBeGreaterThanOrEqual(80);
}, 180_000);
