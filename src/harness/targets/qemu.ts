/**
 * QEMU's own qcow2 driver as the implementation under test: consecutive guest
 * I/O ops run in one qemu-io process (one open/close of the image); snapshot,
 * amend and resize go through qemu-img; reopen simply ends a batch.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { imgAmend, imgConvertToRaw, imgCreate, imgResize, imgSnapshot, qemuIoBatch } from '../../qemu/index.js';
import type { ToolResult } from '../../qemu/run.js';
import { creationOptions, type TraceConfig } from '../config.js';
import { createBacking, readFileRange } from '../fixture.js';
import { ALL_OP_KINDS, type Op } from '../ops.js';
import type { KnownBug, OpOutcome, StampedOp, Target } from './types.js';

const IO_KINDS = new Set(['write', 'write-compressed', 'write-zeroes', 'discard', 'flush']);

export class QemuTarget implements Target {
  readonly name = 'qemu';
  readonly capabilities = new Set(ALL_OP_KINDS.filter((k) => k !== 'crash'));
  /** Known QEMU bugs the oracles look past; `strict` (corpus replay of those bugs) disables that. */
  readonly knownBugs: ReadonlySet<KnownBug>;
  readonly verifyAfter = 'batch';
  private dir = '';
  private image = '';
  private dumpValid = false;

  constructor(
    private readonly timeoutMs?: number,
    o: { strict?: boolean } = {},
  ) {
    this.knownBugs = new Set<KnownBug>(o.strict ? [] : ['leak-after-refused-snapshot', 'slow-refcount-amend', 'stale-tail-after-regrow']);
  }

  batchable(op: Op): boolean {
    return IO_KINDS.has(op.kind);
  }

  async setup(config: TraceConfig, dir: string): Promise<void> {
    this.dir = dir;
    this.image = path.join(dir, 'image.qcow2');
    const backingFile = config.backing ? await createBacking(dir, config.backing) : undefined;
    await imgCreate(
      this.image,
      creationOptions(config, backingFile),
      this.timeoutMs,
    );
    this.dumpValid = false;
  }

  imagePath(): string {
    return this.image;
  }

  async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    this.dumpValid = false;
    if (ops.length > 0 && ops.every((o) => this.batchable(o.op))) return this.runIo(ops);
    const out: OpOutcome[] = [];
    for (const o of ops) out.push(await this.runOne(o.op));
    return out;
  }

  private async runIo(ops: StampedOp[]): Promise<OpOutcome[]> {
    const files: string[] = [];
    const commands = ops.map(({ op, index, data }) => {
      if (op.kind === 'write' || op.kind === 'write-compressed') {
        const f = path.join(this.dir, `data.${index}`);
        fs.writeFileSync(f, data!);
        files.push(f);
        return `write ${op.kind === 'write-compressed' ? '-c ' : ''}-s ${f} ${op.off} ${op.len}`;
      }
      if (op.kind === 'write-zeroes') return `write -z ${op.unmap ? '-u ' : ''}${op.off} ${op.len}`;
      if (op.kind === 'discard') return `discard ${op.off} ${op.len}`;
      return 'flush';
    });
    try {
      const r = await qemuIoBatch(this.image, commands, { timeoutMs: this.timeoutMs });
      return r.results.map((x) => (x.ok ? { ok: true } : { ok: false, error: x.error ?? 'failed' }));
    } finally {
      for (const f of files) fs.rmSync(f, { force: true });
    }
  }

  private async runOne(op: Op): Promise<OpOutcome> {
    let r: ToolResult;
    switch (op.kind) {
      case 'reopen':
        return { ok: true };
      case 'snapshot':
        r = await imgSnapshot(this.image, op.action === 'create' ? 'c' : op.action === 'apply' ? 'a' : 'd', op.name, this.timeoutMs);
        break;
      case 'amend': {
        const v = op.key === 'lazy_refcounts' ? (op.value ? 'on' : 'off') : String(op.value);
        r = await imgAmend(this.image, `${op.key}=${v}`, this.timeoutMs);
        break;
      }
      case 'resize':
        r = await imgResize(this.image, op.size, { shrink: op.shrink, timeoutMs: this.timeoutMs });
        break;
      case 'crash':
        return { ok: false, error: 'crash is not supported by the qemu target' };
      default:
        return (await this.runIo([{ op, index: 0 }]))[0]!;
    }
    return r.rc === 0 ? { ok: true } : { ok: false, error: (r.stderr || r.stdout).trim() || `rc ${r.rc}` };
  }

  private async dump(): Promise<string> {
    const raw = path.join(this.dir, 'active.raw');
    if (!this.dumpValid) {
      await imgConvertToRaw(this.image, raw, { timeoutMs: this.timeoutMs });
      this.dumpValid = true;
    }
    return raw;
  }

  async read(off: number, len: number): Promise<Uint8Array> {
    return readFileRange(await this.dump(), off, len);
  }

  async readSnapshot(id: string, snapshotSize: number): Promise<Uint8Array> {
    const raw = path.join(this.dir, `snapshot.${id}.raw`);
    await imgConvertToRaw(this.image, raw, { snapshotId: id, timeoutMs: this.timeoutMs });
    const n = Math.min(snapshotSize, fs.statSync(raw).size);
    const out = readFileRange(raw, 0, n);
    fs.rmSync(raw, { force: true });
    return out;
  }

  async sync(): Promise<void> {}

  async close(): Promise<void> {}
}
