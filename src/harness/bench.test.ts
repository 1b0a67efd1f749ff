/** The bench verdict: how each like-for-like row is judged against QEMU and Node's start-up floor. */
import { describe, expect, it } from 'vitest';
import { verdict, type BenchResult } from './bench.js';

const row = (over: Partial<BenchResult>): BenchResult => ({
  name: 'case',
  cache: 'warm',
  qemuSeconds: 0.2,
  oursSeconds: 0.1,
  ratio: 0.5,
  ratioMin: 0.4,
  ratioMax: 0.6,
  pairs: 3,
  qemuCommand: 'q',
  oursCommand: 'o',
  verified: true,
  likeForLike: true,
  ...over,
});

describe('bench verdict', () => {
  it('passes a row at or below 1.0 and leaves out rows that are not like for like', () => {
    expect(verdict([row({}), row({ ratio: 3, likeForLike: false })])).toEqual(['ok      0.50  case [warm]']);
  });

  it('names the floor when node -e alone is slower than QEMU, and the split when it is not', () => {
    const [floor, above] = verdict([
      row({ ratio: 14, oursSeconds: 0.14, qemuSeconds: 0.01, nodeSeconds: 0.07, floorRatio: 7, beyondNodeSeconds: 0.07 }),
      row({ ratio: 1.5, oursSeconds: 0.3, qemuSeconds: 0.2, nodeSeconds: 0.07, floorRatio: 0.35, beyondNodeSeconds: 0.23 }),
    ]);
    expect(floor).toMatch(/^floor .*node -e '' alone takes 0\.0700 s, 7\.00× QEMU's whole 0\.0100 s, so 1\.0 is out of reach; ours adds 0\.0700 s/);
    expect(above).toMatch(/^above .*ours 0\.300 s against QEMU's 0\.200 s; node -e '' alone takes 0\.0700 s \(floor 0\.35\), our modules and engine the other 0\.230 s$/);
  });
});
