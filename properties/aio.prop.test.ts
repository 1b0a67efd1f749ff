/**
 * aio groups (src/harness/ops/aio.ts): two to four writes and write-zeroes in
 * flight at once, then a flush. QEMU runs them as qemu-io aio_write requests
 * submitted together (its qcow2 driver really overlaps them: allocation, COW
 * and L2 updates of neighbouring clusters); our engine runs them in a serial
 * order drawn from the group. After each group every sector covered by one
 * request holds its data, one covered by several holds one of theirs, the
 * rest is unchanged, later ops behave as the model says, and qemu-img check
 * finds the image clean.
 *
 * Arbitraries: the usual configurations and op seeds, with about half the
 * guest write seeds grown into groups (the seed's pick set by aioPick). Run:
 * a fixed seed, bounded runs. Verdict: no run fails, and groups really ran,
 * some with overlapping requests.
 */
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { configArb, opSeedArb } from '../src/harness/arbitraries.js';
import { runTrace, type RunOutcome } from '../src/harness/execute.js';
import { aioPick, formatOp } from '../src/harness/ops.js';
import { makeTarget } from '../src/harness/targets/index.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-aio-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

interface Tally {
  runs: number;
  groups: number;
  overlapping: number;
  failures: string[];
}

const seedsArb = (maxOps: number) =>
  fc.array(
    fc.tuple(opSeedArb, fc.boolean()).map(([s, g]) => (g ? { ...s, pick: aioPick(s.pick) } : s)),
    { minLength: 1, maxLength: maxOps },
  );

function overlaps(reqs: { off: number; len: number }[]): boolean {
  return reqs.some((a, i) => reqs.some((b, j) => j > i && a.off < b.off + b.len && b.off < a.off + a.len));
}

async function aioCampaign(target: string, seed: number, numRuns: number, maxOps: number): Promise<Tally> {
  const t: Tally = { runs: 0, groups: 0, overlapping: 0, failures: [] };
  const record = (r: RunOutcome) => {
    t.runs++;
    for (const op of r.ops) {
      if (op.kind !== 'aio') continue;
      t.groups++;
      if (overlaps(op.reqs)) t.overlapping++;
    }
    if (r.failure) {
      t.failures.push([`${r.failure.oracle}: ${r.failure.message}`, JSON.stringify(r.config), ...r.ops.map((o, i) => `  ${i + 1}: ${formatOp(o)}`)].join('\n'));
    }
  };
  const prop = fc.asyncProperty(configArb, seedsArb(maxOps), async (config, seeds) => {
    const r = await runTrace(makeTarget(target), config, { seeds }, { tmpRoot });
    record(r);
    return r.failure === undefined;
  });
  // No shrinking here: the first failing trace is reported as it ran.
  await fc.check(prop, { seed, numRuns, endOnFailure: true });
  return t;
}

it('our engine runs aio groups as some serial order (fixed seed)', async () => {
  const t = await aioCampaign('ts', 3101, 40, 10);
  console.log(`aio suite ts: ${t.runs} runs, ${t.groups} groups, ${t.overlapping} with overlapping requests`);
  expect(t.failures).toEqual([]);
  expect(t.runs).toBe(40);
  expect(t.groups).toBeGreaterThan(40);
  expect(t.overlapping).toBeGreaterThan(30);
});

it('QEMU keeps data and metadata right with requests in flight (fixed seed)', async () => {
  const t = await aioCampaign('qemu', 1013, 30, 8);
  console.log(`aio suite qemu: ${t.runs} runs, ${t.groups} groups, ${t.overlapping} with overlapping requests`);
  expect(t.failures).toEqual([]);
  expect(t.runs).toBe(30);
  expect(t.groups).toBeGreaterThan(15);
  expect(t.overlapping).toBeGreaterThan(10);
});

const example = path.join(import.meta.dirname, '..', 'src', 'harness', 'targets', 'cmd-example-qemu.mjs');

it('a cmd program that lists the aio capability gets groups, and passes (fixed seed)', async () => {
  const t = await aioCampaign(`cmd:node ${example} --aio`, 77, 10, 6);
  console.log(`aio suite cmd: ${t.runs} runs, ${t.groups} groups, ${t.overlapping} with overlapping requests`);
  expect(t.failures).toEqual([]);
  expect(t.runs).toBe(10);
  expect(t.groups).toBeGreaterThan(3);
});

it('a cmd program that does not list it never gets one', async () => {
  const t = await aioCampaign(`cmd:node ${example}`, 77, 4, 6);
  expect(t.failures).toEqual([]);
  expect(t.groups).toBe(0);
});
