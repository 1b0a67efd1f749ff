/**
 * Runs tool commands through a long-lived bash instead of spawning each one
 * from Node. Spawning from Node forks the whole (large) Node process, which
 * cost more than the qemu-img call itself (~15 ms of main-thread time per
 * spawn in profiles); the shell is small, so its forks are cheap, and a batch
 * of commands runs in parallel inside it.
 *
 * A command costs one fork of the shell and one exec of the tool, by its
 * absolute path (resolve.ts). Its timeout is kept here rather than by
 * coreutils `timeout` (a second exec per call, and a PATH search): on expiry
 * Node sends TERM, and KILL after the grace, as `timeout -k` does. The shell
 * runs with job control (`set -m`), so each command leads its own process
 * group and the signals reach whatever it started too, as timeout's do.
 *
 * PID reuse: the shell writes a command's PID to a file when it starts it,
 * and its exit status to another only after reaping it; Node signals only
 * while the status file is absent, so only an unreaped (running or zombie)
 * process, whose PID cannot have been reused. What is left is the moment
 * between the shell's reap and its write (the shell reaching its next
 * statement); and the signal goes to the process group, which a recycled PID
 * would also have to lead. Checking a file rather than a line on stdout also
 * keeps a timer that fires late, while Node was busy, from killing (or
 * calling timed out) a command that ended in time.
 *
 * If Node dies without closing them (SIGKILL), a watchdog in each shell stops
 * the commands still running, as `timeout` did when it outlived its caller.
 *
 * Exit codes, stdout and stderr come back through files in a private temp
 * directory. When the event loop drains, the shells are told to exit and are
 * waited for, so this process's children's CPU (cutime/cstime, and a parent's
 * measurement of this process) includes the tools'.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { encodable, forkServed, READY_LINE, reapRequest, serverEnv, startRequest } from './fork-server.js';
import { resolveTool } from './resolve.js';
import { removeScratchFile, scratchDir } from './scratch.js';

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
/** How soon to look again when a command's timer ran out before the shell had even started it. */
const NOT_STARTED_RETRY_MS = 100;
/** How long a fork server may take to say it is ready before its tool goes to bash instead. */
const READY_TIMEOUT_MS = 10_000;
/** Names output files uniquely across every shell of the process. */
let fileSeq = 0;
let shellSeq = 0;

/** The timeout `timeout N` applied: whole seconds, at least one. */
const limitMs = (timeoutMs: number) => Math.max(1, Math.ceil(timeoutMs / 1000)) * 1000;

interface Job {
  cmd: ShellCommand;
  /** The path its output, PID and status files start with. */
  base: string;
  timedOut: boolean;
  killed: boolean;
  timer?: NodeJS.Timeout;
}

/**
 * Defined once per shell. `wait -n -p` reaps whichever command ends next, so
 * each status file appears as soon as its command is reaped, in any order.
 * An empty PID means nothing was left to wait for (never expected); the
 * missing status files then read as 255.
 *
 * The watchdog stands in for `timeout` outliving this process: it blocks on
 * fd 3, a pipe only Node writes to, and when that ends (Node exited or was
 * killed, so no timer will fire) it TERMs every command of this shell not yet
 * reaped, and KILLs them after the grace. Disowned, so `wait -n` never sees it.
 */
/** A command whose exit status never came back (its status file is missing or empty). */
const LOST_STATUS_RC = 255;
const lostStatusMessage = (tool: string, dir: string) =>
  `qcow2-harness: no exit status came back for ${path.basename(tool)}: the shell runner's scratch directory ${dir} was removed or is full`;

const prelude = (prefix: string) =>
  [
    'set -m',
    'declare -A qh_base',
    'qh_reap() { local n=$1 pid rc; while ((n > 0)); do pid=; wait -n -p pid; rc=$?; [[ -n $pid ]] || break; ' +
      'echo $rc >"${qh_base[$pid]}.rc"; unset "qh_base[$pid]"; ((n--)); done; echo "D $2"; }',
    'qh_stop() { local f p n=1; for f in "$1"-*.pid; do [[ -e $f && ! -e ${f%.pid}.rc ]] || continue; ' +
      'read -r p <"$f" && kill -s "$2" -- "-$p" 2>/dev/null && n=0; done; return $n; }',
    // After the commands, this shell's own files, and the directory once the last shell's are gone: a worker
    // killed by its test runner never reaches Node's exit handler, and left one directory per process behind.
    `( read -r _ <&3; qh_stop ${quote(prefix)} TERM && { sleep ${KILL_AFTER_MS / 1000}; qh_stop ${quote(prefix)} KILL; }; ` +
      `rm -f -- ${quote(prefix)}.sh ${quote(prefix)}-*; rmdir -- ${quote(path.dirname(prefix))} ) </dev/null >/dev/null 2>&1 &`,
    'disown $!',
    'exec 3<&-',
  ].join('\n');

