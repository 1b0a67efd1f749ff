/**
 * A group of requests in flight at once (the `aio` op): the model accepts any
 * outcome some serial order of the group allows. A sector covered by one
 * request has that request's result; a sector covered by several holds the
 * result of whichever of them ran last, so each of their results is a
 * candidate. Writes and write-zeroes replace a sector whatever it held, so a
 * request's result at a sector does not depend on the order (unlike discard,
 * whose effect depends on cluster state; groups have no discards).
 */
import { SECTOR } from './layer.js';
import type { DiskModel } from './disk.js';
import type { Expectation } from './types.js';

/** A request of a group: `stamp` is the data a write leaves (0 for write-zeroes). */
export interface GroupRequest {
  off: number;
  len: number;
  stamp: number;
  zero: boolean;
}

export function expectGroup(m: DiskModel, reqs: readonly GroupRequest[]): Expectation {
  for (const r of reqs) {
    const e = r.zero ? m.expectWriteZeroes(r.off, r.len) : m.expectWrite(r.off, r.len);
    if (e.verdict !== 'ok') return e;
  }
  return { verdict: 'ok' };
}

/** Applies the group in the order listed (one serial order). */
export function applyGroup(m: DiskModel, reqs: readonly GroupRequest[]): void {
  for (const r of reqs) {
    if (r.zero) m.writeZeroes(r.off, r.len);
    else m.write(r.off, r.len, r.stamp);
  }
}

/** Sectors where serial orders differ, with the stamps (0: zeros) they may hold. */
export function groupCandidates(reqs: readonly GroupRequest[]): Map<number, number[]> {
  const by = new Map<number, Set<number>>();
  for (const r of reqs) {
    for (let s = r.off / SECTOR; s < (r.off + r.len) / SECTOR; s++) {
      let set = by.get(s);
      if (!set) by.set(s, (set = new Set()));
      set.add(r.zero ? 0 : r.stamp);
    }
  }
  const out = new Map<number, number[]>();
  for (const [s, set] of by) if (set.size > 1) out.set(s, [...set]);
  return out;
}

/** Settles one sector on the candidate the implementation chose. */
export function settleSector(m: DiskModel, sector: number, stamp: number): void {
  if (stamp === 0) m.active.setZero(sector);
  else m.active.setStamp(sector, stamp);
}
