/**
 * An implementation under test. The executor (src/harness/execute.ts) drives
 * it op by op, or batch by batch for targets that can run several ops in one
 * process (qemu-io), and reads the guest view back for the oracles.
 */
import type { BitmapView } from '../../qcow2/image.js';
import type { CrashMode } from '../../qcow2/storage/recording.js';
import type { CheckResult } from '../../qcow2/types.js';
import type { TraceConfig } from '../config.js';
import type { AioRequestKind, Op, OpKind } from '../ops.js';

/**
 * A crash image after the engine opened it read-write (repairing a dirty
 * image), or why it would not open. `label` names the crash state; `file()`
 * writes the image as the open left it, for qemu-img check, and returns its path.
 */
export type CrashImage =
  | { opened: true; label: string; size: number; guest: Uint8Array; file(): string }
  | { opened: false; label: string; error: string };

/** Which crash states a crash point was checked with (RecordingStorage.crashPlan). */
export interface CrashCoverage {
  mode: CrashMode;
  /** Writes and truncates pending since the last flush. */
  pending: number;
  states: number;
  /** Torn-write states among them, and how many the enumeration knew of. */
  torn: number;
  tornKnown: number;
}

/** `reads`: what the reads of an aio group returned, in the group's order. */
export type OpOutcome = { ok: true; reads?: Uint8Array[] } | { ok: false; error: string };

export interface StampedOp {
  op: Op;
  /** The op's 1-based number in the trace: the stamp of its data. */
  index: number;
  /** Guest data of a write (sector-unique). */
  data?: Uint8Array;
}

/**
 * Known bugs of an implementation that the oracles tolerate (each documented
 * by a corpus entry that keeps reproducing it), so campaigns look past them.
 */
export type KnownBug =
  /** QEMU 7.2: a snapshot create refused for refcount overflow leaks a cluster (corpus: qemu-snapshot-refused-leak). */
  'leak-after-refused-snapshot'
  /**
   * QEMU 7.2: amend refcount_bits is quadratic in refcount block entries
   * (32K clusters, 1 bit: ~9 s; 1M clusters: many minutes); the arbitraries
   * avoid widths whose blocks exceed 64K entries (corpus: qemu-slow-refcount-amend).
   */
  | 'slow-refcount-amend'
  /**
   * QEMU 7.2: growing an image whose size is not cluster aligned re-exposes old
   * data past the old end in its last cluster (e.g. cut off by a shrink); the
   * model leaves those sectors unspecified (corpus: qemu-stale-tail-after-regrow).
   */
  | 'stale-tail-after-regrow'
  /**
   * QEMU 7.2: a compressed write that fails after allocating leaves its L2
   * entry pointing at bytes never written (reads then fail with EIO); fault
   * ops do not wrap compressed writes (corpus: qemu-failed-compressed-write-keeps-l2-entry).
   */
  | 'failed-compressed-write-keeps-l2-entry'
  /**
   * QEMU 7.2: a compressed write to an encrypted image stores the guest data
   * unencrypted (qcow2_co_pwritev_compressed_part never calls the cipher);
   * our engine and the model refuse it, and the arbitraries do not generate
   * it for QEMU (corpus: qemu-encrypted-compressed-write-in-clear).
   */
  | 'unencrypted-compressed-write'
  /**
   * QEMU 7.2: amend compat=0.10 of an encrypted image writes plain zeros over
   * its zero clusters (qcow2_downgrade -> bdrv_pwrite_zeroes on the file),
   * which the guest then reads as decrypted garbage; refused by our engine
   * and the model, not generated for QEMU (corpus: qemu-encrypted-downgrade-garbage).
   */
  | 'encrypted-downgrade-garbage'
  /**
   * QEMU 7.2: a write-zeroes (or discard) in flight beside an allocating write
   * to the same cluster is not ordered against it: the zeroing frees the host
   * cluster the write then links (refcount 0, referenced), or the write's
   * copy-on-write brings back data the zeroing removed; aio groups on QEMU do
   * not mix the two in one cluster (corpus: qemu-zero-unmap-races-allocating-write).
   */
  | 'zero-races-allocating-write'
  /**
   * QEMU 7.2: amend compat=0.10 of a zstd image looks for compressed clusters
   * in the active layer only, so a snapshot's zstd cluster is left to be read
   * as zlib (EIO); amend does not downgrade zstd images with snapshots on QEMU
   * (corpus: qemu-zstd-downgrade-strands-snapshot-clusters).
   */
  | 'zstd-downgrade-ignores-snapshots'
  /**
   * QEMU 7.2: a guest discard on an image with an external data file
   * discards the data file's cluster at once (qcow2_free_any_cluster), before
   * the L2 update that drops it is on disk; a crash in between leaves the old
   * entry pointing at a hole, which an encrypted image decrypts to garbage.
   * Crash ops on QEMU are declined for encrypted images with a data file
   * (corpus: qemu-data-file-discard-before-l2-update).
   */
  | 'data-file-discard-before-l2-update';

