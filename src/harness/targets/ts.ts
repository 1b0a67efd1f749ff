/**
 * Our engine as the implementation under test, in process on a recording
 * memory storage (which also yields crash images for the `crash` op).
 * The image is dumped to a file only for the qemu-img oracles at the end.
 * Qcow2Error is a clean refusal; any other exception escapes and is a finding.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Qcow2Error, UnsupportedFeatureError } from '../../qcow2/errors.js';
import { type BitmapView, Qcow2Image } from '../../qcow2/image.js';
import { openImageFile } from '../../qcow2/open-file.js';
import { FaultyStorage } from '../../qcow2/storage/faulty.js';
import { MemoryStorage } from '../../qcow2/storage/memory.js';
import { RecordingStorage } from '../../qcow2/storage/recording.js';
import type { BlockStorage } from '../../qcow2/storage/types.js';
import type { CheckResult, OpenOptions } from '../../qcow2/types.js';
import { creationOptions, DATA_FILE_NAME, passphraseOf, type TraceConfig } from '../config.js';
import { visitCrashStates, type CrashVisit } from '../crash.js';
import { createBacking } from '../fixture.js';
import { ALL_OP_KINDS, specOf, specOfKind, TS_FAULT_POINTS, type AioRequestKind, type EngineSession, type Op, type OpKind } from '../ops.js';
import type { CrashCoverage, OpOutcome, StampedOp, Target } from './types.js';

export class TsTarget implements Target {
  readonly name = 'ts';
  readonly verifyAfter = 'op';
  readonly capabilities: ReadonlySet<OpKind>;
  /** Fault ops fail the n-th storage request of a kind (the image runs on a FaultyStorage). */
  readonly faultPoints = TS_FAULT_POINTS;
  /** aio groups may hold reads and discards too: the engine runs a group's requests in a serial order. */
  readonly aioRequests: ReadonlySet<AioRequestKind> = new Set(['write', 'write-zeroes', 'read', 'discard']);
  private dir = '';
  private storage: RecordingStorage | undefined;
  /** The recording storage behind a FaultyStorage that passes everything through unless a fault op arms it. */
  private faulty: FaultyStorage | undefined;
  private dataFaulty: FaultyStorage | undefined;
  private img: Qcow2Image | undefined;
  /** The external data file of a data_file config (the engine closes its view of it, not the bytes). */
  private dataStorage: MemoryStorage | undefined;
  private openOpts: OpenOptions = {};
  /** config.dirty: the image is flushed and dropped, never closed (a lazy-refcounts image stays dirty). */
  private dirty = false;

  constructor(capabilities: ReadonlySet<OpKind> = tsCapabilities()) {
    this.capabilities = capabilities;
  }

  batchable(_op: Op): boolean {
    return false;
  }

  async setup(config: TraceConfig, dir: string): Promise<void> {
    this.dir = dir;
    this.dirty = config.dirty === true;
    const backingFile = config.backing ? await createBacking(dir, config.backing) : undefined;
    // An external data file lives in memory beside the image and is written out with it (sync).
    this.dataStorage = config.dataFile ? new MemoryStorage() : undefined;
    // Wrapped so a fault op can see where in the data file the engine wrote.
    this.dataFaulty = this.dataStorage ? new FaultyStorage(this.dataStorage) : undefined;
    const data = this.dataFaulty;
    const passphrase = passphraseOf(config);
    this.openOpts = {
      ...(passphrase !== undefined ? { passphrase } : {}),
      openBacking: (name, format) => openImageFile(path.isAbsolute(name) ? name : path.join(dir, name), { readOnly: true, format }),
      // MemoryStorage.close keeps the bytes, so every reopen sees the same data file.
      ...(data ? { openDataFile: () => data } : {}),
    };
    this.storage = new RecordingStorage();
    this.faulty = new FaultyStorage(this.storage);
    this.img = Qcow2Image.create(
      this.faulty,
      creationOptions(config, backingFile, path.join(dir, DATA_FILE_NAME)),
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
        const reads = this.apply(o);
        out.push(reads ? { ok: true, reads } : { ok: true });
      } catch (e) {
        if (!(e instanceof Qcow2Error)) throw e;
        out.push({ ok: false, error: `${e.name}: ${e.message}` });
      }
    }
    return out;
  }

  private apply({ op, data }: StampedOp): void | Uint8Array[] {
    return specOf(op).engine!(this.session, op, data);
  }

  /** The engine session the op table's engine calls run in. */
  private readonly session: EngineSession = ((t: TsTarget) => ({
    get image(): Qcow2Image {
      return t.image;
    },
    get faults(): FaultyStorage | undefined {
      return t.faulty;
    },
    get dataFaults(): FaultyStorage | undefined {
      return t.dataFaulty;
    },
    reopen(): void {
      t.end();
      t.img = undefined;
      t.img = Qcow2Image.open(t.faulty!, t.openOpts);
    },
  }))(this);

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

  /** The image as it stands, for a reader to open mid-run (docs/cmd-protocol.md, readers). */
  async writeImageFile(): Promise<void> {
    this.image.flush();
    fs.writeFileSync(this.imagePath(), this.storage!.view());
  }

  /** Ends the session on the image: a clean close, or with config.dirty a flush and nothing more. */
  private end(): void {
    if (this.dirty) this.image.flush();
    else this.image.close();
  }

  /** Closes the image (as QEMU's tools do; see end()) and reopens it read-only for the end reads. */
  async sync(): Promise<void> {
    this.end();
    this.img = undefined;
    fs.writeFileSync(this.imagePath(), this.storage!.view());
    if (this.dataStorage) fs.writeFileSync(path.join(this.dir, DATA_FILE_NAME), this.dataStorage.view());
    this.img = Qcow2Image.open(this.storage!, { ...this.openOpts, readOnly: true });
  }

  async crashImages(budget: number, seed: number, visit: CrashVisit): Promise<CrashCoverage> {
    const data = this.dataStorage;
    // The data file is taken as it is now: every write to it landed (one legal crash outcome, since
    // no L2 entry names data before a barrier). Crash states get their own copy to change.
    if (data) fs.writeFileSync(path.join(this.dir, DATA_FILE_NAME), data.read(0, data.size()));
    const opts: OpenOptions = data ? { ...this.openOpts, openDataFile: () => new MemoryStorage(data.read(0, data.size())) } : this.openOpts;
    const open = (s: BlockStorage) => Qcow2Image.open(s, opts);
    return visitCrashStates(this.storage!, { budget, seed, dir: this.dir, open }, visit);
  }

  async bitmaps(): Promise<BitmapView[]> {
    return this.image.bitmaps();
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
  // The recording storage gives crash images whatever the engine implements,
  // and the faulty storage under the image injects faults into whatever it runs.
  caps.add('crash');
  caps.add('fault');
  for (const kind of ALL_OP_KINDS) {
    const probe = specOfKind(kind).probe;
    if (!probe) continue;
    try {
      const img = Qcow2Image.create(new MemoryStorage(), { size: 4 * cs, clusterSize: cs });
      probe(img);
      img.close();
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
