/**
 * Any other qcow2 implementation, driven through the JSON-lines protocol of
 * docs/cmd-protocol.md: one request per line on the program's stdin, one
 * response per line on its stdout. One program process serves one run.
 *
 * The first request is always `create`. A writer creates the image and runs
 * the ops (protocol 1). A reader (protocol 2) answers `{"role":"reader"}`:
 * the run is then a reader target — a producer engine runs the ops and the
 * program is sent `open` at every point the executor verifies.
 */
import * as path from 'node:path';
import type { CheckResult } from '../../qcow2/types.js';
import { creationOptions, type TraceConfig } from '../config.js';
import { createBacking } from '../fixture.js';
import { ALL_OP_KINDS, formatOp, type AioRequestKind, type Op, type OpKind } from '../ops.js';
import { protocolLacks } from '../reader/features.js';
import { RefusalError, type BackingLink, type OpenInfo, type Reader } from '../reader/types.js';
import { CmdSession, ProtocolError, responseFeatures, type Response } from './cmd-session.js';
import { ReaderTarget } from './reader.js';
import type { KnownBug, OpOutcome, StampedOp, Target } from './types.js';

export { ProtocolError } from './cmd-session.js';

export const CMD_PROTOCOL_VERSION = 2;
const DEFAULT_TIMEOUT_MS = 30_000;

export interface CmdTargetOptions {
  /** Shown in results instead of `cmd:PROGRAM` (built-in adapters such as libqcow). */
  name?: string;
  /** Makes the producer engine a reader program is paired with. */
  producer?: () => Target;
}

export class CmdTarget implements Target {
  readonly name: string;
  private session: CmdSession | undefined;
  private dir = '';
  // aio is an optional capability (docs/cmd-protocol.md): only programs that list it get groups.
  private writerCaps: Set<OpKind> = new Set(ALL_OP_KINDS.filter((k) => k !== 'crash' && k !== 'aio'));
  /** Set at setup when the program turns out to be a reader. */
  private asReader: ReaderTarget | undefined;
  /** Set at setup when the program implements `check` (the "check agrees" oracle). */
  ownCheck?: () => Promise<CheckResult>;
  private hasSnapshotRead = true;
  private aioKinds: ReadonlySet<AioRequestKind> | undefined;
  implementation?: string;

  constructor(
    private readonly program: string,
    private readonly timeoutMs = DEFAULT_TIMEOUT_MS,
    private readonly o: CmdTargetOptions = {},
  ) {
    this.name = o.name ?? `cmd:${program}`;
  }

  /** Request kinds aio groups may hold: the program's `aioRequests` (absent: write and write-zeroes). */
  get aioRequests(): ReadonlySet<AioRequestKind> | undefined {
    return this.asReader ? undefined : this.aioKinds;
  }

  get capabilities(): ReadonlySet<OpKind> {
    return this.asReader?.capabilities ?? this.writerCaps;
  }

  get verifyAfter(): 'op' | 'batch' {
    return this.asReader?.verifyAfter ?? 'op';
  }

  get knownBugs(): ReadonlySet<KnownBug> | undefined {
    return this.asReader?.knownBugs;
  }

  async mediaSize(): Promise<number | undefined> {
    return this.asReader?.mediaSize();
  }

  get producer(): Target | undefined {
    return this.asReader?.producer;
  }

  batchable(op: Op): boolean {
    return this.asReader?.batchable(op) ?? false;
  }

  imagePath(): string {
    return path.join(this.dir, 'image.qcow2');
  }

  async setup(config: TraceConfig, dir: string): Promise<void> {
    this.dir = dir;
    const lacks = protocolLacks(config);
    if (lacks.length) throw new RefusalError(lacks, `${this.name}: the harness cannot pass ${lacks.join(', ')} through the cmd protocol`);
    const backingFile = config.backing ? await createBacking(dir, config.backing) : null;
    const session = new CmdSession(this.name, this.program, dir, this.timeoutMs);
    this.session = session;
    const r = await session.call('create', {
      protocol: CMD_PROTOCOL_VERSION,
      path: this.imagePath(),
      ...creationOptions(config, undefined),
      // The protocol spells "no backing file" as null.
      backingFile,
      backingFormat: config.backing?.format ?? null,
    });
    if (typeof r.result?.implementation === 'string') this.implementation = r.result.implementation;
    if (r.ok && r.result?.role === 'reader') {
      const producer = (this.o.producer ?? defaultProducerMissing)();
      this.asReader = new ReaderTarget(producer, new CmdReader(session, r.result?.snapshots !== false));
      // The producer writes the backing file again, the same bytes, as it would in a run of its own.
      await this.asReader.setup(config, dir);
      return;
    }
    if (!r.ok && r.code === 'unsupported') throw new RefusalError(responseFeatures(r), `${this.name}: create declined: ${r.error ?? ''}`);
    if (!r.ok) throw session.fail(`create failed: ${r.error}`);
    const caps = r.result?.capabilities;
    if (Array.isArray(caps)) this.writerCaps = new Set(caps.filter((c): c is OpKind => ALL_OP_KINDS.includes(c as OpKind)));
    // Reads and discards in aio groups only for programs that name them (docs/cmd-protocol.md).
    const reqs = r.result?.aioRequests;
    this.aioKinds = Array.isArray(reqs) ? new Set(AIO_REQUEST_KINDS.filter((k) => reqs.includes(k))) : undefined;
    this.ownCheck =
      r.result?.check === true
        ? async () => {
            const c = await session.call('check');
            if (!c.ok) throw session.fail(`check failed: ${c.error}`);
            return c.result as unknown as CheckResult;
          }
        : undefined;
    this.hasSnapshotRead = r.result?.readSnapshot !== false;
  }