export interface Target {
  readonly name: string;
  readonly knownBugs?: ReadonlySet<KnownBug>;
  /** Op kinds this target implements; seeds of other kinds are skipped. */
  readonly capabilities: ReadonlySet<OpKind>;
  /** Where fault ops can inject an I/O error (see src/harness/ops/fault.ts); none: no fault ops. */
  readonly faultPoints?: readonly string[];
  /** Request kinds its aio groups may hold (see src/harness/ops/aio.ts); absent: write and write-zeroes. */
  readonly aioRequests?: ReadonlySet<AioRequestKind>;
  /**
   * 'op': read back after every op (cheap in process). 'batch': read back
   * after each batch of guest I/O only; a metadata op's effect on the guest
   * view is checked at the next batch or at the end (each read-back costs a
   * qemu-img process).
   */
  readonly verifyAfter: 'op' | 'batch';
  /** Whether `op` may share a batch with its neighbours (then it runs in one process with them). */
  batchable(op: Op): boolean;
  /** Creates the image (and the backing file) in `dir`. */
  setup(config: TraceConfig, dir: string): Promise<void>;
  /** Runs ops in order; returns one outcome per op. Throws HangError on a timeout. */
  run(ops: StampedOp[]): Promise<OpOutcome[]>;
  /** Reads the active guest view (call after run; may be served from a cached dump). */
  read(off: number, len: number): Promise<Uint8Array>;
  /**
   * Reads a snapshot's guest view without applying it, as far as the target
   * can (QEMU exposes only the first min(snapshot, active) bytes).
   * Returns the bytes and how many of them are meaningful.
   */
  readSnapshot(id: string, snapshotSize: number): Promise<Uint8Array>;
  /** Makes the image file at imagePath() current (ts: dumps memory to the file). */
  sync(): Promise<void>;
  /**
   * Makes the file at imagePath() show the image as it stands without ending
   * the run (ts: flushes and dumps memory); absent when the file is always
   * current between runs of ops (qemu). Used by reader targets.
   */
  writeImageFile?(): Promise<void>;
  /**
   * A reader target's producer: the executor verifies its view before the
   * reader's, so the model is checked against what was written before it is
   * checked against what was read.
   */
  readonly producer?: Target;
  /**
   * The virtual disk size the implementation reports for the image as it
   * stands (a reader's `size` at open, docs/cmd-protocol.md), or undefined
   * when it does not say. The executor holds it to the model's size.
   */
  mediaSize?(): Promise<number | undefined>;
  /** What the implementation says it is (e.g. "libqcow 20201213"), when it says. */
  readonly implementation?: string;
  imagePath(): string;
  /** The persistent bitmaps as the target reads them itself, after sync (ts only; QEMU's reading is the oracle's). */
  bitmaps?(): Promise<BitmapView[]>;
  /** Our engine's own check of the image, for the "our check agrees" oracle (ts only). */
  ownCheck?(): Promise<CheckResult>;
  /**
   * Crash images of the image as it stands (DESIGN.md "Crash consistency"):
   * at most `budget` crash states of the writes since the last flush (random
   * ones drawn from `seed`), each opened read-write (which repairs a dirty
   * image), read whole, closed, and handed to `visit` (state n of total)
   * one at a time; a false from `visit` stops the walk. Only targets that
   * record their writes offer it, and only they list 'crash' among their
   * capabilities.
   */
  crashImages?(budget: number, seed: number, visit: (image: CrashImage, n: number, total: number) => Promise<boolean>): Promise<CrashCoverage>;
  close(): Promise<void>;
}
