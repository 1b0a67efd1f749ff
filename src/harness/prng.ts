/**
 * The harness's one seeded random source. Byte flips of the hostile-image
 * mutator, sampled crash images and the benchmark data all draw from it, so
 * a seed names the same bytes on every platform and Node version (Math.random
 * cannot be seeded, and fast-check's generators are tied to its runner).
 */

/** mulberry32: a 32-bit state, full period 2^32, returns values in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