  private get s(): CmdSession {
    if (!this.session) throw new ProtocolError(`${this.name}: not started`);
    return this.session;
  }

  async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    if (this.asReader) return this.asReader.run(ops);
    const out: OpOutcome[] = [];
    for (const { op, data } of ops) {
      const params: Record<string, unknown> = { op: formatOp(op) };
      if (data) params.data = Buffer.from(data.buffer, data.byteOffset, data.length).toString('base64');
      const r = await this.s.call('op', params);
      if (!r.ok) out.push({ ok: false, error: r.error ?? 'refused' });
      else if (op.kind === 'aio' && op.reqs.some((q) => q.kind === 'read')) out.push({ ok: true, reads: groupReads(this.s, r.result?.reads) });
      else out.push({ ok: true });
    }
    return out;
  }

  async read(off: number, len: number): Promise<Uint8Array> {
    if (this.asReader) return this.asReader.read(off, len);
    return decode(this.s, await this.s.call('read', { offset: off, length: len }), 'read', len);
  }

  async readSnapshot(id: string, snapshotSize: number): Promise<Uint8Array> {
    if (this.asReader) return this.asReader.readSnapshot(id, snapshotSize);
    if (!this.hasSnapshotRead) return new Uint8Array(0);
    const r = await this.s.call('readSnapshot', { id, length: snapshotSize });
    if (!r.ok && r.code === 'unsupported') return new Uint8Array(0);
    return decode(this.s, r, 'readSnapshot', undefined, snapshotSize);
  }

  async sync(): Promise<void> {
    if (this.asReader) return this.asReader.sync();
    const r = await this.s.call('sync');
    if (!r.ok) throw this.s.fail(`sync failed: ${r.error}`);
  }

  async writeImageFile(): Promise<void> {
    await this.asReader?.producer.writeImageFile?.();
  }

  async close(): Promise<void> {
    const reader = this.asReader;
    const session = this.session;
    this.asReader = undefined;
    this.session = undefined;
    if (reader) await reader.close();
    else await session?.close();
  }
}

const AIO_REQUEST_KINDS: readonly AioRequestKind[] = ['write', 'write-zeroes', 'read', 'discard'];

/** An aio group's `reads` (base64, one per read request in order); the harness judges their lengths and bytes. */
function groupReads(s: CmdSession, reads: unknown): Uint8Array[] {
  if (!Array.isArray(reads) || !reads.every((x) => typeof x === 'string')) throw s.fail('an aio group with reads answered without "reads" (base64 strings)');
  return reads.map((x: string) => new Uint8Array(Buffer.from(x, 'base64')));
}

function defaultProducerMissing(): Target {
  throw new ProtocolError('a reader program needs a producer engine (--producer qemu|ts)');
}

function decode(s: CmdSession, r: Response, what: string, len?: number, max?: number): Uint8Array {
  if (!r.ok || typeof r.result?.data !== 'string') throw s.fail(`${what} failed: ${r.error ?? 'no data in the result'}`);
  const b = Buffer.from(r.result.data, 'base64');
  if (len !== undefined && b.length !== len) throw s.fail(`${what} returned ${b.length} bytes, wanted ${len}`);
  if (max !== undefined && b.length > max) throw s.fail(`${what} returned ${b.length} bytes, at most ${max} asked`);
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}

/** A reader program (protocol 2): `open`, `read`, `readSnapshot` on the session that answered `create` as a reader. */
class CmdReader implements Reader {
  readonly name: string;

  constructor(
    private readonly s: CmdSession,
    private readonly snapshots: boolean,
  ) {
    this.name = s.name;
  }

  async open(image: string, chain: BackingLink[]): Promise<OpenInfo> {
    const r = await this.s.call('open', {
      path: image,
      backing: chain.map((l) => ({ file: l.file, path: l.path, format: l.format })),
      readOnly: true,
    });
    if (r.ok) {
      const size = r.result?.size;
      if (size === undefined || size === null) return {};
      if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw this.s.fail(`open returned size ${JSON.stringify(size)}, not a byte count`);
      return { size };
    }
    if (r.code === 'unsupported') throw new RefusalError(responseFeatures(r), `${this.name}: open declined: ${r.error ?? ''}`);
    throw this.s.fail(`open of a valid image failed: ${r.error ?? 'no error text'}`);
  }

  async read(off: number, len: number): Promise<Uint8Array> {
    return decode(this.s, await this.s.call('read', { offset: off, length: len }), 'read', len);
  }

  async readSnapshot(id: string, length: number): Promise<Uint8Array | undefined> {
    if (!this.snapshots) return undefined;
    const r = await this.s.call('readSnapshot', { id, length });
    if (!r.ok && r.code === 'unsupported') return undefined;
    return decode(this.s, r, 'readSnapshot', undefined, length);
  }

  async close(): Promise<void> {
    await this.s.close();
  }
}
