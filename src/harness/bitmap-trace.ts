/**
 * Traces with persistent dirty bitmap ops mixed in: guest I/O, resizes,
 * snapshots and reopens (from the usual op seeds) with bitmap ops (add with
 * several granularities, remove, clear, enable, disable, merge) between them.
 * One generator for properties/bitmaps.prop.test.ts and `fuzz --include
 * bitmap`. The plain op seeds carry no bitmap weight (ops/bitmap.ts) so that
 * every other fixed-seed trace stays as it was; bitmap ops come only from here.
 *
 * Left out, because the bitmap model does not describe them: amend (a
 * downgrade to compat=0.10 drops bitmaps and leaks their clusters in QEMU 7.2),
 * crash and fault ops (a bitmap an interrupted run leaves is in-use, not
 * exact), and aio. Configurations always close cleanly, for the same reason.
 */
import fc from 'fast-check';
import { DiskModel } from '../model/disk.js';
import { configArb, opSeedArb, resolveOp, type OpSeed } from './arbitraries.js';
import { toModelConfig, type TraceConfig } from './config.js';
import { ALL_OP_KINDS, applyOp, expectOp, type Op, type OpKind } from './ops.js';

const NAMES = ['a', 'b', 'c'];
const GRANULARITIES = [undefined, 512, 4096, 65536, 1 << 20];
const ACTIONS = ['add', 'add', 'add', 'remove', 'clear', 'enable', 'disable', 'merge'] as const;

export type BitmapOp = Extract<Op, { kind: 'bitmap' }>;
export type BitmapTraceItem = { seed: OpSeed } | { op: Op };

export const bitmapOpArb: fc.Arbitrary<BitmapOp> = fc
  .record({ action: fc.constantFrom(...ACTIONS), name: fc.constantFrom(...NAMES), source: fc.constantFrom(...NAMES), g: fc.nat(GRANULARITIES.length - 1), disabled: fc.boolean() })
  .map(({ action, name, source, g, disabled }): BitmapOp => {
    if (action === 'add') {
      const granularity = GRANULARITIES[g];
      return { kind: 'bitmap', action, name, ...(granularity !== undefined ? { granularity } : {}), ...(disabled ? { disabled } : {}) };
    }
    if (action === 'merge') return { kind: 'bitmap', action, name, source };
    return { kind: 'bitmap', action, name };
  });

/** A trace's first op: always an add, so every trace has a bitmap to dirty. */
export const firstAddArb: fc.Arbitrary<BitmapOp> = bitmapOpArb.map((b): BitmapOp => (b.action === 'add' ? b : { kind: 'bitmap', action: 'add', name: b.name }));

/** Seeds for the guest and metadata ops, and bitmap ops between them. */
export const bitmapItemsArb = (maxOps: number): fc.Arbitrary<BitmapTraceItem[]> =>
  fc.array(fc.oneof({ weight: 3, arbitrary: opSeedArb.map((s) => ({ seed: s })) }, { weight: 2, arbitrary: bitmapOpArb.map((b) => ({ op: b as Op })) }), {
    minLength: 2,
    maxLength: maxOps,
  });

/**
 * The usual configurations, but always closed cleanly: a dirty (never closed)
 * image keeps its bitmaps marked in-use, as QEMU leaves them after a crash,
 * and those are not kept exact by design (tests/bitmaps covers in-use bitmaps).
 */
export const cleanConfigArb: fc.Arbitrary<TraceConfig> = configArb.map(({ dirty: _dirty, ...c }) => c);

/** The op kinds seeds may resolve to in these traces (besides the bitmap ops themselves). */
export const BITMAP_TRACE_KINDS: ReadonlySet<OpKind> = new Set<OpKind>(['write', 'write-compressed', 'write-zeroes', 'discard', 'flush', 'reopen', 'snapshot', 'resize']);

/** The kinds a bitmap trace never has: what `fuzz --include bitmap` leaves out. */
export const BITMAP_LEFT_OUT: readonly OpKind[] = ALL_OP_KINDS.filter((k) => k !== 'bitmap' && !BITMAP_TRACE_KINDS.has(k));

/**
 * Resolves the seeds against a model kept in step, so later ops land on the
 * image as it then is. `kinds` narrows BITMAP_TRACE_KINDS (a campaign's
 * --exclude, or what the target lacks); `knownBugs` are the target's, so ops
 * that would only show a documented bug are not drawn (as in other campaigns:
 * e.g. a compressed write on an encrypted image for QEMU, which stores it in
 * the clear where the model refuses it).
 */
export function concreteBitmapTrace(
  config: TraceConfig,
  first: BitmapOp,
  items: readonly BitmapTraceItem[],
  kinds: ReadonlySet<OpKind> = BITMAP_TRACE_KINDS,
  knownBugs?: ReadonlySet<string>,
): Op[] {
  const model = new DiskModel(toModelConfig(config));
  const ops: Op[] = [];
  for (const it of [{ op: first as Op }, ...items]) {
    const op = 'op' in it ? it.op : resolveOp(it.seed, model, { capabilities: kinds, knownBugs });
    if (!op) continue;
    ops.push(op);
    if (expectOp(model, op).verdict === 'ok') applyOp(model, op, ops.length);
  }
  return ops;
}
