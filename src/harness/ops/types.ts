/**
 * The shapes of the op table (DESIGN.md "Ops and their text form"): the ops
 * themselves and OpSpec, the one description of an op kind that every part of
 * the harness reads (text form, model, engine call, QEMU call, repro text,
 * generation). A new op kind is one new OpSpec in ./index.ts's table.
 *
 * This module and the specs import nothing at run time beyond each other, so
 * the CLI can use the table without loading fast-check or the harness.
 */
import type { DiskModel } from '../../model/disk.js';
import type { Expectation } from '../../model/types.js';
import type { Qcow2Image } from '../../qcow2/image.js';
import type { FaultyStorage } from '../../qcow2/storage/faulty.js';

export type AmendOp =
  | { kind: 'amend'; key: 'refcount_bits'; value: number }
  | { kind: 'amend'; key: 'compat'; value: '0.10' | '1.1' }
  | { kind: 'amend'; key: 'lazy_refcounts'; value: boolean };

/** Errors a fault op injects, by their errno names. */
export type FaultErrno = 'eio' | 'enospc';

/** An op run with one I/O error injected into its I/O (see ./fault.ts). */
export interface FaultOp {
  kind: 'fault';
  /**
   * Where: `read@N`, `write@N`, `flush@N` (the N-th storage request of that
   * kind the op makes, for implementations that run on a storage the harness
   * controls: ts) or a blkdebug event name (QEMU: the first time the event
   * fires, the next request fails).
   */
  where: string;
  errno: FaultErrno;
  op: Op;
}

/** One request of an aio group: a write of a pattern byte, write-zeroes, a read, or a discard. */
export type AioRequest =
  | { kind: 'write'; pattern: number; off: number; len: number }
  | { kind: 'write-zeroes'; unmap: boolean; off: number; len: number }
  | { kind: 'read'; off: number; len: number }
  | { kind: 'discard'; off: number; len: number };

export type AioRequestKind = AioRequest['kind'];

/** Requests in flight at once, then a flush (see ./aio.ts). */
export interface AioOp {
  kind: 'aio';
  reqs: AioRequest[];
}

export type Op =
  | { kind: 'write'; off: number; len: number }
  | { kind: 'write-compressed'; off: number; len: number }
  | { kind: 'write-zeroes'; off: number; len: number; unmap: boolean }
  | { kind: 'discard'; off: number; len: number }
  | { kind: 'flush' }
  | { kind: 'reopen' }
  /**
   * A pure check (DESIGN.md "Crash consistency"): a few crash images of the
   * image as it stands are opened and checked, then the run goes on with the
   * live, uncrashed image. Only targets that record their writes (ts) run it.
   */
  | { kind: 'crash' }
  | { kind: 'snapshot'; action: 'create' | 'apply' | 'delete'; name: string }
  | AmendOp
  | { kind: 'resize'; size: number; shrink: boolean }
  /** qemu-img bitmap: one action on one persistent bitmap (see ./bitmap.ts). */
  | {
      kind: 'bitmap';
      action: 'add' | 'remove' | 'clear' | 'enable' | 'disable' | 'merge';
      name: string;
      granularity?: number;
      disabled?: boolean;
      source?: string;
    }
  | FaultOp
  | AioOp;

export type OpKind = Op['kind'];

/** Op kinds that carry guest data or touch a guest range. */
export type RangeOp = Extract<Op, { off: number; len: number }>;

export type OpOf<K extends OpKind> = Extract<Op, { kind: K }>;

export class OpParseError extends Error {}

/** Our engine as an op runs on it: the open image, and a way to close and reopen it. */
export interface EngineSession {
  readonly image: Qcow2Image;
  reopen(): void;
  /** The storage under the image when the session can inject I/O errors (ts target). */
  readonly faults?: FaultyStorage;
  /**
   * The external data file's storage, when the image has one: fault points
   * count the image file's requests only (as blkdebug on `file.` does), but the
   * data file's writes are the ones a containment check must look at.
   */
  readonly dataFaults?: FaultyStorage;
}

/** `reads`: what the reads of an aio group returned, in the group's order (aio groups with reads only). */
export type OpOutcome = { ok: true; reads?: Uint8Array[] } | { ok: false; error: string };

/** What an op needs to run on QEMU's tools, for ops that are not one qemu-io command. */
export interface QemuRunner {
  readonly image: string;
  readonly dir: string;
  readonly timeoutMs?: number;
  /** Runs qemu-img with these arguments (the image path is among them). */
  img(args: string[]): Promise<OpOutcome>;
  /** Writes an op's data to a file the qemu tools can read (removed after the op). */
  writeData(data: Uint8Array): string;
  /** Runs one qemu-io command on an image given as --image-opts. */
  ioWithOptions(command: string, imageOpts: string): Promise<OpOutcome>;
  /** Runs qemu-io commands in one process on the image (aio requests stay in flight across commands). */
  ioCommands?(commands: string[]): Promise<OpOutcome & { stdout?: string }>;
}

