/**
 * A group of requests in flight at once (the `aio` op): the model accepts any
 * outcome some serial order of the group allows. A sector covered by one
 * request has that request's result; a sector covered by several holds the
 * result of whichever of them ran last, so each of their results is a
 * candidate. Writes and write-zeroes replace a sector whatever it held, so a
 * request's result at a sector does not depend on the order. A discard is a
 * write-zeroes of the whole clusters it covers (DiskModel.discard: the driver
 * ignores partial clusters), so the same holds for it; the caller turns it
 * into that.
 *
 * A read in the group sees, at each sector, the state after some prefix of a
 * serial order: the sector's value before the group, or the result of any
 * request that covers it. The order may differ from sector to sector (QEMU
 * splits requests by cluster and runs the pieces as they are ready).
 */
import { ANY, SECTOR } from './layer.js';
import type { DiskModel } from './disk.js';
import type { Expectation } from './types.js';

/**
 * A request of a group: `stamp` is the data a write leaves (0 for zeroes).
 * `zero`: write-zeroes (or a discard's whole clusters); `read`: reads only.
 */
export interface GroupRequest {
  off: number;
  len: number;
  stamp: number;
  zero: boolean;
  read?: true;
}

export function expectGroup(m: DiskModel, reqs: readonly GroupRequest[]): Expectation {
  for (const r of reqs) {
    const e = r.read || !r.zero ? m.expectWrite(r.off, r.len) : m.expectWriteZeroes(r.off, r.len);
    if (e.verdict !== 'ok') return e;
  }
  return { verdict: 'ok' };
}

/** Applies the group in the order listed (one serial order). */
export function applyGroup(m: DiskModel, reqs: readonly GroupRequest[]): void {
  for (const r of reqs) {
    if (r.read) continue;
    if (r.zero) m.writeZeroes(r.off, r.len);
    else m.write(r.off, r.len, r.stamp);
  }
}

const sectorsOf = (r: GroupRequest) => Array.from({ length: r.len / SECTOR }, (_, i) => r.off / SECTOR + i);

/** Per sector, the results of the group's writing requests that cover it. */
function results(reqs: readonly GroupRequest[]): Map<number, Set<number>> {
  const by = new Map<number, Set<number>>();
  for (const r of reqs) {
    if (r.read) continue;
    for (const s of sectorsOf(r)) {
      let set = by.get(s);
      if (!set) by.set(s, (set = new Set()));
      set.add(r.zero ? 0 : r.stamp);
    }
  }
  return by;
}

/** Sectors where serial orders differ, with the stamps (0: zeros) they may hold. */
export function groupCandidates(reqs: readonly GroupRequest[]): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (const [s, set] of results(reqs)) if (set.size > 1) out.set(s, [...set]);
  return out;
}

/**
 * For each read of the group, in order: per sector of its range, the values
 * it may return (null: anything, the sector was unspecified before the
 * group). Call before the group is applied to the model.
 */
export function readCandidates(m: DiskModel, reqs: readonly GroupRequest[]): (number[] | null)[][] {
  const by = results(reqs);
  return reqs
    .filter((r) => r.read)
    .map((r) =>
      sectorsOf(r).map((s) => {
        const before = m.stampAt(m.active, s);
        if (before === ANY) return null;
        return [...new Set([before, ...(by.get(s) ?? [])])];
      }),
    );
}

/** Settles one sector on the candidate the implementation chose. */
export function settleSector(m: DiskModel, sector: number, stamp: number): void {
  if (stamp === 0) m.active.setZero(sector);
  else m.active.setStamp(sector, stamp);
}
