/**
 * fuzz's progress display. On a terminal one line is rewritten in place; in a
 * log (CI, `> file`) a carriage-return line is unreadable and a silent hour is
 * worse, so a full status line is printed at least every --status-every seconds instead; a forked
 * worker reports to its parent in PROGRESS lines.
 */
import type { Progress } from '../harness/commands.js';

export type ProgressMode = 'live' | 'status' | 'worker';

/** Time and timers, replaceable so a test can drive the status line with a fake clock. */
export interface Clock {
  now(): number;
  every(ms: number, fn: () => void): () => void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  every(ms, fn) {
    const h = setInterval(fn, ms);
    h.unref(); // the campaign, not the status line, decides when the process ends
    return () => clearInterval(h);
  },
};

/** The live line is redrawn at most this often; more is flicker and syscalls. */
const LIVE_REDRAW_MS = 200;

/**
 * Status lines are written every this fraction of --status-every: a log reader is promised one at least every
 * S seconds, and a timer fires late by as long as the campaign's longest synchronous stretch (a 10 s timer
 * printed 11 s after the one before beside two CPU hogs and a test suite; 0.55 s late at most for 1 s ones).
 */
const STATUS_EARLY = 0.8;

export class StatusLine {
  private latest: Progress = { runs: 0, ops: 0, failures: 0, elapsedSeconds: 0 };
  private t0 = 0;
  private lastDraw = Number.NEGATIVE_INFINITY;
  private cancel: (() => void) | undefined;
  private stopped = false;

  constructor(
    private readonly o: {
      target: string;
      mode: ProgressMode;
      everySeconds: number;
      write: (text: string) => void;
      clock?: Clock;
    },
  ) {}

  private get clock(): Clock {
    return this.o.clock ?? systemClock;
  }

  start(): void {
    this.t0 = this.clock.now();
    // A timer rather than a hook on each run: a run that takes a minute (a
    // hanging target) must not silence the log for that minute.
    if (this.o.mode === 'status') this.cancel = this.clock.every(this.o.everySeconds * 1000 * STATUS_EARLY, () => this.o.write(this.statusText()));
  }

  update(s: Progress): void {
    this.latest = s;
    if (this.o.mode === 'status') return;
    const now = this.clock.now();
    if (now - this.lastDraw < LIVE_REDRAW_MS) return;
    this.lastDraw = now;
    if (this.o.mode === 'worker') this.o.write(`PROGRESS ${JSON.stringify(s)}\n`);
    else this.o.write(`\r${this.o.target}: ${this.counters(s.elapsedSeconds)}   `);
  }

  /** Ends the display (the live line gets its newline); a second call does nothing. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.cancel?.();
    this.cancel = undefined;
    if (this.o.mode === 'live') this.o.write('\n');
  }

  /** The line a log gets: everything a reader needs, on its own. */
  statusText(): string {
    const elapsed = (this.clock.now() - this.t0) / 1000;
    return `fuzz [${this.o.target}]: ${this.counters(elapsed)} elapsed\n`;
  }

  private counters(elapsedSeconds: number): string {
    const s = this.latest;
    const rate = elapsedSeconds > 0 ? s.runs / elapsedSeconds : 0;
    return `${s.runs} runs, ${s.ops} ops, ${rate.toFixed(1)} runs/s, ${s.failures} failures, ${elapsedSeconds.toFixed(0)} s`;
  }
}