/** One line of repro.sh: a qemu-io command (batched with its neighbours) or a shell command of its own; null: none, but the qemu-io batch ends. */
export type ReproStep = { io: string } | { shell: string } | null;

/** The seed an op is resolved from (see ../arbitraries.ts for how seeds are generated). */
export type Anchor = 'cluster' | 'subcluster' | 'l2' | 'refblock' | 'end' | 'start' | 'any';
export type LenUnit = 'sector' | 'subcluster' | 'cluster' | 'whole' | 'toend';

export interface OpSeed {
  kind: number; // 0..KIND_TOTAL-1, mapped through the table's generation weights (shrinks toward plain writes)
  anchor: Anchor;
  frac: number; // 0..1e6: where among the anchors
  delta: number; // -2..2 sectors off the anchor
  unit: LenUnit;
  count: number; // 1..4 units
  lenDelta: number; // -1..1 sectors
  flag: boolean; // write -z: unmap; resize: pass --shrink when shrinking
  pick: number; // snapshot choice, amend value, resize amount; fault choice for guest I/O
}

export interface ResolveContext {
  capabilities: ReadonlySet<OpKind>;
  knownBugs?: ReadonlySet<string>;
  /**
   * Fault points the target can inject at (`read`, `write`, `flush` for
   * storage requests, or blkdebug event names); none: no fault ops.
   */
  faultPoints?: readonly string[];
  /** Request kinds aio groups may hold (absent: write and write-zeroes, what every aio target does). */
  aioRequests?: ReadonlySet<AioRequestKind>;
}

/** One way a seed turns into an op, with its share of the seed space. */
export interface Variant<O extends Op> {
  weight: number;
  resolve(seed: OpSeed, model: DiskModel, ctx: ResolveContext): O | null;
}

export interface OpSpec<O extends Op = Op> {
  kind: O['kind'];
  /** First word of the text form; several kinds may share one (write, write -c, write -z). */
  verb: string;
  format(op: O): string;
  /** `w` is the line split on whitespace; null when the line is another kind's with the same verb. */
  parse(w: string[], line: string): O | null;
  expect(model: DiskModel, op: O): Expectation;
  /** Applies an op the target accepted; `stamp` is the op's number (its data's stamp). */
  apply(model: DiskModel, op: O, stamp: number): void;
  /** Guest ranges the op may change; 'whole' when it may change the view wholesale. */
  touches(op: O): [number, number][] | 'whole';
  /** The guest range the op's sector-unique data covers, for ops that carry data. */
  dataRange?(op: O): [number, number] | undefined;
  /** Runs the op on our engine (ts target, and the CLI's `io` for kinds it has no qemu-io syntax for). */
  /** A return value (an aio group's reads) becomes the outcome's `reads`. */
  engine?(s: EngineSession, op: O, data: Uint8Array | undefined): void | Uint8Array[];
  /** Tries the op once on a scratch image (ts capability probe); may leave the image closed. */
  probe?(img: Qcow2Image): void;
  /** The op as one qemu-io command: such ops share a qemu-io process with their neighbours. */
  qemuIo?(op: O, dataFile: string | undefined): string;
  /** Otherwise how QEMU's tools run it; absent (and no qemuIo): QEMU cannot run it. */
  qemu?(op: O, q: QemuRunner, data: Uint8Array | undefined): Promise<OpOutcome>;
  /** repro.sh's line for the op; `pattern` is the qemu-io pattern byte standing in for its data. */
  repro(op: O, pattern: string): ReproStep;
  /** Generation: how seeds resolve to this kind (absent: never generated from a seed). */
  variants?: Variant<O>[];
  /**
   * Generation of a wrapper kind (fault): given the op a seed resolved to,
   * possibly wrap it. Runs only for targets listing the kind.
   */
  wrap?(seed: OpSeed, op: Op, model: DiskModel, ctx: ResolveContext): O | null;
  /**
   * For an op that failed where the model allowed it to succeed and the
   * failure may have changed part of its range (an injected I/O error): the
   * model takes each sector from what the target shows, which must be the
   * old or the new value. Returns what is wrong, if anything.
   */
  settleFailure?(model: DiskModel, op: O, stamp: number, read: (off: number, len: number) => Promise<Uint8Array>): Promise<string | undefined>;
  /**
   * For an op whose accepted outcome the model cannot know in advance (an aio
   * group: any serial order): replaces `apply`, settling the model on what
   * the target shows among the outcomes allowed. Returns what is wrong, if anything.
   */
  settle?(model: DiskModel, op: O, stamp: number, read: (off: number, len: number) => Promise<Uint8Array>, outcome: OpOutcome): Promise<string | undefined>;
  /** Why this op may leave leaked clusters, failed or not (the end check then tolerates leaks). */
  mayLeak?: string;
  /** Ops that may run with a fault injected into their I/O (guest I/O). */
  faultable?: boolean;
}
