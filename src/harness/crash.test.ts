/** The crash oracle's sector rule, on hand-made guest views (no engine). */
import { describe, expect, it } from 'vitest';
import { DiskModel } from '../model/disk.js';
import { applyOp } from './apply-model.js';
import { CrashTracker } from './crash.js';
import { makeData } from './data.js';
import type { Op } from './ops.js';

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
