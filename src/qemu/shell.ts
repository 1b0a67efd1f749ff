/**
 * Runs tool commands through a long-lived bash instead of spawning each one
 * from Node. Spawning from Node forks the whole (large) Node process, which
 * cost more than the qemu-img call itself (~15 ms of main-thread time per
 * spawn in profiles); the shell is small, so its forks are cheap, and a batch
 * of commands runs in parallel inside it.
 *
 * A command costs one fork of the shell and one exec of the tool, by its
 * absolute path (resolve.ts). Its timeout is kept here, not by coreutils
 * `timeout` (a second exec per call): the shell reports each command's PID
 * as it starts it ("P i pid") and its exit status once it has reaped it
 * ("R pid rc"); on expiry Node sends TERM, and KILL after the grace, as
 * `timeout -k` does. The shell runs with job control (`set -m`), so every
 * command is the leader of its own process group and the signals reach
 * whatever it started too, as timeout's do. A signal is only sent while the
 * command's R line has not arrived; the shell has not reaped it then, or has
 * only just, and a reaped leader's group ID stays reserved while any member
 * lives, so a recycled PID is not hit.
 *
 * Exit codes, stdout and stderr come back through files in a private temp
 * directory. When the event loop drains, the shells are told to exit and are
 * waited for, so this process's children's CPU (cutime/cstime, and a parent's
 * measurement of this process) includes the tools'.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { resolveTool } from './resolve.js';
import { scratchDir } from './scratch.js';

export interface ShellCommand {
  tool: string;
  args: string[];
  timeoutMs: number;
}

export interface ShellResult {
  rc: number;
  stdout: string;
  stderr: string;
  /** The command outlived its timeout and was killed. */
  timedOut: boolean;
}

/** bash rather than dash: dash has no job control without a terminal, and no `wait -n -p`. */
const RUNNER = '/bin/bash';
const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
/** Grace between the TERM and the KILL (timeout -k 2). */
const KILL_AFTER_MS = 2000;
/** What `timeout` exits with when it had to signal the command: 124, or 128+KILL when the KILL was needed. */
const TIMEOUT_RC = 124;
const KILLED_RC = 137;
/** Beyond the longest timeout and its grace: the shell itself stopped answering. */
const SHELL_SLACK_MS = KILL_AFTER_MS + 5000;
/** Names output files uniquely across every shell of the process. */
let fileSeq = 0;

/** The timeout `timeout N` applied: whole seconds, at least one. */
const limitMs = (timeoutMs: number) => Math.max(1, Math.ceil(timeoutMs / 1000)) * 1000;

interface Job {
  cmd: ShellCommand;
  file: string;
  base: string;
  pid?: number;
  rc?: number;
  timedOut: boolean;
  killed: boolean;
  timer?: NodeJS.Timeout;
}

interface Batch {
  id: number;
  jobs: Job[];
  byPid: Map<number, Job>;
  done: () => void;
  fail: (e: Error) => void;
}

/**
 * Signals a command's process group (its PID, as job control made it the
 * leader). Not the PID alone as a fallback: once the group is gone the PID
 * may already be reaped and reused.
 */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    // The whole group has exited: nothing left to stop.
  }
}

class Shell {
  private proc: ChildProcessWithoutNullStreams;
  private seq = 0;
  private batch: Batch | undefined;
  busy = false;
  dead = false;
  readonly exited: Promise<void>;

  constructor(private readonly dir: string) {
    // Detached: its own session, with no terminal for job control to take over.
    this.proc = spawn(RUNNER, ['--noprofile', '--norc'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C' },
      detached: true,
    });
    this.exited = new Promise((resolve) => this.proc.once('close', () => resolve()));
    // 'close', not 'exit': by then every line it printed has been read.
    this.proc.on('close', () => this.lost(new Error('shell runner exited')));
    this.proc.on('error', (e) => this.lost(new Error(`shell runner ${RUNNER} could not start: ${e.message}`)));
    this.proc.stdin.on('error', () => (this.dead = true));
    // Its own messages ("Terminated" for a killed job) are not any command's stderr.
    this.proc.stderr.resume();
    readline.createInterface({ input: this.proc.stdout }).on('line', (l) => this.onLine(l));
    this.proc.stdin.write('set -m\n');
    // Let Node's event loop drain while an idle shell is around; beforeExit then closes it.
    this.proc.unref();
    for (const s of [this.proc.stdout, this.proc.stdin, this.proc.stderr]) (s as unknown as { unref?: () => void }).unref?.();
  }

  private lost(e: Error): void {
    this.dead = true;
    this.batch?.fail(e);
  }

  private onLine(line: string): void {
    const b = this.batch;
    if (!b) return;
    const [tag, a, c] = line.split(' ');
    if (tag === 'P') {
      const job = b.jobs[Number(a)]!;
      job.pid = Number(c);
      b.byPid.set(job.pid, job);
      job.timer = setTimeout(() => this.expire(job), limitMs(job.cmd.timeoutMs));
    } else if (tag === 'R') {
      const job = b.byPid.get(Number(a));
      if (!job) return;
      clearTimeout(job.timer);
      job.rc = Number(c);
    } else if (tag === 'D' && a === String(b.id)) {
      b.done();
    }
  }

