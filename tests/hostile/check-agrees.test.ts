/**
 * Issue 5, done-means 2: on images corrupted by hand in every metadata
 * structure (refcounts too low/high, L1/L2 entries past the end or into
 * metadata, COPIED flags wrong, reftable entries broken, leaked clusters),
 * our `check --output json` gives qemu-img check's exit code and corruption
 * and leak counts, and `check -r all` repairs what qemu-img repairs: the
 * repaired image passes (or fails) qemu-img check the way qemu-img's own
 * repair does.
 */
import { readFileSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { HOSTILE_RECIPES } from '../../src/harness/hostile-images.js';
import { listMutations, type Mutation } from '../../src/harness/mutate/index.js';
import type { CheckReport } from './check-child.js';
import { knownGap } from './known-gaps.js';
import { runInChild, type ChildOutcome } from './runner.js';
import { ramScratchDir } from '../support/scratch.js';

const SEED = 5;

/** The hand corruptions of metadata structures; header-field and truncation cases are the hostile suite's. */
function isMetadataCorruption(m: Mutation): boolean {
  if (['refcount', 'leak', 'l1', 'l2', 'reftable'].includes(m.kind)) return true;
  if (m.kind === 'overlap') return m.name.startsWith('overlap:l1-entry=') || m.name.startsWith('overlap:data=');
  if (m.kind === 'snapshot') return m.name.startsWith('snapshot:l1-entry');
  return false;
}

const dir = ramScratchDir('qcow2-check-agrees-');
const images: Record<string, string> = {};
for (const r of HOSTILE_RECIPES) images[r.name] = await r.build(dir);
const names = new Map<string, string[]>();
for (const [img, path] of Object.entries(images)) {
  const ms = listMutations(new Uint8Array(readFileSync(path)), { seed: SEED, flips: 0 }).filter(isMetadataCorruption);
  names.set(img, ms.map((m) => m.name));
}

let outcomes = new Map<string, ChildOutcome<CheckReport>>();
beforeAll(async () => {
  const cases = [...names].flatMap(([image, ms]) => ms.map((mutation) => ({ id: `${image}/${mutation}`, image, mutation })));
  const halves = [cases.filter((_, i) => i % 2 === 0), cases.filter((_, i) => i % 2 === 1)];
  const results = await Promise.all(
    halves.map((h) => runInChild<CheckReport>('tests/hostile/check-child.ts', { images, cases: h, seed: SEED }, dir)),
  );
  outcomes = new Map(results.flatMap((m) => [...m]));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const counts = (j: Record<string, number | undefined> | undefined): Record<string, number> => ({
  'check-errors': j?.['check-errors'] ?? 0,
  corruptions: j?.corruptions ?? 0,
  leaks: j?.leaks ?? 0,
});
const fixed = (j: Record<string, number | undefined> | undefined): Record<string, number> => ({
  'corruptions-fixed': j?.['corruptions-fixed'] ?? 0,
  'leaks-fixed': j?.['leaks-fixed'] ?? 0,
});

for (const [image, ms] of names) {
  describe(`check agrees with qemu-img: ${image}`, () => {
    for (const mutation of ms) (knownGap('check-agrees', image, mutation) ? test.fails : test)(mutation, () => {
      const o = outcomes.get(`${image}/${mutation}`);
      expect(o?.kind, o && o.kind !== 'done' ? JSON.stringify(o) : 'no outcome').toBe('done');
      const r = (o as Extract<ChildOutcome<CheckReport>, { kind: 'done' }>).report as CheckReport & { harnessError?: string };
      expect(r.harnessError, r.harnessError).toBeUndefined();
      const ctx = `\nqemu: rc ${r.qemu.rc} ${JSON.stringify(r.qemu.json)} ${r.qemu.stderr}\nours: rc ${r.ours.rc} ${JSON.stringify(r.ours.json)} ${r.ours.stderr}`;

      // Verdict and counts of a plain check.
      expect(r.ours.rc, `exit code${ctx}`).toBe(r.qemu.rc);
      if (r.qemu.json) expect(counts(r.ours.json), `counts${ctx}`).toEqual(counts(r.qemu.json));

      // Repair: same verdict and fixed counts, and the repaired image as clean as qemu-img's.
      const rctx = `\nqemu -r all: rc ${r.qemuRepair.rc} ${JSON.stringify(r.qemuRepair.json)} ${r.qemuRepair.stderr}\nours -r all: rc ${r.oursRepair.rc} ${JSON.stringify(r.oursRepair.json)} ${r.oursRepair.stderr}`;
      expect(r.oursRepair.rc, `repair exit code${rctx}`).toBe(r.qemuRepair.rc);
      if (r.qemuRepair.json) expect(fixed(r.oursRepair.json), `repair fixed counts${rctx}`).toEqual(fixed(r.qemuRepair.json));
      const actx = `\nqemu-img check after qemu's repair: rc ${r.qemuAfterQemuRepair.rc} ${JSON.stringify(r.qemuAfterQemuRepair.json)}\nqemu-img check after our repair: rc ${r.qemuAfterOurRepair.rc} ${JSON.stringify(r.qemuAfterOurRepair.json)} ${r.qemuAfterOurRepair.stderr}`;
      expect(r.qemuAfterOurRepair.rc, `after repair${actx}`).toBe(r.qemuAfterQemuRepair.rc);
      expect(counts(r.qemuAfterOurRepair.json), `after repair${actx}`).toEqual(counts(r.qemuAfterQemuRepair.json));
    });
  });
}