/** Signals a command's process group (its PID: job control made it the leader). */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    // The whole group has exited: nothing left to stop.
  }
}

/** A started command's PID, while the shell has not yet reaped it; else undefined. */
function unreaped(job: Job): number | undefined {
  if (fs.existsSync(job.base + '.rc')) return undefined;
  try {
    const pid = Number.parseInt(fs.readFileSync(job.base + '.pid', 'utf8'), 10);
    return pid > 0 ? pid : undefined;
  } catch {
    return undefined; // not started yet
  }
}

class Shell {
  private proc: ChildProcess;
  private stdin: Writable;
  /** Node's end of the watchdog's pipe (fd 3 in the shell): closing it, or dying, wakes the watchdog. */
  private lifeline: Writable;
  private seq = 0;
  private batch: { id: number; jobs: Job[]; done: () => void; fail: (e: Error) => void } | undefined;
  busy = false;
  dead = false;
  private readonly exited: Promise<void>;
  private readonly closed: Promise<void>;
  /** Each batch's commands, rewritten for every batch (the shell has read it whole by the time it answers). */
  private readonly script: string;
  /** What this shell's files start with (the watchdog finds its commands' PID files by it). */
  private readonly prefix: string;

  /** Resolves once the runner can take commands: false when a fork server never said it was ready. */
  readonly ready: Promise<boolean>;

  /**
   * `served`: the tool this shell is a fork server of (fork-server.ts), which
   * then takes that tool's commands only; without it, bash, for any command.
   */
  constructor(
    private readonly dir: string,
    readonly served?: string,
  ) {
    this.prefix = path.join(dir, `${process.pid}-s${++shellSeq}`);
    this.script = `${this.prefix}.sh`;
    const env = { ...process.env, LC_ALL: 'C' };
    // Detached: its own session, with no terminal for job control to take over.
    this.proc = served
      ? spawn(served, [], { stdio: ['pipe', 'pipe', 'pipe', 'pipe'], env: serverEnv(env, this.prefix), detached: true })
      : spawn(RUNNER, ['--noprofile', '--norc'], { stdio: ['pipe', 'pipe', 'pipe', 'pipe'], env, detached: true });
    const [stdin, stdout, stderr, lifeline] = this.proc.stdio as unknown as [Writable, Readable, Readable, Writable];
    this.stdin = stdin;
    this.lifeline = lifeline;
    // A shell that could not start has 'error' and 'close' but no 'exit'.
    this.exited = new Promise((resolve) => (this.proc.once('exit', () => resolve()), this.proc.once('close', () => resolve())));
    this.closed = new Promise((resolve) => this.proc.once('close', () => resolve()));
    // 'close', not 'exit': by then every line it printed has been read.
    this.proc.on('close', () => this.lost(new Error('shell runner exited')));
    // The watchdog outlives the shell until its pipe ends.
    this.proc.on('exit', () => lifeline.destroy());
    this.proc.on('error', (e) => this.lost(new Error(`shell runner ${RUNNER} could not start: ${e.message}`)));
    stdin.on('error', () => (this.dead = true));
    lifeline.on('error', () => undefined);
    // Its own messages ("Terminated" for a killed job) are not any command's stderr.
    stderr.resume();
    let greeted: (ok: boolean) => void = () => undefined;
    this.ready = served
      ? new Promise((resolve) => {
          // Ref'd, unlike the server: a caller awaiting the greeting keeps the loop (and beforeExit's shutdown) off.
          const t = setTimeout(() => (greeted(false), this.close()), READY_TIMEOUT_MS);
          greeted = (ok) => (clearTimeout(t), resolve(ok));
        })
      : Promise.resolve(true);
    let first = served !== undefined;
    readline.createInterface({ input: stdout }).on('line', (l) => {
      if (first) {
        first = false;
        greeted(l === READY_LINE);
        if (l !== READY_LINE) this.close();
        return;
      }
      if (this.batch && l === `D ${this.batch.id}`) this.batch.done();
    });
    // No first line at all (the tool exited at once): not a server.
    this.proc.once('close', () => greeted(false));
    if (!served) stdin.write(`${prelude(this.prefix)}\n`);
    // Let Node's event loop drain while an idle shell is around; beforeExit then closes it.
    this.proc.unref();
    for (const s of [stdin, stdout, stderr, lifeline]) (s as unknown as { unref?: () => void }).unref?.();
  }

