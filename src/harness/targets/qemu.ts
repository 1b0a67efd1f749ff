/**
 * QEMU's own qcow2 driver as the implementation under test: consecutive guest
 * I/O ops run in one qemu-io process (one open/close of the image); snapshot,
 * amend and resize go through qemu-img; reopen simply ends a batch.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { imageOptsString, imgConvertToRaw, imgCreate, QEMU_IMG, QEMU_IO, qemuIoBatch, rewriteImageArgs, runTool, secretArgs, withAccessOpts, type ImageAccess } from '../../qemu/index.js';
import type { ToolResult } from '../../qemu/run.js';
import { accessOf, creationOptions, DATA_FILE_NAME, type TraceConfig } from '../config.js';
import { qemuDeclines } from '../declines.js';
import { createBacking, readFileRange } from '../fixture.js';
import { ALL_OP_KINDS, BLKDEBUG_EVENTS, specOf, specOfKind, type AioRequestKind, type Op, type QemuRunner } from '../ops.js';
import type { CrashCoverage, KnownBug, OpOutcome, StampedOp, Target } from './types.js';
import type { CrashVisit } from '../crash.js';
import { QemuCrashPoint } from './qemu-crash.js';

const fromTool = (r: ToolResult): OpOutcome => (r.rc === 0 ? { ok: true } : { ok: false, error: (r.stderr || r.stdout).trim() || `rc ${r.rc}` });

export class QemuTarget implements Target {
  readonly name = 'qemu';
  /** Every kind QEMU's tools can run (one qemu-io command, or a run of its own), and crash (qemu-crash.ts). */
  readonly capabilities = new Set(ALL_OP_KINDS.filter((k) => specOfKind(k).qemuIo || specOfKind(k).qemu || k === 'crash'));
  /** Fault ops open the image through blkdebug and fail at one of its events. */
  readonly faultPoints = BLKDEBUG_EVENTS;
  /** qemu-io 7.2 has aio_read and aio_write (-P, -z) but no aio_discard: groups never hold discards here. */
  readonly aioRequests: ReadonlySet<AioRequestKind> = new Set(['write', 'write-zeroes', 'read']);
  /** Known QEMU bugs the oracles look past; `strict` (corpus replay of those bugs) disables that. */
  readonly knownBugs: ReadonlySet<KnownBug>;
  readonly verifyAfter = 'batch';
  private dir = '';
  private image = '';
  private dumpValid = false;
  /** config.dirty: every qemu-io process is killed after its flush instead of closing the image. */
  private dirty = false;
  private config: TraceConfig | undefined;
  /** How every tool opens the image (the secret of an encrypted one). */
  private access: ImageAccess | undefined;
  /** What a qemu-io killed at the end of the last batch would have left (crash ops). */
  private crashPoint: QemuCrashPoint | undefined;

  constructor(
    private readonly timeoutMs?: number,
    o: { strict?: boolean } = {},
  ) {
    this.knownBugs = new Set<KnownBug>(o.strict ? [] : ['leak-after-refused-snapshot', 'slow-refcount-amend', 'stale-tail-after-regrow', 'failed-compressed-write-keeps-l2-entry', 'unencrypted-compressed-write', 'encrypted-downgrade-garbage', 'zero-races-allocating-write', 'zstd-downgrade-ignores-snapshots', 'data-file-discard-before-l2-update']);
  }

  batchable(op: Op): boolean {
    return specOf(op).qemuIo !== undefined;
  }

  async setup(config: TraceConfig, dir: string): Promise<void> {
    this.dir = dir;
    this.image = path.join(dir, 'image.qcow2');
    const backingFile = config.backing ? await createBacking(dir, config.backing) : undefined;
    await imgCreate(this.image, creationOptions(config, backingFile, path.join(dir, DATA_FILE_NAME)), this.timeoutMs);
    this.dumpValid = false;
    this.dirty = config.dirty === true;
    this.config = config;
    this.access = accessOf(config);
    this.crashPoint = new QemuCrashPoint(dir, this.image, config.dataFile ? path.join(dir, DATA_FILE_NAME) : undefined, this.access, this.timeoutMs);
  }

  imagePath(): string {
    return this.image;
  }

  async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    this.dumpValid = false;
    const declined = (o: StampedOp) => this.config !== undefined && qemuDeclines(this.config, o.op, this.knownBugs) !== undefined;
    if (ops.length > 0 && ops.every((o) => this.batchable(o.op) && !declined(o))) return this.runIo(ops);
    const out: OpOutcome[] = [];
    for (const o of ops) {
      // A crash op looks at the batch before it; any other op on its own ends with the image closed.
      if (o.op.kind === 'crash') {
        const d = this.config && qemuDeclines(this.config, o.op, this.knownBugs);
        out.push(d ? { ok: false, error: d } : { ok: true });
        continue;
      }
      this.crashPoint?.forget();
      out.push(await this.runOne(o));
    }
    return out;
  }

  crashImages(_budget: number, _seed: number, visit: CrashVisit): Promise<CrashCoverage> {
    return this.crashPoint!.crashImages(visit);
  }

  private async runIo(ops: StampedOp[]): Promise<OpOutcome[]> {
    const files: string[] = [];
    const commands = ops.map(({ op, index, data }) => {
      let file: string | undefined;
      if (data) {
        file = path.join(this.dir, `data.${index}`);
        fs.writeFileSync(file, data);
        files.push(file);
      }
      return specOf(op).qemuIo!(op, file);
    });
    this.crashPoint?.beforeBatch([...commands], files);
    // abort() leaves what the flush wrote and nothing of a clean close: the dirty bit stays set.
    if (this.dirty) commands.push('flush', 'abort');
    try {
      const r = await qemuIoBatch(this.image, commands, { timeoutMs: this.timeoutMs, lineBuffered: this.dirty, access: this.access });
      const results = this.dirty ? r.results.slice(0, ops.length) : r.results;
      const flushed: { ok: boolean; error?: string } = this.dirty ? r.results[ops.length]! : { ok: true };
      const out: OpOutcome[] = results.map((x) => (x.ok ? { ok: true } : { ok: false, error: x.error ?? 'failed' }));
      if (!flushed.ok && out[out.length - 1]!.ok) out[out.length - 1] = { ok: false, error: `the flush before abort failed: ${flushed.error}` };
      return out;
    } finally {
      // A batch a crash op may replay keeps its input files until the next batch (QemuCrashPoint.forget).
      if (!this.crashPoint?.keepsInputs) for (const f of files) fs.rmSync(f, { force: true });
    }
  }

  private async runOne({ op, index, data }: StampedOp): Promise<OpOutcome> {
    const spec = specOf(op);
    const declined = this.config && qemuDeclines(this.config, op, this.knownBugs);
    if (declined) return { ok: false, error: declined };
    if (spec.qemuIo) return (await this.runIo([{ op, index, data }]))[0]!;
    if (!spec.qemu) return { ok: false, error: `${op.kind} is not supported by the qemu target` };
    const files: string[] = [];
    const q: QemuRunner = {
      image: this.image,
      dir: this.dir,
      timeoutMs: this.timeoutMs,
      img: async (args) => fromTool(await runTool(QEMU_IMG, rewriteImageArgs(args, this.image, this.access), this.timeoutMs)),
      writeData: (d) => {
        const f = path.join(this.dir, `data.${index}`);
        fs.writeFileSync(f, d);
        files.push(f);
        return f;
      },
      ioWithOptions: async (command, opts) => {
        const r = await runTool(QEMU_IO, [...secretArgs(this.access), '--image-opts', '-c', command, withAccessOpts(opts, this.access)], this.timeoutMs);
        if (/can't open/.test(r.stderr)) return { ok: false, error: r.stderr.trim() };
        const failed = /^\w+ failed: (.*)$/m.exec(r.stdout);
        if (failed) return { ok: false, error: failed[1]! };
        return fromTool(r);
      },
      // One process, so aio_write requests stay in flight together until aio_flush drains them.
      ioCommands: async (commands) => {
        const image = this.access ? [...secretArgs(this.access), '--image-opts'] : ['-f', 'qcow2'];
        const file = this.access ? imageOptsString(this.image, this.access) : this.image;
        const r = await runTool(QEMU_IO, [...image, ...commands.flatMap((c) => ['-c', c]), file], this.timeoutMs);
        if (/can't open/.test(r.stderr)) return { ok: false, error: r.stderr.trim() };
        // A failed aio request is reported at completion, and qemu-io still exits 0.
        const failed = /^\w+ failed: (.*)$/m.exec(r.stdout + '\n' + r.stderr);
        if (failed) return { ok: false, error: failed[1]! };
        // The output goes back: a group's reads are what aio_read -v printed.
        return r.rc === 0 ? { ok: true, stdout: r.stdout } : fromTool(r);
      },
    };
    try {
      return await spec.qemu(op, q, data);
    } finally {
      for (const f of files) fs.rmSync(f, { force: true });
    }
  }

  private async dump(): Promise<string> {
    const raw = path.join(this.dir, 'active.raw');
    if (!this.dumpValid) {
      await imgConvertToRaw(this.image, raw, { timeoutMs: this.timeoutMs, access: this.access });
      this.dumpValid = true;
    }
    return raw;
  }

  async read(off: number, len: number): Promise<Uint8Array> {
    return readFileRange(await this.dump(), off, len);
  }

  async readSnapshot(id: string, snapshotSize: number): Promise<Uint8Array> {
    const raw = path.join(this.dir, `snapshot.${id}.raw`);
    await imgConvertToRaw(this.image, raw, { snapshotId: id, timeoutMs: this.timeoutMs, access: this.access });
    const n = Math.min(snapshotSize, fs.statSync(raw).size);
    const out = readFileRange(raw, 0, n);
    fs.rmSync(raw, { force: true });
    return out;
  }

  async sync(): Promise<void> {}

  async close(): Promise<void> {}
}

