/**
 * Turning op seeds into concrete ranges for the image as the model sees it
 * now. Offsets and lengths are biased to where bugs live: cluster and
 * subcluster edges and a sector either side, L2 table spans, refcount block
 * spans, the last partial cluster, the whole disk. No fast-check here: the
 * arbitraries that draw seeds live in ../arbitraries.ts.
 */
import { SECTOR } from '../../model/layer.js';
import type { DiskModel } from '../../model/disk.js';
import type { Anchor, LenUnit, OpSeed } from './types.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Keep runs fast: virtual sizes stay at or below this. */
export const MAX_VIRTUAL_SIZE = 64 * MiB;
/** Data-carrying writes stay at or below this many clusters (and bytes). */
export const MAX_WRITE_CLUSTERS = 4;
export const MAX_WRITE_BYTES = 8 * MiB;

const L2_ENTRY_BYTES = 8;
const EXTL2_ENTRY_BYTES = 16;
const SUBCLUSTERS = 32;

export const SNAPSHOT_NAMES = ['s0', 's1', 's2'];

export function l2Span(clusterSize: number, extendedL2: boolean): number {
  return (clusterSize / (extendedL2 ? EXTL2_ENTRY_BYTES : L2_ENTRY_BYTES)) * clusterSize;
}

/** Guest bytes whose host clusters one refcount block covers, if the guest maps linearly. */
export function refblockSpan(clusterSize: number, refcountBits: number): number {
  return ((clusterSize * 8) / refcountBits) * clusterSize;
}

export const clamp = (x: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, x));

export function unitOf(anchor: Anchor | LenUnit, model: DiskModel): number {
  const cs = model.meta.clusterSize;
  const sub = model.meta.extendedL2 ? cs / SUBCLUSTERS : cs;
  switch (anchor) {
    case 'cluster':
      return cs;
    case 'subcluster':
      return sub;
    case 'l2':
      return l2Span(cs, model.meta.extendedL2);
    case 'refblock':
      return refblockSpan(cs, model.meta.refcountBits);
    default:
      return SECTOR;
  }
}

export function resolveRange(seed: OpSeed, model: DiskModel, cap: number): { off: number; len: number } {
  const size = model.size;
  let len: number;
  switch (seed.unit) {
    case 'sector':
      len = seed.count * SECTOR;
      break;
    case 'whole':
      len = size;
      break;
    case 'toend':
      len = size; // fixed below, once the offset is known
      break;
    default:
      len = seed.count * unitOf(seed.unit, model) + seed.lenDelta * SECTOR;
  }
  len = clamp(len, SECTOR, Math.min(size, cap));
  let off: number;
  if (seed.unit === 'whole') off = 0;
  else if (seed.anchor === 'end') off = size - len + seed.delta * SECTOR;
  else if (seed.anchor === 'start') off = seed.delta * SECTOR;
  else {
    const unit = unitOf(seed.anchor, model);
    const n = Math.max(1, Math.ceil(size / unit));
    // Boundary `i` of the anchor grid; a range straddles it when len > |delta|.
    const i = Math.floor((seed.frac / 1_000_001) * n);
    const straddle = seed.anchor === 'l2' || seed.anchor === 'refblock' ? Math.floor(len / 2 / SECTOR) * SECTOR : 0;
    off = i * unit + seed.delta * SECTOR - straddle;
  }
  off = clamp(off, 0, size - SECTOR);
  if (seed.unit === 'toend') len = Math.min(size - off, cap);
  len = clamp(len, SECTOR, size - off);
  return { off, len };
}