  private expire(job: Job): void {
    if (job.rc !== undefined || job.pid === undefined) return;
    job.timedOut = true;
    signal(job.pid, 'SIGTERM');
    job.timer = setTimeout(() => {
      if (job.rc !== undefined) return;
      job.killed = true;
      signal(job.pid!, 'SIGKILL');
    }, KILL_AFTER_MS);
  }

  async run(cmds: ShellCommand[], files: string[]): Promise<ShellResult[]> {
    const id = ++this.seq;
    const jobs: Job[] = cmds.map((cmd, i) => ({ cmd, file: files[i]!, base: path.join(this.dir, `${process.pid}-${++fileSeq}`), timedOut: false, killed: false }));
    const start = jobs.map(
      (j, i) => `${[j.file, ...j.cmd.args].map(quote).join(' ')} >${quote(j.base + '.out')} 2>${quote(j.base + '.err')} </dev/null & echo "P ${i} $!"`,
    );
    // `wait -n -p` reports each command as soon as it ends, whatever the order.
    const reap = jobs.map(() => 'wait -n -p qh_pid; echo "R $qh_pid $?"');
    const longest = Math.max(...cmds.map((c) => limitMs(c.timeoutMs))) + SHELL_SLACK_MS;
    let guard: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        this.batch = { id, jobs, byPid: new Map(), done: resolve, fail: reject };
        guard = setTimeout(() => reject(new Error('shell runner stopped answering')), longest);
        if (this.dead) reject(new Error('shell runner exited'));
        else this.proc.stdin.write(`${[...start, ...reap].join('\n')}\necho "D ${id}"\n`);
      });
    } catch (e) {
      this.dead = true;
      for (const j of jobs) if (j.pid !== undefined && j.rc === undefined) signal(j.pid, 'SIGKILL');
      this.proc.kill('SIGKILL');
      throw e;
    } finally {
      clearTimeout(guard);
      for (const j of jobs) clearTimeout(j.timer);
      this.batch = undefined;
    }
    return jobs.map((j) => {
      const read = (ext: string) => {
        try {
          return fs.readFileSync(j.base + ext, 'utf8');
        } catch {
          return '';
        } finally {
          fs.rmSync(j.base + ext, { force: true });
        }
      };
      const rc = j.timedOut ? (j.killed ? KILLED_RC : TIMEOUT_RC) : (j.rc ?? 255);
      return { rc, stdout: read('.out'), stderr: read('.err'), timedOut: j.timedOut };
    });
  }

  /** Stops the commands still running (their results are no longer wanted) and lets the shell reach the end of its input. */
  close(): void {
    this.dead = true;
    for (const j of this.batch?.jobs ?? []) if (j.pid !== undefined && j.rc === undefined) signal(j.pid, 'SIGTERM');
    this.proc.stdin.end();
  }

  /** close(), then waits for the shell to exit, so that it is reaped and its CPU counted as this process's children's. */
  async shutdown(): Promise<void> {
    this.proc.ref();
    this.close();
    await this.exited;
  }
}

/** A small pool: concurrent callers each get a shell, so batches never wait on each other. */
class ShellPool {
  private shells: Shell[] = [];
  private dir: string | undefined;

  private tmp(): string {
    if (!this.dir || !fs.existsSync(this.dir)) this.dir = fs.mkdtempSync(path.join(scratchDir(), `qh-sh-${process.pid}-`));
    return this.dir;
  }

  get open(): boolean {
    return this.shells.length > 0;
  }

  async run(cmds: ShellCommand[]): Promise<ShellResult[]> {
    const resolved = cmds.map((c) => resolveTool(c.tool));
    const runnable = cmds.filter((_, i) => resolved[i]!.ok);
    let ran: ShellResult[] = [];
    if (runnable.length > 0) {
      this.shells = this.shells.filter((s) => !s.dead);
      let sh = this.shells.find((s) => !s.busy);
      if (!sh) {
        sh = new Shell(this.tmp());
        this.shells.push(sh);
      }
      sh.busy = true;
      try {
        ran = await sh.run(runnable, resolved.flatMap((r) => (r.ok ? [r.file] : [])));
      } finally {
        sh.busy = false;
      }
    }
    let k = 0;
    return resolved.map((r) => (r.ok ? ran[k++]! : { rc: r.rc, stdout: '', stderr: r.message, timedOut: false }));
  }

  /** For process exit, where nothing can be awaited: the shells end on their own, unreaped. */
  close(): void {
    for (const s of this.shells) s.close();
    this.shells = [];
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** Closes every shell and waits until each has exited and been reaped. */
  async shutdown(): Promise<void> {
    const shells = this.shells;
    this.shells = [];
    await Promise.all(shells.map((s) => s.shutdown()));
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export const shellPool = new ShellPool();

/** Closes the tool shells and waits for them (a campaign's end, a test measuring its children's CPU). */
export const shutdownShells = (): Promise<void> => shellPool.shutdown();

// The loop drained (a command finished): reap the shells before Node exits,
// so whoever waits for this process counts their CPU. Closing them queues
// their exits, so the loop runs once more and this fires again with none left.
process.on('beforeExit', () => {
  if (shellPool.open) void shellPool.shutdown();
});
process.once('exit', () => shellPool.close());
