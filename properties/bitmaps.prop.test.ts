/**
 * Persistent dirty bitmaps under fuzzing: traces of guest I/O, resizes,
 * snapshots and reopens (from the usual op seeds) with bitmap ops (add with
 * several granularities, remove, clear, enable, disable, merge) mixed in, on
 * our engine and on QEMU. The model keeps every bitmap's dirty granules
 * exactly; at the end qemu-img info must list the model's bitmaps, QEMU
 * (qemu-nbd -B, qemu-img map over NBD) must read exactly the model's dirty
 * granules, and so must our engine's own reading; qemu-img check stays clean.
 *
 * Left out: amend (a downgrade to compat=0.10 drops bitmaps and leaks their
 * clusters in QEMU 7.2, which the model does not describe), crash and fault ops.
 * The generator lives in src/harness/bitmap-trace.ts (`fuzz --include bitmap`
 * draws the same traces).
 * Fixed seeds, bounded runs. Verdict: no run fails, and bitmaps really
 * were added and dirtied.
 */
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { bitmapItemsArb, cleanConfigArb, concreteBitmapTrace, firstAddArb } from '../src/harness/bitmap-trace.js';
import type { TraceConfig } from '../src/harness/config.js';
import { runTrace, type RunOutcome } from '../src/harness/execute.js';
import { formatOp, type Op } from '../src/harness/ops.js';
import { makeTarget } from '../src/harness/targets/index.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-bitmaps-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

interface Tally {
  runs: number;
  added: number;
  dirtied: number;
  failures: string[];
}

async function campaign(target: string, seed: number, numRuns: number, maxOps: number): Promise<Tally> {
  const t: Tally = { runs: 0, added: 0, dirtied: 0, failures: [] };
  const record = (r: RunOutcome) => {
    t.runs++;
    t.added += r.ops.filter((o, i) => o.kind === 'bitmap' && o.action === 'add' && !r.refused.has(i + 1)).length;
    t.dirtied += r.model?.bitmaps.list.filter((b) => b.dirty.size > 0).length ?? 0;
    if (r.failure) {
      t.failures.push([`${r.failure.oracle}: ${r.failure.message}`, JSON.stringify(r.config), ...r.ops.map((o, i) => `  ${i + 1}: ${formatOp(o)}`)].join('\n'));
    }
  };
  // The generator of src/harness/bitmap-trace.ts, as `fuzz --include bitmap` uses it.
  const prop = fc.asyncProperty(cleanConfigArb, firstAddArb, bitmapItemsArb(maxOps), async (config, first, items) => {
    const t = makeTarget(target);
    const r = await runTrace(t, config, { ops: concreteBitmapTrace(config, first, items, undefined, t.knownBugs) }, { tmpRoot });
    record(r);
    return r.failure === undefined;
  });
  await fc.check(prop, { seed, numRuns, endOnFailure: true });
  return t;
}

it('our engine keeps bitmaps exact (fixed seed)', async () => {
  const t = await campaign('ts', 1010, 25, 12);
  console.log(`bitmaps suite ts: ${t.runs} runs, ${t.added} bitmaps added, ${t.dirtied} dirty at the end`);
  expect(t.failures).toEqual([]);
  expect(t.added).toBeGreaterThan(10);
  expect(t.dirtied).toBeGreaterThan(3);
});

it('QEMU keeps bitmaps as the model says (fixed seed)', async () => {
  const t = await campaign('qemu', 1011, 8, 10);
  console.log(`bitmaps suite qemu: ${t.runs} runs, ${t.added} bitmaps added, ${t.dirtied} dirty at the end`);
  expect(t.failures).toEqual([]);
  expect(t.added).toBeGreaterThan(3);
});

it('a refused compressed write still dirties its granules, on both (QEMU marks every request that reached the driver)', async () => {
  const config: TraceConfig = { size: 1 << 20, clusterSize: 65536, refcountBits: 16, compat: '1.1', lazyRefcounts: false, extendedL2: false, compressionType: 'zlib' };
  const ops: Op[] = [
    { kind: 'bitmap', action: 'add', name: 'fine', granularity: 512 },
    { kind: 'write-compressed', off: 512, len: 512 },
    { kind: 'write-compressed', off: 65536, len: 65536 },
  ];
  for (const target of ['ts', 'qemu']) {
    const r = await runTrace(makeTarget(target), config, { ops }, { tmpRoot });
    expect(r.failure, `${target}: ${r.failure?.message}`).toBeUndefined();
    expect([...r.refused], target).toEqual([2]);
    expect(r.model!.bitmaps.list[0]!.dirty.size, target).toBe(1 + 128);
  }
});
