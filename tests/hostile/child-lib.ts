/**
 * Child side of runner.ts: reads the job, runs each case, and reports on
 * stdout as JSON lines ({start}, then {done, report, memory figures}).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface CaseJob {
  cases: { id: string }[];
  rssLimitMB: number;
  restartRssMB: number;
}

const MB = 1024 * 1024;

export function readJob<J extends CaseJob>(): J {
  return JSON.parse(readFileSync(process.argv[2], 'utf8')) as J;
}

/** Runs handler per case; stops (so the parent respawns a fresh child) after a case crosses the RSS limit. */
export async function serveCases<J extends CaseJob, C extends { id: string }>(
  job: J,
  handler: (c: C) => unknown | Promise<unknown>,
): Promise<void> {
  for (const c of job.cases as C[]) {
    const rssBeforeMB = process.resourceUsage().maxRSS / 1024;
    process.stdout.write(`${JSON.stringify({ start: c.id })}\n`);
    let report: unknown;
    try {
      report = await handler(c);
    } catch (e) {
      // The handler catches engine errors itself; reaching here is a bug in the harness or the engine.
      const err = e as Error;
      report = { harnessError: `${err?.constructor?.name}: ${err?.message}\n${err?.stack ?? ''}` };
    }
    const maxRssMB = process.resourceUsage().maxRSS / 1024;
    const arrayBuffersMB = process.memoryUsage().arrayBuffers / MB;
    process.stdout.write(`${JSON.stringify({ done: c.id, report, maxRssMB, rssBeforeMB, arrayBuffersMB })}\n`);
    // A fresh child keeps spawning qemu-img cheap (fork of a large process is slow) and
    // makes every case's RSS figure its own.
    if (maxRssMB > job.restartRssMB) break;
  }
}

export interface ToolRun {
  rc: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/**
 * One long-lived sh that runs qemu-img/qemu-io for this child: forking a
 * small shell is cheap, forking this node process (hundreds of MB) is not.
 */
class Shell {
  private readonly sh: ChildProcessWithoutNullStreams;
  private buf = '';
  private waiting: ((line: string) => void) | undefined;
  private n = 0;

  constructor() {
    this.sh = spawn('sh', [], { stdio: 'pipe', env: { ...process.env, LC_ALL: 'C' } });
    this.sh.stdout.on('data', (d: Buffer) => {
      this.buf += d.toString();
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        this.waiting?.(line);
      }
    });
    this.hold(false);
  }

  /** Keeps the event loop alive only while a command runs, so the child exits when its cases are done. */
  private hold(on: boolean): void {
    const streams = [this.sh.stdout, this.sh.stderr, this.sh.stdin] as unknown as { ref(): void; unref(): void }[];
    if (on) {
      this.sh.ref();
      for (const x of streams) x.ref();
    } else {
      this.sh.unref();
      for (const x of streams) x.unref();
    }
  }

  run(tool: string, args: string[], timeoutMs: number): Promise<ToolRun> {
    const id = this.n++;
    const out = join(tmpdir(), `qh-${process.pid}-${id}.out`);
    const err = join(tmpdir(), `qh-${process.pid}-${id}.err`);
    const q = (a: string): string => `'${a.replace(/'/g, `'\\''`)}'`;
    const secs = Math.max(1, Math.ceil(timeoutMs / 1000));
    const cmd = `timeout -s KILL ${secs} ${[tool, ...args].map(q).join(' ')} >${q(out)} 2>${q(err)} </dev/null; echo "__done ${id} $?"\n`;
    return new Promise((resolveRun) => {
      this.waiting = (line) => {
        const m = /^__done (\d+) (\d+)$/.exec(line);
        if (!m || Number(m[1]) !== id) return;
        this.waiting = undefined;
        const rc = Number(m[2]);
        const read = (f: string): string => {
          try {
            return readFileSync(f, 'utf8');
          } catch {
            return '';
          }
        };
        const r = { rc, stdout: read(out), stderr: read(err), timedOut: rc === 137 };
        rmSync(out, { force: true });
        rmSync(err, { force: true });
        this.hold(false);
        resolveRun(r);
      };
      this.hold(true);
      this.sh.stdin.write(cmd);
    });
  }
}

let shell: Shell | undefined;
export function tool(name: string, args: string[], timeoutMs = 30_000): Promise<ToolRun> {
  shell ??= new Shell();
  return shell.run(name, args, timeoutMs);
}

/** qemu-img check --output=json, optionally repairing (tests/support, on src/qemu's imgCheck). */
export { qemuCheck, type QemuCheckResult as QemuCheckRun } from '../support/qemu.js';

export interface QemuWritesRun {
  /** Every write reported done. */
  wrote: boolean;
  /** Every read-back pattern verified (only meaningful when wrote). */
  readbackOk: boolean;
  timedOut: boolean;
  output: string;
}

/** The same writes through qemu-io, then reads verifying them (a fresh qemu-io, like our reopen). */
export async function qemuWrites(path: string, writes: string[], reads: string[]): Promise<QemuWritesRun> {
  const io = (cmds: string[], ro: boolean) => tool('qemu-io', [...(ro ? ['-r'] : []), '-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), path], 5_000);
  const w = await io(writes, false);
  const wout = `${w.stdout}${w.stderr}`;
  const wrote = !w.timedOut && (wout.match(/^wrote /gm) ?? []).length === writes.length;
  if (!wrote) return { wrote, readbackOk: false, timedOut: w.timedOut, output: wout.slice(0, 1000) };
  const r = await io(reads, true);
  const rout = `${r.stdout}${r.stderr}`;
  const readbackOk = !r.timedOut && (rout.match(/^read /gm) ?? []).length === reads.length && !/verification failed/i.test(rout);
  return { wrote, readbackOk, timedOut: r.timedOut, output: `${wout}${rout}`.slice(0, 1000) };
}
