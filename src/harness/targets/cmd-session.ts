/**
 * One program speaking the JSON-lines protocol of docs/cmd-protocol.md: the
 * process, strictly sequential request/response, timeouts, and the program's
 * stderr kept for failure messages (a finding against a program quotes what
 * it said).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as readline from 'node:readline';
import { HangError, QemuToolError } from '../../qemu/errors.js';
import { guardGroup, releaseGroup } from './group-guard.js';

export interface Response {
  id: number;
  ok: boolean;
  result?: Record<string, unknown>;
  error?: string;
  code?: 'refused' | 'unsupported' | 'internal';
  /** With code "unsupported": the configuration features declined (docs/cmd-protocol.md, feature names). */
  features?: unknown;
}

/** The program broke the protocol (bad JSON, wrong id, died): a finding against it. */
export class ProtocolError extends QemuToolError {}

const STDERR_KEEP = 4096;

export class CmdSession {
  private readonly proc: ChildProcessWithoutNullStreams;
  private readonly lines: AsyncIterator<string>;
  private nextId = 1;
  private stderrText = '';
  private closed = false;

  constructor(
    readonly name: string,
    program: string,
    cwd: string,
    private readonly timeoutMs: number,
  ) {
    // Its own process group, so a hang kills the program and not just the shell
    // around it (a reader stuck in a library call keeps its stdout open otherwise).
    this.proc = spawn('/bin/sh', ['-c', program], { cwd, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    // Out of the terminal's group, so killed by the guard if this process ends first (group-guard.ts).
    if (this.proc.pid !== undefined) guardGroup(this.proc.pid);
    this.proc.stderr.on('data', (d: Buffer) => {
      if (this.stderrText.length < STDERR_KEEP) this.stderrText += d.toString();
    });
    this.proc.stdin.on('error', () => undefined);
    this.proc.on('error', () => undefined);
    this.lines = readline.createInterface({ input: this.proc.stdout })[Symbol.asyncIterator]();
  }

  /** The program's stderr so far, for a failure message ('' when it said nothing). */
  stderrTail(): string {
    const t = this.stderrText.trim();
    return t ? `; its stderr: ${t.slice(-600).replace(/\s*\n\s*/g, ' | ')}` : '';
  }

  fail(what: string): ProtocolError {
    return new ProtocolError(`${this.name}: ${what}${this.stderrTail()}`);
  }

  /**
   * Sends one request and waits for its response. `o.id` overrides the id
   * (target-check sends out-of-order ids); `o.raw` returns an internal error
   * as a response instead of throwing it.
   */
  async call(method: string, params: Record<string, unknown> = {}, o: { id?: number; raw?: boolean } = {}): Promise<Response> {
    if (this.closed) throw this.fail('not running');
    const id = o.id ?? this.nextId++;
    this.proc.stdin.write(JSON.stringify({ id, method, params }) + '\n');
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new HangError(this.name, [method], this.timeoutMs)), this.timeoutMs);
    });
    try {
      const next = await Promise.race([this.lines.next(), timeout]);
      if (next.done) {
        // Let the exit status and the last of stderr arrive before quoting them.
        await this.exited(500);
        const how = this.proc.signalCode ? `killed by ${this.proc.signalCode}` : `exit status ${this.proc.exitCode ?? '?'}`;
        throw this.fail(`exited (${how}) during '${method}'`);
      }
      let resp: Response;
      try {
        resp = JSON.parse(next.value) as Response;
      } catch {
        throw this.fail(`not a JSON line in reply to '${method}': ${next.value.slice(0, 200)}`);
      }
      if (typeof resp !== 'object' || resp === null || typeof resp.ok !== 'boolean') {
        throw this.fail(`reply to '${method}' is not a response object: ${next.value.slice(0, 200)}`);
      }
      if (resp.id !== id) throw this.fail(`reply id ${resp.id}, expected ${id}`);
      if (!resp.ok && resp.code === 'internal' && !o.raw) throw this.fail(`internal error in '${method}': ${resp.error}`);
      return resp;
    } catch (e) {
      if (e instanceof HangError) this.kill();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  exited(ms: number): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.proc.once('exit', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** Whether the program has exited (and how), for target-check's quit probe. */
  exitState(): string | undefined {
    if (this.proc.signalCode) return `killed by ${this.proc.signalCode}`;
    return this.proc.exitCode === null ? undefined : `exit status ${this.proc.exitCode}`;
  }

  /** Sends `quit`, closes stdin, and kills the program if it has not exited after 2 s. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      this.proc.stdin.end(JSON.stringify({ id: this.nextId++, method: 'quit', params: {} }) + '\n');
    } catch {
      // already gone
    }
    const t = setTimeout(() => this.kill(), 2000);
    await this.exited(3000);
    clearTimeout(t);
    // Whatever the program started and left behind goes with it.
    this.kill();
  }

  private kill(): void {
    const pid = this.proc.pid;
    if (pid === undefined) return;
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // the group is gone already
    }
    releaseGroup(pid);
  }
}

/** The feature names a refusal carries, when it carries any. */
export function responseFeatures(r: Response): string[] {
  return Array.isArray(r.features) ? r.features.filter((f): f is string => typeof f === 'string') : [];
}
