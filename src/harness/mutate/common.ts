/**
 * What every mutation family shares: the Mutation type, the context a family
 * reads (the image, its analysed layout, the offsets entries get pointed at)
 * and the byte writers. A family is a function `(ctx) => void` that calls
 * `ctx.add` once per corruption it knows for this image.
 */
import { alignUp, entryOffset, OFFSET_MASK_HI, OFFSET_MASK_LO, viewOf } from '../../qcow2/format/index.js';
import { analyzeImage, type DataClusterRef, type ImageLayout, type TableEntryRef } from './analyze.js';

export type MutationKind =
  | 'header'
  | 'extension'
  | 'l1'
  | 'l2'
  | 'reftable'
  | 'refcount'
  | 'leak'
  | 'overlap'
  | 'truncate'
  | 'flip'
  | 'snapshot';

export interface Mutation {
  /** Stable, unique within one image: used as a test title and to replay one case. */
  name: string;
  kind: MutationKind;
  description: string;
  /** A fresh corrupted copy of the image. */
  apply(): Uint8Array;
}

export interface MutateOptions {
  /** Seed of the random byte flips. */
  seed?: number;
  /** How many random byte-flip mutations to add. */
  flips?: number;
}

/** Edits a private copy of the image in place, or returns a replacement (a grown or cut file). */
export type MutateFn = (m: Uint8Array) => Uint8Array | void;

export type AddMutation = (kind: MutationKind, name: string, description: string, fn: MutateFn) => void;

export interface MutationContext {
  /** The pristine image; families read it, never write it (apply() works on copies). */
  img: Uint8Array;
  lay: ImageLayout;
  add: AddMutation;
  opts: MutateOptions;
  /** First cluster-aligned offset at or after the end of the file. */
  eofCluster: number;
  /** Largest power of two a 56-bit host offset can name. */
  far: number;
  /** The first L1 entry that names an L2 table. */
  firstL1?: TableEntryRef;
  /** The first normal (uncompressed) data cluster and the first compressed one, in L2 order. */
  normal?: DataClusterRef;
  compressed?: DataClusterRef;
}

export const U32_MAX = 0xffffffff;
export const U64_MAX = 0xffff_ffff_ffff_ffffn;

export type FieldWidth = 1 | 2 | 4 | 8;

/**
 * The context for one image, with an `add` that collects into `out`.
 *
 * `add` skips a name already used by ANY family (the kind is not part of the
 * key): that is how the list has always been built, and the hostile suite's
 * case titles depend on it. It means, for instance, that reftable entries get
 * no `first->past-eof` of their own because the L1 family took the name.
 */
export function makeContext(input: Uint8Array, opts: MutateOptions, out: Mutation[]): MutationContext {
  // A private plain Uint8Array: Buffer.slice would share memory and let one mutation leak into the next.
  const img = new Uint8Array(input);
  const lay = analyzeImage(img);
  const names = new Set<string>();
  const add: AddMutation = (kind, name, description, fn) => {
    if (names.has(name)) return;
    names.add(name);
    out.push({
      name: `${kind}:${name}`,
      kind,
      description,
      apply: () => {
        const copy = img.slice();
        return fn(copy) ?? copy;
      },
    });
  };
  return {
    img,
    lay,
    add,
    opts,
    eofCluster: alignUp(lay.fileSize, lay.clusterSize),
    far: 2 ** 55,
    firstL1: lay.l1Entries.find((e) => entryOffset(e.hi, e.lo) !== 0),
    normal: lay.dataClusters.find((d) => !d.compressed),
    compressed: lay.dataClusters.find((d) => d.compressed),
  };
}

/** Writes value (number or bigint, any 64-bit pattern) big-endian into a field. */
export function putField(img: Uint8Array, pos: number, width: FieldWidth, value: number | bigint): void {
  const v = viewOf(img);
  const big = typeof value === 'bigint' ? value : BigInt(value);
  const mask = (1n << BigInt(width * 8)) - 1n;
  const x = big & mask;
  if (width === 1) v.setUint8(pos, Number(x));
  else if (width === 2) v.setUint16(pos, Number(x));
  else if (width === 4) v.setUint32(pos, Number(x));
  else v.setBigUint64(pos, x);
}

/** Writes an 8-byte table entry from its two big-endian halves. */
export function putEntry(img: Uint8Array, pos: number, hi: number, lo: number): void {
  const v = viewOf(img);
  v.setUint32(pos, hi >>> 0);
  v.setUint32(pos + 4, lo >>> 0);
}

/** hi/lo halves of an entry with its host offset replaced and every flag bit kept. */
export function withOffset(hi: number, lo: number, offset: number): [number, number] {
  const keepHi = hi & ~OFFSET_MASK_HI;
  const keepLo = lo & ~OFFSET_MASK_LO;
  const ohi = Math.floor(offset / 2 ** 32) & OFFSET_MASK_HI;
  const olo = (offset >>> 0) & OFFSET_MASK_LO;
  return [(keepHi | ohi) >>> 0, (keepLo | olo) >>> 0];
}
