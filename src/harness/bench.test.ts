/** The bench verdict: how each like-for-like row is judged against QEMU and Node's start-up floor. */
import { describe, expect, it } from 'vitest';
import { verdict, type BenchResult } from './bench-report.js';

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

describe('bench verdict past start-up and against the disk', () => {
  const node = { nodeSeconds: 0.08, floorRatio: 0.25, beyondNodeSeconds: 0.3 };
  it('calls a row start-up bound only when our work past Node is no slower than QEMU past its own start-up', () => {
    const start = { qemuStartSeconds: 0.004, qemuStartCommand: 'qemu-io --version', beyondQemuStartSeconds: 0.316, startFloorRatio: 1.24 };
    const [bound, slower] = verdict([
      row({ ratio: 1.16, oursSeconds: 0.38, qemuSeconds: 0.32, ...node, ...start, workRatio: 0.95 }),
      row({ ratio: 1.3, oursSeconds: 0.42, qemuSeconds: 0.32, ...node, ...start, workRatio: 1.08 }),
    ]);
    expect(bound).toMatch(/^start-up 1\.16 .*\(work ratio 0\.95\); node -e '' alone takes 0\.0800 s against 0\.0040 s for QEMU's, so an engine as fast as QEMU's would stand at 1\.24$/);
    expect(slower).toMatch(/^above .*, work ratio 1\.08 past both start-ups$/);
  });

  it('calls a copy device bound only when ours is no slower than dd moving the same bytes', () => {
    const dd = { ioFloorSeconds: 2.9, ioFloorCommand: 'dd', workRatio: 1.4 };
    const [device, above] = verdict([
      row({ ratio: 1.3, oursSeconds: 2.6, qemuSeconds: 2, ...node, ...dd, ioFloorRatio: 1.45 }),
      row({ ratio: 1.5, oursSeconds: 3, qemuSeconds: 2, ...node, ...dd, ioFloorRatio: 1.45 }),
    ]);
    expect(device).toMatch(/^device  1\.30 .*dd moving the same bytes 2\.900 s \(1\.45× QEMU's 2\.000 s\)/);
    expect(above).toMatch(/^above   1\.50 .*dd moving the bytes alone takes 2\.900 s \(1\.45× QEMU\)$/);
  });
});
