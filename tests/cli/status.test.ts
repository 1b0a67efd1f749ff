/**
 * fuzz's progress without a terminal: a full status line every --status-every
 * seconds, driven here by a fake clock (no verdict depends on real time), and
 * the line's shape in a real short campaign whose output is not a terminal.
 */
import { execaNode } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { StatusLine, type Clock } from '../../src/cli/status.js';
import { scratchDir } from './helpers.js';

function fakeClock() {
  let t = 1_000_000;
  const timers: { every: number; next: number; fn: () => void }[] = [];
  const clock: Clock & { advance(ms: number): void } = {
    now: () => t,
    every(ms, fn) {
      const timer = { every: ms, next: t + ms, fn };
      timers.push(timer);
      return () => timers.splice(timers.indexOf(timer), 1);
    },
    advance(ms) {
      const end = t + ms;
      for (;;) {
        const due = timers.filter((x) => x.next <= end).sort((a, b) => a.next - b.next)[0];
        if (!due) break;
        t = due.next;
        due.next += due.every;
        due.fn();
      }
      t = end;
    },
  };
  return clock;
}

describe('the fuzz status line', () => {
  it('without a terminal: one full line every 0.8 of the interval (a late timer still keeps within it), counting from the start, and nothing after stop', () => {
    const clock = fakeClock();
    const lines: string[] = [];
    const s = new StatusLine({ target: 'ts', mode: 'status', everySeconds: 10, write: (t) => lines.push(t), clock });
    s.start();
    clock.advance(7_999);
    expect(lines).toEqual([]);
    s.update({ runs: 40, ops: 200, failures: 0, elapsedSeconds: 7.9 });
    clock.advance(1);
    expect(lines).toEqual(['fuzz [ts]: 40 runs, 200 ops, 5.0 runs/s, 0 failures, 8 s elapsed\n']);
    // A stalled campaign (no update for 25 s) still logs, with the time moving on.
    s.update({ runs: 100, ops: 512, failures: 1, elapsedSeconds: 12 });
    clock.advance(25_000);
    expect(lines.slice(1)).toEqual([
      'fuzz [ts]: 100 runs, 512 ops, 6.3 runs/s, 1 failures, 16 s elapsed\n',
      'fuzz [ts]: 100 runs, 512 ops, 4.2 runs/s, 1 failures, 24 s elapsed\n',
      'fuzz [ts]: 100 runs, 512 ops, 3.1 runs/s, 1 failures, 32 s elapsed\n',
    ]);
    s.stop();
    s.stop();
    clock.advance(60_000);
    expect(lines).toHaveLength(4);
  });

  it('on a terminal: the live line redrawn in place (at most every 200 ms), and a newline at the end', () => {
    const clock = fakeClock();
    const out: string[] = [];
    const s = new StatusLine({ target: 'qemu', mode: 'live', everySeconds: 10, write: (t) => out.push(t), clock });
    s.start();
    s.update({ runs: 1, ops: 3, failures: 0, elapsedSeconds: 0.5 });
    s.update({ runs: 2, ops: 6, failures: 0, elapsedSeconds: 0.6 }); // within 200 ms: not drawn
    clock.advance(200);
    s.update({ runs: 3, ops: 9, failures: 0, elapsedSeconds: 1 });
    clock.advance(30_000); // no timer lines on a terminal
    s.stop();
    expect(out).toEqual([
      '\rqemu: 1 runs, 3 ops, 2.0 runs/s, 0 failures, 1 s   ',
      '\rqemu: 3 runs, 9 ops, 3.0 runs/s, 0 failures, 1 s   ',
      '\n',
    ]);
  });

  it('a forked worker reports PROGRESS lines to its parent', () => {
    const clock = fakeClock();
    const out: string[] = [];
    const s = new StatusLine({ target: 'ts', mode: 'worker', everySeconds: 10, write: (t) => out.push(t), clock });
    s.start();
    s.update({ runs: 5, ops: 20, failures: 0, elapsedSeconds: 1 });
    s.stop();
    expect(out).toEqual(['PROGRESS {"runs":5,"ops":20,"failures":0,"elapsedSeconds":1}\n']);
  });

  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
  const dir = scratchDir('status');
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a campaign logged to a pipe prints status lines, not the carriage-return line', async () => {
    // --time keeps the process alive for 3 s whatever the machine's speed, so the
    // 1 s timer fires at least once; the counts themselves are not judged.
    const r = await execaNode(
      path.join(root, 'dist/cli/main.js'),
      ['fuzz', '--time', '3', '--seed', '1', '--status-every', '1', '--corpus', path.join(dir, 'corpus')],
      { cwd: dir, reject: false },
    );
    // What the campaign finds is not this test's subject (how many runs fit in 3 s
    // varies); that it ran to its summary is.
    expect([0, 1]).toContain(r.exitCode);
    expect(String(r.stdout)).toMatch(/^ts: \d+ runs /);
    const stderr = String(r.stderr);
    expect(stderr).not.toContain('\r');
    const status = stderr.split('\n').filter((l) => l.startsWith('fuzz [ts]: '));
    expect(status.length).toBeGreaterThanOrEqual(1);
    for (const l of status) expect(l).toMatch(/^fuzz \[ts\]: \d+ runs, \d+ ops, \d+\.\d runs\/s, \d+ failures, \d+ s elapsed$/);
  });
});
