/**
 * Seeded byte flips: `flips` mutations of 1..8 random byte xors each, three
 * in four inside metadata (where they matter most), the rest anywhere. The
 * seed fixes every position and value, so a flip case replays by name.
 */
import { prng } from '../prng.js';
import { metadataRanges } from './analyze.js';
import type { MutationContext } from './common.js';

export function flipMutations(ctx: MutationContext): void {
  const { lay } = ctx;
  const seed = ctx.opts.seed ?? 1;
  const flips = ctx.opts.flips ?? 16;
  const rand = prng(seed);
  const metaRanges = metadataRanges(lay);
  for (let k = 0; k < flips; k++) {
    const inMeta = k % 4 !== 3;
    const count = 1 + Math.floor(rand() * 8);
    const spots: [number, number][] = [];
    for (let i = 0; i < count; i++) {
      let at: number;
      if (inMeta) {
        const [s, e] = metaRanges[Math.floor(rand() * metaRanges.length)];
        at = s + Math.floor(rand() * (e - s));
      } else {
        at = Math.floor(rand() * lay.fileSize);
      }
      spots.push([at, 1 + Math.floor(rand() * 255)]);
    }
    const where = inMeta ? 'metadata' : 'anywhere';
    ctx.add('flip', `seed${seed}-${k}`, `${count} random byte xors (${where}): ${spots.map(([a, x]) => `${a}^${x}`).join(' ')}`, (m) => {
      for (const [a, x] of spots) if (a < m.length) m[a] ^= x;
    });
  }
}
