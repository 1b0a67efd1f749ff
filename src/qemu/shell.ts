/**
 * Runs tool commands through a long-lived /bin/sh instead of spawning each one
 * from Node. Spawning from Node forks the whole (large) Node process, which
 * cost more than the qemu-img call itself (~15 ms of main-thread time per
 * spawn in profiles); the shell is small, so its forks are cheap, and a batch
 * of commands runs in parallel inside it.
 *
 * Each command runs under coreutils `timeout`; its exit code, stdout and
 * stderr come back through files in a private temp directory.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
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

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
/** Grace between timeout's TERM and its KILL. */
const KILL_AFTER_S = 2;
const TIMEOUT_RC = 124;
const KILLED_RC = 137;
/** Names output files uniquely across every shell of the process. */
let fileSeq = 0;

class Shell {
  private proc: ChildProcessWithoutNullStreams;
  private lines: AsyncIterator<string>;
  private seq = 0;
  busy = false;
  dead = false;

  constructor(private readonly dir: string) {
    this.proc = spawn('/bin/sh', [], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    this.proc.on('exit', () => (this.dead = true));
    this.proc.stdin.on('error', () => (this.dead = true));
    this.proc.stderr.resume();
    this.lines = readline.createInterface({ input: this.proc.stdout })[Symbol.asyncIterator]();
    // Let Node exit while an idle shell is still around.
    this.proc.unref();
    (this.proc.stdout as unknown as { unref?: () => void }).unref?.();
    (this.proc.stdin as unknown as { unref?: () => void }).unref?.();
    (this.proc.stderr as unknown as { unref?: () => void }).unref?.();
  }

  async run(cmds: ShellCommand[]): Promise<ShellResult[]> {
    const id = ++this.seq;
    const base = cmds.map(() => path.join(this.dir, `${process.pid}-${++fileSeq}`));
    const script = cmds
      .map((c, i) => {
        const secs = Math.max(1, Math.ceil(c.timeoutMs / 1000));
        const b = base[i]!;
        return (
          `( timeout -k ${KILL_AFTER_S} ${secs} ${[c.tool, ...c.args].map(quote).join(' ')} ` +
          `>${quote(b + '.out')} 2>${quote(b + '.err')} </dev/null; echo $? >${quote(b + '.rc')} ) &`
        );
      })
      .join('\n');
    this.proc.stdin.write(`${script}\nwait\necho __DONE__ ${id}\n`);
    const longest = Math.max(...cmds.map((c) => c.timeoutMs)) + (KILL_AFTER_S + 5) * 1000;
    let timer: NodeJS.Timeout | undefined;
    try {
      for (;;) {
        const next = await Promise.race([
          this.lines.next(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error('shell runner stopped answering')), longest);
          }),
        ]);
        clearTimeout(timer);
        if (next.done) throw new Error('shell runner exited');
        if (next.value === `__DONE__ ${id}`) break;
      }
    } catch (e) {
      this.dead = true;
      this.proc.kill('SIGKILL');
      throw e;
    }
    return base.map((b) => {
      const read = (ext: string) => {
        try {
          return fs.readFileSync(b + ext, 'utf8');
        } catch {
          return '';
        } finally {
          fs.rmSync(b + ext, { force: true });
        }
      };
      const rc = Number.parseInt(read('.rc').trim(), 10);
      const r = Number.isNaN(rc) ? 255 : rc;
      return { rc: r, stdout: read('.out'), stderr: read('.err'), timedOut: r === TIMEOUT_RC || r === KILLED_RC };
    });
  }

  close(): void {
    this.dead = true;
    this.proc.kill('SIGKILL');
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

  async run(cmds: ShellCommand[]): Promise<ShellResult[]> {
    this.shells = this.shells.filter((s) => !s.dead);
    let sh = this.shells.find((s) => !s.busy);
    if (!sh) {
      sh = new Shell(this.tmp());
      this.shells.push(sh);
    }
    sh.busy = true;
    try {
      return await sh.run(cmds);
    } finally {
      sh.busy = false;
    }
  }

  close(): void {
    for (const s of this.shells) s.close();
    this.shells = [];
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export const shellPool = new ShellPool();
process.once('exit', () => shellPool.close());
