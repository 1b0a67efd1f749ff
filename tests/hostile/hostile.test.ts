/**
 * Hostile images (issue 3, done-means 3): every mutation of every seed image
 * must be answered cleanly by our engine — open, info, reading the whole
 * disk, check — either success or a Qcow2Error subclass, within a time bound
 * and bounded memory; and opening it read-write and writing must either be
 * refused or leave an image qemu-img check finds no worse than before.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { readFileSync } from 'node:fs';
import { uncleanSteps, type StepResult } from '../../src/harness/hostile.js';
import { HOSTILE_RECIPES } from '../../src/harness/hostile-images.js';
import { listMutations } from '../../src/harness/mutate/index.js';
import type { HostileReport } from './hostile-child.js';
import { DEFAULT_LIMITS, runInChild, type ChildOutcome } from './runner.js';
import { knownGap } from './known-gaps.js';
import { ramScratchDir } from '../support/scratch.js';

const SEED = 20_240_601;
const FLIPS = 8;
/** No single allocation the size of a hostile field: live array buffers stay far below this. */
const ARRAY_BUFFER_LIMIT_MB = 256;

const dir = ramScratchDir('qcow2-hostile-');
const images: Record<string, string> = {};
for (const r of HOSTILE_RECIPES) images[r.name] = await r.build(dir);
const names = new Map<string, string[]>();
for (const [img, path] of Object.entries(images)) {
  names.set(img, listMutations(new Uint8Array(readFileSync(path)), { seed: SEED, flips: FLIPS }).map((m) => m.name));
}

let outcomes = new Map<string, ChildOutcome<HostileReport>>();
beforeAll(async () => {
  const cases = [...names].flatMap(([image, ms]) => ms.map((mutation) => ({ id: `${image}/${mutation}`, image, mutation })));
  // Two children, one per core; cases interleaved so both get a mix of slow and fast ones.
  const halves = [cases.filter((_, i) => i % 2 === 0), cases.filter((_, i) => i % 2 === 1)];
  const results = await Promise.all(
    halves.map((h) => runInChild<HostileReport>('tests/hostile/hostile-child.ts', { images, cases: h, seed: SEED, flips: FLIPS, write: true, tmp: dir }, dir)),
  );
  outcomes = new Map(results.flatMap((m) => [...m]));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function explain(steps: StepResult[]): string {
  return steps
    .map((s) => `${s.step}: ${s.error?.name}: ${s.error?.message}${s.error?.stack ? `\n${s.error.stack}` : ''}`)
    .join('\n');
}

/** The outcome of a case, failing the test with the reason when it did not finish. */
function finished(id: string): Extract<ChildOutcome<HostileReport>, { kind: 'done' }> {
  const o = outcomes.get(id);
  if (!o) throw new Error(`no outcome for ${id}`);
  if (o.kind === 'hang') throw new Error(`${id}: no answer within ${o.ms} ms (killed)`);
  if (o.kind === 'crash') throw new Error(`${id}: the child process died: ${o.detail}`);
  const r = o.report as HostileReport & { harnessError?: string };
  if (r.harnessError) throw new Error(`${id}: ${r.harnessError}`);
  return o;
}

for (const [image, ms] of names) {
  describe(`hostile ${image}`, () => {
    for (const mutation of ms) (knownGap('hostile', image, mutation) ? test.fails : test)(mutation, () => {
      const id = `${image}/${mutation}`;
      const o = finished(id);
      const { read, write, qemuBefore, qemuAfter } = o.report;

      // Read side: success or a Qcow2Error, step by step.
      const badRead = uncleanSteps(read.steps);
      expect(badRead, `read side threw a non-Qcow2Error:\n${explain(badRead)}`).toEqual([]);

      // Bounded memory: the case did not push the child past the RSS limit, nor hold a huge buffer.
      if (o.rssBeforeMB <= DEFAULT_LIMITS.rssLimitMB) {
        expect(o.maxRssMB, `peak RSS ${o.maxRssMB.toFixed(0)} MB`).toBeLessThanOrEqual(DEFAULT_LIMITS.rssLimitMB);
      }
      expect(o.arrayBuffersMB, 'array buffers alive after the case').toBeLessThan(ARRAY_BUFFER_LIMIT_MB);

      // Write side: a clean refusal, or writes that leave the image no worse than QEMU's own writes would.
      expect(write).toBeDefined();
      const badWrite = uncleanSteps(write!.steps);
      expect(badWrite, `write side threw a non-Qcow2Error:\n${explain(badWrite)}`).toEqual([]);
      if (write!.wrote) {
        const q = o.report.qemuWrites;
        const qemuSays = `QEMU with the same writes: ${q ? (q.wrote ? `wrote, read back ${q.readbackOk ? 'ok' : 'WRONG'}, check after: rc ${o.report.qemuAfterQemuWrites?.rc} ${JSON.stringify(o.report.qemuAfterQemuWrites?.json)}` : `refused: ${q.output.trim().split('\n').slice(-2).join(' | ')}`) : 'not run'}`;
        expect(qemuBefore, 'qemu-img check ran before').toBeDefined();
        expect(qemuAfter, 'qemu-img check ran after').toBeDefined();
        // qemu-img cannot open it (rc 1): we should not have written to it either.
        expect(qemuBefore!.rc, `our engine wrote to an image qemu-img cannot open: ${qemuBefore!.stderr}`).not.toBe(1);
        expect(qemuAfter!.rc, `after our writes qemu-img check cannot open the image: ${qemuAfter!.stderr}`).not.toBe(1);
        // What we wrote reads back, unless QEMU cannot do that either on this image.
        const qemuReadsBack = q?.wrote === true && q.readbackOk;
        if (write!.readback !== 'ok' && (qemuReadsBack || !q?.wrote)) {
          expect.fail(`our writes went through but ${write!.readback ?? 'the image could not be reopened'}\n${qemuSays}`);
        }
        // No new corruption beyond what QEMU's own writes cause.
        const c0 = qemuBefore!.json?.corruptions ?? 0;
        const c1 = qemuAfter!.json?.corruptions ?? 0;
        const cq = q?.wrote ? (o.report.qemuAfterQemuWrites?.json?.corruptions ?? 0) : c0;
        expect(c1, `our writes added corruptions (${c0} → ${c1}): ${qemuAfter!.stderr.slice(0, 300)}\n${qemuSays}`).toBeLessThanOrEqual(Math.max(c0, cq));
        if (c0 === 0 && write!.othersChangedAt !== undefined) {
          expect(write!.othersChangedAt, `guest data outside the written ranges changed\n${qemuSays}`).toBe(-1);
        }
      }
    });
  });
}

describe('unknown incompatible bits are refused', () => {
  const v3 = [...names].filter(([, ms]) => ms.includes('header:incompatibleFeatures=unknown-bit5'));
  test.each(v3.flatMap(([img]) => ['unknown-bit5', 'unknown-bit63'].map((b) => [img, b] as const)))('%s %s', (img, bit) => {
    const o = finished(`${img}/header:incompatibleFeatures=${bit}`);
    const open = o.report.read.steps.find((s) => s.step === 'open')!;
    expect(open.ok, 'read-only open must refuse').toBe(false);
    expect(open.error?.qcow2).toBe(true);
    const rw = o.report.write!.steps.find((s) => s.step === 'open-rw')!;
    expect(rw.ok, 'read-write open must refuse').toBe(false);
    expect(rw.error?.qcow2).toBe(true);
  });
  test('there are v3 seed images to try', () => expect(v3.length).toBeGreaterThanOrEqual(3));
});
