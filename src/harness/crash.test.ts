/**
 * The crash oracle: its sector rule on hand-made guest views, the crash
 * states a recording yields, and a planted missing data barrier in our
 * engine that it must catch.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DiskModel } from '../model/disk.js';
import { RecordingStorage, staleSectorOrigin } from '../qcow2/storage/recording.js';
import { applyOp } from './apply-model.js';
import { CRASH_STATE_BUDGET, CrashTracker } from './crash.js';
import { makeData } from './data.js';
import type { Op } from './ops.js';
import { prng } from './prng.js';
import { runPlantedBarrier } from '../../tests/support/planted-barrier.js';

const SIZE = 8 * 4096;

function setup() {
  const model = new DiskModel({
    size: SIZE,
    clusterSize: 4096,
    refcountBits: 16,
    compat: '1.1',
    lazyRefcounts: false,
    extendedL2: false,
    compressionType: 'zlib',
  });
  const tracker = new CrashTracker(model);
  let n = 0;
  const guest = new Uint8Array(SIZE);
  const run = (op: Op) => {
    n++;
    applyOp(model, op, n);
    tracker.afterOp(op, true);
    if (op.kind === 'write') guest.set(makeData(n, op.off, op.len), op.off);
  };
  return { model, tracker, run, guest };
}

describe('crash oracle', () => {
  it('accepts the state at the flush, the live state, and any mix of touched sectors', () => {
    const { tracker, run, guest } = setup();
    run({ kind: 'write', off: 0, len: 1024 });
    run({ kind: 'flush' });
    const atFlush = guest.slice();
    run({ kind: 'write', off: 512, len: 1024 });
    expect(tracker.verifyGuest(SIZE, atFlush)).toBeUndefined();
    expect(tracker.verifyGuest(SIZE, guest)).toBeUndefined();
    const mix = atFlush.slice();
    mix.set(guest.subarray(1024, 1536), 1024);
    expect(tracker.verifyGuest(SIZE, mix)).toBeUndefined();
  });

  it('flags a changed untouched sector, a value never held, and a size never had', () => {
    const { tracker, run, guest } = setup();
    run({ kind: 'write', off: 0, len: 1024 });
    run({ kind: 'flush' });
    run({ kind: 'write', off: 4096, len: 512 });
    const lost = guest.slice();
    lost.fill(0, 0, 512); // flushed data gone
    expect(tracker.verifyGuest(SIZE, lost)).toMatch(/offset 0 .*untouched since the flush/);
    const wrong = guest.slice();
    wrong.set(guest.subarray(0, 512), 4096); // another sector's data
    expect(tracker.verifyGuest(SIZE, wrong)).toMatch(/offset 4096 .*never held/);
    expect(tracker.verifyGuest(SIZE - 512, guest.subarray(0, SIZE - 512))).toMatch(/virtual size/);
  });

  it('a flush forgets older values; a resize allows either size', () => {
    const { tracker, run, guest } = setup();
    run({ kind: 'write', off: 0, len: 512 });
    const old = guest.slice();
    run({ kind: 'write', off: 0, len: 512 });
    run({ kind: 'flush' });
    expect(tracker.verifyGuest(SIZE, old)).toMatch(/never held/);
    run({ kind: 'resize', size: SIZE / 2, shrink: true });
    expect(tracker.verifyGuest(SIZE, guest)).toBeUndefined();
    expect(tracker.verifyGuest(SIZE / 2, guest.subarray(0, SIZE / 2))).toBeUndefined();
  });
});

describe('crash states of a recording', () => {
  const write = (rec: RecordingStorage, off: number, len: number, byte: number) => rec.write(off, new Uint8Array(len).fill(byte));

  it('a short log is enumerated whole: every subset, then torn writes, within the budget', () => {
    const rec = new RecordingStorage(new Uint8Array(4096).fill(1));
    rec.flush();
    write(rec, 0, 1024, 2);
    write(rec, 4096, 512, 3);
    write(rec, 8192, 8, 4);
    const plan = rec.crashPlan(CRASH_STATE_BUDGET, prng(1));
    expect(plan.mode).toBe('every-subset');
    expect(plan.pending).toBe(3);
    const whole = plan.states.filter((s) => s.fates.every((f) => typeof f === 'boolean'));
    expect(new Set(whole.map((s) => s.fates.join()))).toHaveProperty('size', 8);
    // The 1024-byte write spans two sectors: torn once each way on the empty prefix.
    expect(plan.torn).toBe(2);
    expect(plan.states.length).toBeLessThanOrEqual(CRASH_STATE_BUDGET);
  });

  it('a longer log gets every prefix and every op left out; a long one is sampled, and says so', () => {
    const rec = new RecordingStorage();
    for (let i = 0; i < 8; i++) write(rec, i * 512, 512, i + 1);
    const mid = rec.crashPlan(CRASH_STATE_BUDGET, prng(1));
    expect(mid.mode).toBe('every-prefix');
    expect(mid.states.map((s) => s.label)).toContain('ops 1-5 of 8');
    expect(mid.states.map((s) => s.label)).toContain('all but op 3 of 8');
    for (let i = 8; i < 40; i++) write(rec, i * 512, 512, i + 1);
    const long = rec.crashPlan(CRASH_STATE_BUDGET, prng(1));
    expect(long.mode).toBe('sampled');
    expect(long.states.length).toBe(CRASH_STATE_BUDGET);
  });

  it('a torn sector holds its old or its new bytes; lost space past the durable end is stale', () => {
    const rec = new RecordingStorage(new Uint8Array(1024).fill(1));
    rec.flush();
    write(rec, 256, 1024, 2); // sectors 0, 1 and 2 of the file, the last one past the durable end
    const only = (sectors: boolean[]) => rec.crashImageOf({ label: 't', fates: [sectors] });
    const a = only([true, false, false]);
    expect([...a.subarray(0, 256)].every((b) => b === 1)).toBe(true);
    expect([...a.subarray(256, 512)].every((b) => b === 2)).toBe(true);
    expect([...a.subarray(512, 1024)].every((b) => b === 1)).toBe(true);
    expect(a.length).toBe(1280);
    expect(staleSectorOrigin(a, 1024)).toBe(2);
    const zeros = rec.crashImageOf({ label: 't', fates: [[true, false, false]] }, 'zeros');
    expect(zeros.length).toBe(1024);
    const lost = rec.crashImageOf({ label: 't', fates: [false] });
    expect(staleSectorOrigin(lost, 1024)).toBe(2);
    expect(staleSectorOrigin(lost, 512)).toBeUndefined();
  });
});

describe('a planted missing data barrier (tests/support/planted-barrier.ts)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crash-barrier-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const run = (plant: boolean, fill: 'stale' | 'zeros' = 'stale') => runPlantedBarrier({ plant, dir, fill });

  it('without the plant, every crash state passes', async () => {
    const r = await run(false);
    expect(r.dropped).toBe(0);
    expect(r.problem).toBeUndefined();
    expect(r.qemuChecks).toBeGreaterThan(0);
  });

  it('with the barrier dropped, the crash oracle sees data the guest never wrote', async () => {
    const r = await run(true);
    expect(r.dropped).toBeGreaterThan(0);
    expect(r.problem).toMatch(/at guest offset 4096 read stale bytes of host sector \d+/);
    expect(r.problem).toMatch(/every-(subset|prefix)/);
  });

  it('zero-filled crash images would have hidden it (why stale fill exists)', async () => {
    const r = await run(true, 'zeros');
    expect(r.dropped).toBeGreaterThan(0);
    // The sector read zeros, which it held at the flush: nothing for the guest check to see.
    expect(r.problem ?? '').not.toMatch(/guest offset 4096/);
  });
});