  private lost(e: Error): void {
    this.dead = true;
    this.batch?.fail(e);
  }

  /** The timeout ran out: TERM now, KILL after the grace, each only if the shell has not reaped the command. */
  private expire(job: Job): void {
    const pid = unreaped(job);
    if (pid === undefined) {
      // Reaped: it finished in time (Node was busy when the timer was due). Not started: look again soon.
      if (!fs.existsSync(job.base + '.rc')) job.timer = setTimeout(() => this.expire(job), NOT_STARTED_RETRY_MS);
      return;
    }
    job.timedOut = true;
    signal(pid, 'SIGTERM');
    job.timer = setTimeout(() => {
      const still = unreaped(job);
      if (still === undefined) return;
      job.killed = true;
      signal(still, 'SIGKILL');
    }, KILL_AFTER_MS);
  }

  async run(cmds: ShellCommand[], files: string[]): Promise<ShellResult[]> {
    const id = ++this.seq;
    const jobs: Job[] = cmds.map((cmd) => ({ cmd, base: `${this.prefix}-${++fileSeq}`, timedOut: false, killed: false }));
    const longest = Math.max(...cmds.map((c) => limitMs(c.timeoutMs))) + SHELL_SLACK_MS;
    let guard: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        this.batch = { id, jobs, done: resolve, fail: reject };
        guard = setTimeout(() => reject(new Error('shell runner stopped answering')), longest);
        if (this.dead) return reject(new Error('shell runner exited'));
        if (this.served) {
          this.stdin.write(jobs.map((j) => startRequest(j.base, j.cmd.args)).join('') + reapRequest(id));
        } else {
          const start = jobs.map((j, i) => {
            const b = quote(j.base);
            const argv = [files[i]!, ...j.cmd.args].map(quote).join(' ');
            return `${argv} >${b}.out 2>${b}.err </dev/null & qh_base[$!]=${b}; echo $! >${b}.pid`;
          });
          // bash reads a script on a pipe one byte per read(2), but a sourced file whole, before running it.
          fs.writeFileSync(this.script, `${start.join('\n')}\nqh_reap ${jobs.length} ${id}\n`);
          this.stdin.write(`. ${quote(this.script)}\n`);
        }
        for (const j of jobs) j.timer = setTimeout(() => this.expire(j), limitMs(j.cmd.timeoutMs));
      });
    } catch (e) {
      this.dead = true;
      for (const j of jobs) {
        const pid = unreaped(j);
        if (pid !== undefined) signal(pid, 'SIGKILL');
        // Without the shell no status file will come: the watchdog must not take the PID for a live one.
        removeScratchFile(j.base + '.pid');
      }
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
          removeScratchFile(j.base + ext);
        }
      };
      // The PID file goes first: a PID file without a status file means "not reaped" to the watchdog.
      removeScratchFile(j.base + '.pid');
      const rc = Number.parseInt(read('.rc').trim(), 10);
      const lost = !j.timedOut && Number.isNaN(rc);
      const status = j.timedOut ? (j.killed ? KILLED_RC : TIMEOUT_RC) : lost ? LOST_STATUS_RC : rc;
      // Said in stderr, so every caller's "tool failed (rc 255): ..." names the cause instead of nothing.
      const stderr = read('.err') + (lost ? `${lostStatusMessage(j.cmd.tool, path.dirname(j.base))}\n` : '');
      return { rc: status, stdout: read('.out'), stderr, timedOut: j.timedOut };
    });
  }

  /**
   * For process exit: KILLs the commands still running, since no one will
   * read their results and no grace can be waited for, and ends the shell's
   * input and the watchdog's pipe.
   */
  close(): void {
    this.dead = true;
    for (const j of this.batch?.jobs ?? []) {
      const pid = unreaped(j);
      if (pid !== undefined) signal(pid, 'SIGKILL');
    }
    this.stdin.end();
    this.lifeline.destroy();
  }

  /**
   * Lets the shell finish what it runs and reach the end of its input, and
   * waits until it has exited: reaped, its CPU (and that of every command it
   * reaped) is counted as this process's children's. The watchdog's pipe is
   * closed only then, so it finds nothing left to stop.
   */
  async shutdown(): Promise<void> {
    this.proc.ref();
    this.dead = true;
    this.stdin.end();
    await this.exited;
    this.lifeline.destroy();
    await this.closed;
  }
}

