/**
 * Our engine as the implementation under test, in process on a recording
 * memory storage (which also yields crash images for the `crash` op).
 * The image is dumped to a file only for the qemu-img oracles at the end.
 * Qcow2Error is a clean refusal; any other exception escapes and is a finding.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Qcow2Error, UnsupportedFeatureError } from '../../qcow2/errors.js';
import { Qcow2Image } from '../../qcow2/image.js';
import { openImageFile } from '../../qcow2/open-file.js';
import { MemoryStorage } from '../../qcow2/storage/memory.js';
import { RecordingStorage } from '../../qcow2/storage/recording.js';
import type { BlockStorage } from '../../qcow2/storage/types.js';
import type { CheckResult, OpenOptions } from '../../qcow2/types.js';
import { creationOptions, type TraceConfig } from '../config.js';
import { visitCrashStates, type CrashVisit } from '../crash.js';
import { createBacking } from '../fixture.js';
import type { Op, OpKind } from '../ops.js';
import type { CrashCoverage, OpOutcome, StampedOp, Target } from './types.js';

export class TsTarget implements Target {
  readonly name = 'ts';
  readonly verifyAfter = 'op';
  readonly capabilities: ReadonlySet<OpKind>;
  private dir = '';
  private storage: RecordingStorage | undefined;
  private img: Qcow2Image | undefined;
  private openOpts: OpenOptions = {};

  constructor(capabilities: ReadonlySet<OpKind> = tsCapabilities()) {
    this.capabilities = capabilities;
  }

  batchable(_op: Op): boolean {
    return false;
  }

  async setup(config: TraceConfig, dir: string): Promise<void> {
    this.dir = dir;
    const backingFile = config.backing ? await createBacking(dir, config.backing) : undefined;
    this.openOpts = {
      openBacking: (name, format) => openImageFile(path.isAbsolute(name) ? name : path.join(dir, name), { readOnly: true, format }),
    };
    this.storage = new RecordingStorage();
    this.img = Qcow2Image.create(
      this.storage,
      creationOptions(config, backingFile),
      this.openOpts,
    );
  }

  imagePath(): string {
    return path.join(this.dir, 'image.qcow2');
  }

  private get image(): Qcow2Image {
    if (!this.img) throw new Error('ts target: image not open');
    return this.img;
  }

  async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    const out: OpOutcome[] = [];
    for (const o of ops) {
      try {
        this.apply(o);
        out.push({ ok: true });
      } catch (e) {
        if (!(e instanceof Qcow2Error)) throw e;
        out.push({ ok: false, error: `${e.name}: ${e.message}` });
      }
    }
    return out;
  }

  private apply({ op, data }: StampedOp): void {
    const img = this.image;
    switch (op.kind) {
      case 'write':
        return img.write(op.off, data!);
      case 'write-compressed':
        return img.writeCompressed(op.off, data!);
      case 'write-zeroes':
        return img.writeZeroes(op.off, op.len, { unmap: op.unmap });
      case 'discard':
        return img.discard(op.off, op.len);
      case 'flush':
        return img.flush();
      case 'reopen':
        img.close();
        this.img = undefined;
        this.img = Qcow2Image.open(this.storage!, this.openOpts);
        return;
      case 'crash':
        // A pure check: the executor examines crash images (crashImages) and
        // the run goes on with the live, uncrashed image.
        return;
      case 'snapshot':
        if (op.action === 'create') return img.createSnapshot(op.name);
        if (op.action === 'apply') return img.applySnapshot(op.name);
        return img.deleteSnapshot(op.name);
      case 'amend':
        if (op.key === 'refcount_bits') return img.amend({ refcountBits: op.value });
        if (op.key === 'compat') return img.amend({ compat: op.value });
        return img.amend({ lazyRefcounts: op.value });
      case 'resize':
        return img.resize(op.size, { shrink: op.shrink });
    }
  }

  async read(off: number, len: number): Promise<Uint8Array> {
    return this.image.read(off, len);
  }

  async readSnapshot(id: string, snapshotSize: number): Promise<Uint8Array> {
    this.image.flush();
    const view = Qcow2Image.open(this.storage!, { ...this.openOpts, readOnly: true, snapshot: id });
    try {
      return view.read(0, Math.min(snapshotSize, view.virtualSize));
    } finally {
      view.close();
    }
  }

  /** Closes the image cleanly (as QEMU's tools do) and reopens it read-only for the end reads. */
  async sync(): Promise<void> {
    this.image.close();
    this.img = undefined;
    fs.writeFileSync(this.imagePath(), this.storage!.bytes());
    this.img = Qcow2Image.open(this.storage!, { ...this.openOpts, readOnly: true });
  }

  async crashImages(budget: number, seed: number, visit: CrashVisit): Promise<CrashCoverage> {
    const open = (s: BlockStorage) => Qcow2Image.open(s, this.openOpts);
    return visitCrashStates(this.storage!, { budget, seed, dir: this.dir, open }, visit);
  }

  async ownCheck(): Promise<CheckResult> {
    return this.image.check('none');
  }

  async close(): Promise<void> {
    try {
      this.img?.close();
    } finally {
      this.img = undefined;
      this.storage = undefined;
    }
  }
}

let probed: ReadonlySet<OpKind> | undefined;

/**
 * Op kinds the engine implements, found by trying each once on a scratch
 * image: an UnsupportedFeatureError or a "not implemented" error drops the kind
 * (so the arbitraries do not generate it for this target).
 */
export function tsCapabilities(): ReadonlySet<OpKind> {
  if (probed) return probed;
  const caps = new Set<OpKind>();
  const cs = 4096;
  const tries: [OpKind, (img: Qcow2Image) => void][] = [
    ['write', (i) => i.write(0, new Uint8Array(512).fill(1))],
    ['write-compressed', (i) => i.writeCompressed(cs, new Uint8Array(cs).fill(2))],
    ['write-zeroes', (i) => i.writeZeroes(0, 512)],
    ['discard', (i) => i.discard(0, cs)],
    ['flush', (i) => i.flush()],
    ['reopen', (i) => i.close()],
    ['snapshot', (i) => (i.createSnapshot('p'), i.applySnapshot('p'), i.deleteSnapshot('p'))],
    ['amend', (i) => (i.amend({ refcountBits: 8 }), i.amend({ lazyRefcounts: true }), i.amend({ compat: '0.10' }))],
    ['resize', (i) => (i.resize(8 * cs), i.resize(4 * cs, { shrink: true }))],
  ];
  // The recording storage gives crash images whatever the engine implements.
  caps.add('crash');
  for (const [kind, fn] of tries) {
    try {
      const img = Qcow2Image.create(new MemoryStorage(), { size: 4 * cs, clusterSize: cs });
      fn(img);
      if (kind !== 'reopen') img.close();
      caps.add(kind);
    } catch (e) {
      const msg = (e as Error)?.message ?? '';
      const missing = e instanceof UnsupportedFeatureError || /not (yet )?implemented|unsupported/i.test(msg);
      // Anything else is a real answer (e.g. a refusal): the op exists.
      if (!missing) caps.add(kind);
    }
  }
  probed = caps;
  return caps;
}
