/**
 * The op table: one OpSpec per op kind (DESIGN.md "Ops and their text form").
 * The text form (formatOp/parseOp, modelled on qemu-io/qemu-img so a trace
 * reads like a shell session; they round-trip exactly), the model's
 * expectation and update, our engine's call, QEMU's call, repro.sh's line and
 * seed resolution all read it. A new op kind is a new spec in SPECS.
 */
import type { DiskModel } from '../../model/disk.js';
import type { Expectation } from '../../model/types.js';
import { aio } from './aio.js';
import { amend } from './amend.js';
import { bitmap, bitmapEffects, bitmapEffectsOfRefusal, bitmapRefusal } from './bitmap.js';
import { makeFault } from './fault.js';
import { discard, flush, write, writeCompressed, writeZeroes } from './guest-io.js';
import { resize } from './resize.js';
import { crash, reopen } from './session.js';
import { snapshot } from './snapshot.js';
import { OpParseError, type Op, type OpKind, type OpSeed, type OpSpec, type RangeOp, type ResolveContext } from './types.js';

export * from './types.js';
export { aioPick, engineOrder, parseAioReads } from './aio.js';
export { BLKDEBUG_EVENTS, blkdebugOptions, DATA_FILE_FAULT_POINTS, FaultContainmentError, faultPick, STORAGE_FAULT_KINDS, storagePoint, TS_FAULT_POINTS } from './fault.js';

const fault = makeFault({ specOf, formatOp, parseOp });

/**
 * In generation order: a seed's `kind` picks a variant by these weights, so
 * reordering or reweighting changes every fixed-seed trace. Kinds without
 * variants (fault, aio) go at the end.
 */
const SPECS: readonly OpSpec<any>[] = [write, writeCompressed, writeZeroes, discard, flush, reopen, snapshot, amend, resize, crash, bitmap, fault, aio];

const BY_KIND = new Map<OpKind, OpSpec<any>>(SPECS.map((s) => [s.kind, s]));

export const ALL_OP_KINDS: readonly OpKind[] = SPECS.map((s) => s.kind);

export function specOf<O extends Op>(op: O): OpSpec<O> {
  return BY_KIND.get(op.kind)! as OpSpec<O>;
}

export function specOfKind(kind: OpKind): OpSpec {
  return BY_KIND.get(kind)!;
}

export function formatOp(op: Op): string {
  return specOf(op).format(op);
}

export function parseOp(line: string): Op {
  const w = line.trim().split(/\s+/);
  for (const s of SPECS) {
    if (s.verb !== w[0]) continue;
    const op = s.parse(w, line);
    if (op) return op;
  }
  throw new OpParseError(`unknown op '${line}'`);
}

/** Whether `word` starts some op kind's text form. */
export function isOpVerb(word: string): boolean {
  return SPECS.some((s) => s.verb === word);
}

export function expectOp(model: DiskModel, op: Op): Expectation {
  return bitmapRefusal(model, op) ?? specOf(op).expect(model, op);
}

/** Applies an op the target accepted; `stamp` is the op's number (its data's stamp). */
export function applyOp(model: DiskModel, op: Op, stamp: number): void {
  specOf(op).apply(model, op, stamp);
  bitmapEffects(model, op);
}

/** What an op the target refused still does to the model (persistent bitmaps only; see ./bitmap.ts). */
export function refusedOp(model: DiskModel, op: Op): void {
  bitmapEffectsOfRefusal(model, op);
}

export function isRangeOp(op: Op): op is RangeOp {
  return 'off' in op;
}

/** Ops whose data comes from the sector-unique generator. */
export function carriesData(op: Op): op is Extract<Op, { kind: 'write' | 'write-compressed' }> {
  return op.kind === 'write' || op.kind === 'write-compressed';
}

/** The guest range an op's sector-unique data covers (a fault around a write too), if it carries data. */
export function dataRangeOf(op: Op): [number, number] | undefined {
  return specOf(op).dataRange?.(op);
}

/** Guest ranges an op may change, or 'whole'. */
export function touchedBy(op: Op): [number, number][] | 'whole' {
  return specOf(op).touches(op);
}

// ---- generation -------------------------------------------------------------

const VARIANTS = SPECS.flatMap((s) => (s.variants ?? []).map((v) => ({ spec: s, v })));
/** Seeds' `kind` ranges over 0..KIND_TOTAL-1. */
export const KIND_TOTAL = VARIANTS.reduce((a, { v }) => a + v.weight, 0);

function variantOf(k: number): (typeof VARIANTS)[number] {
  let x = k % KIND_TOTAL;
  for (const e of VARIANTS) {
    if (x < e.v.weight) return e;
    x -= e.v.weight;
  }
  return VARIANTS[0]!;
}

/** The seed `kind` value where a kind's first variant starts (for biasing generation toward it). */
export function seedKindOf(kind: OpKind): number {
  let x = 0;
  for (const e of VARIANTS) {
    if (e.spec.kind === kind) return x;
    x += e.v.weight;
  }
  throw new Error(`op kind ${kind} is never generated from a seed`);
}

/**
 * Turns a seed into a concrete op for the image as the model sees it now (so
 * an op after a resize or a snapshot apply still lands on the interesting
 * boundaries of the image as it is then). Null when the target does not
 * support the seed's op kind. Wrapper kinds the target lists (fault) may then
 * wrap the op.
 */
export function resolveOp(seed: OpSeed, model: DiskModel, ctx: ResolveContext): Op | null {
  const { spec, v } = variantOf(seed.kind);
  if (!ctx.capabilities.has(spec.kind)) return null;
  const op = v.resolve(seed, model, ctx);
  if (!op) return null;
  for (const w of SPECS) {
    if (!w.wrap || !ctx.capabilities.has(w.kind)) continue;
    const wrapped = w.wrap(seed, op, model, ctx);
    if (wrapped) return wrapped;
  }
  return op;
}
