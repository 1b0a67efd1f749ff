/**
 * Entry access on cached L2 tables, standard (8-byte) and extended (16-byte
 * entries whose second word is the subcluster bitmap: allocation bits in the
 * low 32 bits, zero bits in the high 32 bits — qcow2.txt "Extended L2 Entries").
 */
import type { CachedTable } from './cache.js';
import { L2_ENTRY_SIZE, L2_EXTENDED_ENTRY_SIZE } from './format/constants.js';
import { ClusterType, clusterTypeOf, entryOffset, isCopied } from './format/entries.js';

export interface L2Entry {
  hi: number;
  lo: number;
  /** Subcluster zero bits (bitmap bits 32..63); 0 without extended L2. */
  zero: number;
  /** Subcluster allocation bits (bitmap bits 0..31); 0 without extended L2. */
  alloc: number;
}

export const ALL_SUBCLUSTERS = 0xffffffff;

export class L2Layout {
  readonly entrySize: number;
  readonly entries: number;
  constructor(
    readonly clusterSize: number,
    readonly extended: boolean,
    /** An external data file makes offset 0 a valid host offset (see type()). */
    readonly externalData = false,
  ) {
    // v2 images take bit 0 as the zero flag too (QEMU's qcow2_get_cluster_type); reading one is refused.
    this.entrySize = extended ? L2_EXTENDED_ENTRY_SIZE : L2_ENTRY_SIZE;
    this.entries = clusterSize / this.entrySize;
  }

  get(t: CachedTable, i: number): L2Entry {
    const p = i * this.entrySize;
    const v = t.view;
    if (!this.extended) return { hi: v.getUint32(p), lo: v.getUint32(p + 4), zero: 0, alloc: 0 };
    return { hi: v.getUint32(p), lo: v.getUint32(p + 4), zero: v.getUint32(p + 8), alloc: v.getUint32(p + 12) };
  }

  set(t: CachedTable, i: number, e: L2Entry): void {
    const p = i * this.entrySize;
    const v = t.view;
    v.setUint32(p, e.hi >>> 0);
    v.setUint32(p + 4, e.lo >>> 0);
    if (this.extended) {
      v.setUint32(p + 8, e.zero >>> 0);
      v.setUint32(p + 12, e.alloc >>> 0);
    }
    t.dirty = true;
  }

  /** QEMU's qcow2_get_cluster_type: the zero flag means nothing with extended L2. */
  type(e: L2Entry): ClusterType {
    const t = clusterTypeOf(e.hi, e.lo, !this.extended);
    // qcow2.txt: with an external data file, offset 0 with OFLAG_COPIED is a data cluster at host offset 0
    // (QEMU's qcow2_get_cluster_type: data file clusters always have refcount 1).
    if (t === ClusterType.Unallocated && this.externalData && isCopied(e.hi)) return ClusterType.Normal;
    return t;
  }

  offset(e: L2Entry): number {
    return entryOffset(e.hi, e.lo);
  }
}

export function sameEntry(a: L2Entry, b: L2Entry): boolean {
  return a.hi === b.hi && a.lo === b.lo && a.zero === b.zero && a.alloc === b.alloc;
}

/** Bitmask of subclusters [first, first+count). */
export function subclusterMask(first: number, count: number): number {
  if (count <= 0) return 0;
  if (count >= 32) return ALL_SUBCLUSTERS;
  return (((1 << count) - 1) << first) >>> 0;
}

export const UNALLOCATED_ENTRY: L2Entry = { hi: 0, lo: 0, zero: 0, alloc: 0 };
