/**
 * Byte helpers shared by the tests: where two buffers first differ, seeded
 * pseudo-random numbers, and sector-stamped data.
 */

/** Index of the first differing byte, the shorter length when one is a prefix of the other, -1 when equal. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/**
 * The classic C-library LCG (x = x * 1103515245 + 12345 mod 2^32): a fixed
 * seed gives the same sequence on every machine, which is all a test needs.
 */
export class Lcg {
  private s: number;

  constructor(seed: number) {
    this.s = seed >>> 0;
  }

  /** The next 32-bit state. */
  next(): number {
    this.s = (Math.imul(this.s, 1103515245) + 12345) >>> 0;
    return this.s;
  }

  /** Uniform in [0, 1). */
  float(): number {
    return this.next() / 2 ** 32;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }

  /** The top byte of the next state (the best-mixed bits of an LCG). */
  byte(): number {
    return this.next() >>> 24;
  }
}

/**
 * Sector-unique data: every 4-byte word carries the op number and its guest
 * sector, so a misplaced or stale sector can never pass for the right one.
 */
export function stamp(op: number, offset: number, length: number): Uint8Array {
  const d = new Uint8Array(length);
  const v = new DataView(d.buffer);
  for (let p = 0; p + 4 <= length; p += 4) v.setUint32(p, ((op << 20) ^ Math.floor((offset + p) / 512)) >>> 0);
  d.fill(op & 0xff, length - (length % 4));
  return d;
}
