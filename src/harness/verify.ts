/** Compares guest bytes read from a target with what the model prescribes. */
import type { DiskModel } from '../model/disk.js';
import { ANY, SECTOR, type Layer } from '../model/layer.js';
import { describeSector, describeStamp, fillSector } from './data.js';

const ZEROS = Buffer.alloc(1024 * 1024);

export interface Mismatch {
  offset: number;
  expected: string;
  actual: string;
  /** How many sectors of the range mismatched. */
  count: number;
}

/**
 * Checks `bytes` (read from guest offset `off`) against `layer`. Runs of
 * expected-zero sectors are compared in one native call, so verifying a large
 * sparse disk stays cheap.
 */
export function verifyRange(model: DiskModel, layer: Layer, off: number, bytes: Uint8Array): Mismatch | undefined {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const scratch = Buffer.alloc(SECTOR);
  const first = off / SECTOR;
  const n = bytes.length / SECTOR;
  let bad: Mismatch | undefined;
  const fail = (i: number, stamp: number) => {
    if (!bad) bad = { offset: (first + i) * SECTOR, expected: describeStamp(stamp), actual: describeSector(bytes, i * SECTOR), count: 0 };
    bad.count++;
  };
  let i = 0;
  while (i < n) {
    const stamp = model.stampAt(layer, first + i);
    if (stamp === 0) {
      let j = i + 1;
      while (j < n && j - i < ZEROS.length / SECTOR && model.stampAt(layer, first + j) === 0) j++;
      const len = (j - i) * SECTOR;
      if (buf.compare(ZEROS, 0, len, i * SECTOR, i * SECTOR + len) !== 0) {
        for (let k = i; k < j; k++) {
          if (buf.compare(ZEROS, 0, SECTOR, k * SECTOR, (k + 1) * SECTOR) !== 0) fail(k, 0);
        }
      }
      i = j;
      continue;
    }
    if (stamp !== ANY) {
      fillSector(scratch, 0, stamp, first + i);
      if (buf.compare(scratch, 0, SECTOR, i * SECTOR, (i + 1) * SECTOR) !== 0) fail(i, stamp);
    }
    i++;
  }
  return bad;
}

export function describeMismatch(what: string, m: Mismatch): string {
  return `${what}: at guest offset ${m.offset} expected ${m.expected}, read ${m.actual}` + (m.count > 1 ? ` (${m.count} sectors differ)` : '');
}

/** Merges [off, len) ranges into a sorted, disjoint list. */
export function mergeRanges(ranges: [number, number][]): [number, number][] {
  const sorted = ranges.filter(([, l]) => l > 0).sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const [o, l] of sorted) {
    const last = out[out.length - 1];
    if (last && o <= last[0] + last[1]) last[1] = Math.max(last[1], o + l - last[0]);
    else out.push([o, l]);
  }
  return out;
}
