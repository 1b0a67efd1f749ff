/**
 * A reader under test, paired with a producer engine (docs/cmd-protocol.md,
 * protocol 2): the producer runs every op of the trace, and at each point the
 * executor verifies (after an op or a batch, and at the end) the reader opens
 * the image as it stands and its reads must equal the model. The executor
 * reads the producer's view first (`producer`), so a producer bug is never
 * blamed on the reader.
 */
import * as path from 'node:path';
import type { TraceConfig } from '../config.js';
import { backingChain } from '../config.js';
import type { Op, OpKind } from '../ops.js';
import { protocolLacks } from '../reader/features.js';
import { RefusalError, type BackingLink, type Reader } from '../reader/types.js';
import type { KnownBug, OpOutcome, StampedOp, Target } from './types.js';

export class ReaderTarget implements Target {
  readonly name: string;
  readonly capabilities: ReadonlySet<OpKind>;
  readonly knownBugs?: ReadonlySet<KnownBug>;
  readonly verifyAfter: 'op' | 'batch';
  private dir = '';
  private chain: BackingLink[] = [];
  /** The size the reader reported at its last open. */
  private openedSize: number | undefined;
  /** The image changed since the reader last opened it. */
  private stale = true;

  constructor(
    readonly producer: Target,
    readonly reader: Reader,
  ) {
    this.name = reader.name;
    // Crash images and injected faults are the producer's business; a reader reads what is on disk.
    this.capabilities = new Set([...producer.capabilities].filter((k) => k !== 'crash' && k !== 'fault' && k !== 'aio'));
    this.knownBugs = producer.knownBugs;
    this.verifyAfter = producer.verifyAfter;
  }

  batchable(op: Op): boolean {
    return this.producer.batchable(op);
  }

  async setup(config: TraceConfig, dir: string): Promise<void> {
    this.dir = dir;
    const lacks = protocolLacks(config);
    if (lacks.length) throw new RefusalError(lacks, `${this.name}: reader mode does not pass ${lacks.join(', ')} to readers`);
    await this.producer.setup(config, dir);
    // Top to bottom, each file named as the one above it names it (all in the run directory).
    this.chain = backingChain(config).map((l) => ({ file: l.file, path: path.join(dir, l.file), format: l.config.format }));
    // The empty image is the first point: a reader that declines the configuration says so before any op runs.
    await this.ensureOpen();
  }

  async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    this.stale = true;
    return this.producer.run(ops);
  }

  /** Concurrent reads (the end oracles read the disk and the snapshots at once) share one open. */
  private opening: Promise<void> | undefined;

  private ensureOpen(): Promise<void> {
    if (!this.stale) return this.opening ?? Promise.resolve();
    this.stale = false;
    this.opening = (async () => {
      await this.producer.writeImageFile?.();
      this.openedSize = undefined;
      const info = await this.reader.open(this.producer.imagePath(), this.chain);
      if (info && typeof info.size === 'number') this.openedSize = info.size;
    })();
    return this.opening;
  }

  async read(off: number, len: number): Promise<Uint8Array> {
    await this.ensureOpen();
    return this.reader.read(off, len);
  }

  async mediaSize(): Promise<number | undefined> {
    await this.ensureOpen();
    return this.openedSize ?? (await this.reader.mediaSize?.());
  }

  async readSnapshot(id: string, snapshotSize: number): Promise<Uint8Array> {
    await this.ensureOpen();
    return (await this.reader.readSnapshot(id, snapshotSize)) ?? new Uint8Array(0);
  }

  async sync(): Promise<void> {
    await this.producer.sync();
    this.stale = true;
  }

  imagePath(): string {
    return this.producer.imagePath();
  }

  /** Where the image the reader reads lives, with its backing files. */
  workDir(): string {
    return this.dir;
  }

  async close(): Promise<void> {
    await this.reader.close().catch(() => undefined);
    await this.producer.close();
  }
}