const DIR_PREFIX = 'qh-sh-';
/** A directory untouched this long, whose process is gone, is nobody's (a live pool writes into its own per call). */
const ORPHAN_AGE_MS = 60_000;

/**
 * Removes the scratch directories of processes that no longer exist and left
 * them (SIGKILLed before their watchdog could run, or from before it cleaned
 * up). Best effort: a directory that cannot be read or removed stays.
 */
function sweepOrphans(dir: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  const now = Date.now();
  for (const name of names) {
    const m = /^qh-sh-(\d+)-/.exec(name);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue; // alive
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') continue; // alive, someone else's
    }
    try {
      const full = path.join(dir, name);
      if (now - fs.statSync(full).mtimeMs < ORPHAN_AGE_MS) continue;
      fs.rmSync(full, { recursive: true, force: true });
    } catch {
      // Gone meanwhile, or not ours to remove.
    }
  }
}

/** A small pool: concurrent callers each get a shell, so batches never wait on each other. */
class ShellPool {
  private shells: Shell[] = [];
  private dir: string | undefined;

  private tmp(): string {
    if (!this.dir || !fs.existsSync(this.dir)) {
      if (!this.dir) sweepOrphans(scratchDir());
      this.dir = fs.mkdtempSync(path.join(scratchDir(), `${DIR_PREFIX}${process.pid}-`));
    }
    return this.dir;
  }

  get open(): boolean {
    return this.shells.length > 0;
  }

  /** Tools whose fork server never became ready: bash runs them from then on. */
  private unservable = new Set<string>();

  async run(cmds: ShellCommand[]): Promise<ShellResult[]> {
    const resolved = cmds.map((c) => resolveTool(c.tool));
    const out: (ShellResult | undefined)[] = resolved.map((r) => (r.ok ? undefined : { rc: r.rc, stdout: '', stderr: r.message, timedOut: false }));
    // One group per runner: each served tool's commands to a fork server of it, the rest to bash, all at once.
    const groups = new Map<string, number[]>();
    resolved.forEach((r, i) => {
      if (!r.ok) return;
      const key = this.servable(r.file) && encodable(cmds[i]!.args) ? r.file : '';
      const g = groups.get(key);
      if (g) g.push(i);
      else groups.set(key, [i]);
    });
    if (groups.size > 0 && this.dir && !fs.existsSync(this.dir)) {
      // Someone removed the scratch directory (a cleanup, a full tmpfs recovered by hand): the idle shells'
      // script and status files are gone with it, so they are retired and new ones start in a new directory.
      for (const s of this.shells) if (!s.busy) s.close();
    }
    await Promise.all(
      [...groups].map(async ([served, idx]) => {
        const files = idx.map((i) => (resolved[i] as { file: string }).file);
        const ran = await this.runOn(served || undefined, idx.map((i) => cmds[i]!), files);
        idx.forEach((i, k) => (out[i] = ran[k]));
      }),
    );
    return out as ShellResult[];
  }

  private servable(file: string): boolean {
    return !this.unservable.has(file) && forkServed(file);
  }

  /** Runs a batch on an idle shell of the runner (bash when served is undefined), started if none is idle. */
  private async runOn(served: string | undefined, cmds: ShellCommand[], files: string[]): Promise<ShellResult[]> {
    this.shells = this.shells.filter((s) => !s.dead);
    let sh = this.shells.find((s) => !s.busy && s.served === served);
    if (!sh) {
      sh = new Shell(this.tmp(), served);
      this.shells.push(sh);
    }
    sh.busy = true;
    try {
      if (!(await sh.ready)) {
        // The shell closed itself (dead): the retry never picks it.
        this.unservable.add(served!);
        return this.runOn(undefined, cmds, files);
      }
      return await sh.run(cmds, files);
    } finally {
      sh.busy = false;
    }
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
    const dir = this.dir;
    // A call made meanwhile starts a new shell in a new directory, which this one's removal must not take.
    this.shells = [];
    this.dir = undefined;
    await Promise.all(shells.map((s) => s.shutdown()));
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
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
