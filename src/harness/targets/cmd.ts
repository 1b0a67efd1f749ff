/**
 * Any other qcow2 implementation, driven through the JSON-lines protocol of
 * docs/cmd-protocol.md: one request per line on the program's stdin, one
 * response per line on its stdout. One program process serves one run.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { HangError } from '../../qemu/errors.js';
import type { CheckResult } from '../../qcow2/types.js';
import { QemuToolError } from '../../qemu/errors.js';
import { creationOptions, type TraceConfig } from '../config.js';
import { createBacking } from '../fixture.js';
import { ALL_OP_KINDS, formatOp, type Op, type OpKind } from '../ops.js';
import type { OpOutcome, StampedOp, Target } from './types.js';

export const CMD_PROTOCOL_VERSION = 1;
const DEFAULT_TIMEOUT_MS = 30_000;

interface Response {
  id: number;
  ok: boolean;
  result?: Record<string, unknown>;
  error?: string;
  code?: 'refused' | 'unsupported' | 'internal';
}

/** The program broke the protocol (bad JSON, wrong id, died): a finding against it. */
export class ProtocolError extends QemuToolError {}

export class CmdTarget implements Target {
  readonly name: string;
  readonly verifyAfter = 'op';
  capabilities: Set<OpKind> = new Set(ALL_OP_KINDS.filter((k) => k !== 'crash'));
  private proc: ChildProcessWithoutNullStreams | undefined;
  private lines: AsyncIterator<string> | undefined;
  private nextId = 1;
  private dir = '';
  private stderr = '';
  /** Set at setup when the program implements `check` (the "check agrees" oracle). */
  ownCheck?: () => Promise<CheckResult>;
  private hasSnapshotRead = true;

  constructor(
    private readonly program: string,
    private readonly timeoutMs = DEFAULT_TIMEOUT_MS,
  ) {
    this.name = `cmd:${program}`;
  }

  batchable(_op: Op): boolean {
    return false;
  }

  imagePath(): string {
    return path.join(this.dir, 'image.qcow2');
  }

  async setup(config: TraceConfig, dir: string): Promise<void> {
    this.dir = dir;
    const backingFile = config.backing ? await createBacking(dir, config.backing) : null;
    this.proc = spawn('/bin/sh', ['-c', this.program], { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stderr.on('data', (d: Buffer) => {
      if (this.stderr.length < 4096) this.stderr += d.toString();
    });
    this.proc.stdin.on('error', () => undefined);
    this.lines = readline.createInterface({ input: this.proc.stdout })[Symbol.asyncIterator]();
    const r = await this.call('create', {
      protocol: CMD_PROTOCOL_VERSION,
      path: this.imagePath(),
      ...creationOptions(config, undefined),
      // The protocol spells "no backing file" as null.
      backingFile,
      backingFormat: config.backing?.format ?? null,
    });
    if (!r.ok) throw new ProtocolError(`${this.name}: create failed: ${r.error}`);
    const caps = r.result?.capabilities;
    if (Array.isArray(caps)) this.capabilities = new Set(caps.filter((c): c is OpKind => ALL_OP_KINDS.includes(c as OpKind)));
    this.ownCheck =
      r.result?.check === true
        ? async () => {
            const c = await this.call('check');
            if (!c.ok) throw new ProtocolError(`${this.name}: check failed: ${c.error}`);
            return c.result as unknown as CheckResult;
          }
        : undefined;
    this.hasSnapshotRead = r.result?.readSnapshot !== false;
  }

  private async call(method: string, params: Record<string, unknown> = {}): Promise<Response> {
    const proc = this.proc;
    if (!proc || !this.lines) throw new ProtocolError(`${this.name}: not started`);
    const id = this.nextId++;
    proc.stdin.write(JSON.stringify({ id, method, params }) + '\n');
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new HangError(this.name, [method], this.timeoutMs)), this.timeoutMs);
    });
    try {
      const next = await Promise.race([this.lines.next(), timeout]);
      if (next.done) throw new ProtocolError(`${this.name}: exited during '${method}': ${this.stderr.trim()}`);
      let resp: Response;
      try {
        resp = JSON.parse(next.value) as Response;
      } catch {
        throw new ProtocolError(`${this.name}: not a JSON line in reply to '${method}': ${next.value.slice(0, 200)}`);
      }
      if (resp.id !== id) throw new ProtocolError(`${this.name}: reply id ${resp.id}, expected ${id}`);
      if (!resp.ok && resp.code === 'internal') throw new ProtocolError(`${this.name}: internal error in '${method}': ${resp.error}`);
      return resp;
    } catch (e) {
      if (e instanceof HangError) proc.kill('SIGKILL');
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    const out: OpOutcome[] = [];
    for (const { op, data } of ops) {
      const params: Record<string, unknown> = { op: formatOp(op) };
      if (data) params.data = Buffer.from(data.buffer, data.byteOffset, data.length).toString('base64');
      const r = await this.call('op', params);
      out.push(r.ok ? { ok: true } : { ok: false, error: r.error ?? 'refused' });
    }
    return out;
  }

  async read(off: number, len: number): Promise<Uint8Array> {
    const r = await this.call('read', { offset: off, length: len });
    return this.decode(r, 'read', len);
  }

  async readSnapshot(id: string, snapshotSize: number): Promise<Uint8Array> {
    if (!this.hasSnapshotRead) return new Uint8Array(0);
    const r = await this.call('readSnapshot', { id, length: snapshotSize });
    if (!r.ok && r.code === 'unsupported') return new Uint8Array(0);
    const d = this.decode(r, 'readSnapshot');
    return d;
  }

  private decode(r: Response, what: string, len?: number): Uint8Array {
    if (!r.ok || typeof r.result?.data !== 'string') throw new ProtocolError(`${this.name}: ${what} failed: ${r.error ?? 'no data'}`);
    const b = Buffer.from(r.result.data, 'base64');
    if (len !== undefined && b.length !== len) throw new ProtocolError(`${this.name}: ${what} returned ${b.length} bytes, wanted ${len}`);
    return new Uint8Array(b.buffer, b.byteOffset, b.length);
  }

  async sync(): Promise<void> {
    const r = await this.call('sync');
    if (!r.ok) throw new ProtocolError(`${this.name}: sync failed: ${r.error}`);
  }

  async close(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    this.proc = undefined;
    try {
      proc.stdin.end(JSON.stringify({ id: this.nextId++, method: 'quit', params: {} }) + '\n');
    } catch {
      // already gone
    }
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    const t = setTimeout(() => proc.kill('SIGKILL'), 2000);
    if (proc.exitCode === null && proc.signalCode === null) await exited;
    clearTimeout(t);
  }
}

