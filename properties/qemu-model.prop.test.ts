/**
 * QEMU's own driver against the reference model: every generated trace must
 * satisfy every oracle. A failure here is a model mistake or a QEMU bug.
 */
import { expect, it } from 'vitest';
import { assertTraces } from '../src/harness/property.js';

it('qemu-io/qemu-img agree with the reference model (fixed seed)', async () => {
  const r = await assertTraces('qemu', { seed: 20261127, numRuns: 30, maxOps: 10 });
  expect(r.runs).toBeGreaterThanOrEqual(30);
  expect(r.checks).toBeGreaterThanOrEqual(30);
}, 180_000);
