/**
 * Every corpus entry replays as it says: entries of ours run clean now
 * (regressions), entries documenting external bugs still show them; and
 * our engine repairs every hostile-image entry's patched image.
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { listEntries, readEntry } from '../src/harness/corpus.js';
import { replayEntry } from '../src/harness/replay.js';

const corpus = path.join(import.meta.dirname, '..', 'corpus');
const entries = listEntries(corpus);

describe('corpus replay', () => {
  it('has entries', () => {
    expect(entries.length).toBeGreaterThan(0);
  });
  for (const dir of entries) {
    it(`replays ${path.basename(dir)}`, async () => {
      const r = await replayEntry(dir);
      const got = r.failure ? `${r.failure.oracle}: ${r.failure.message}` : 'clean';
      expect(r.passed, `${r.id} [${r.target}] expected ${r.expected}; got ${got}\n  ops: ${r.entry.ops.join(' ; ')}`).toBe(true);
    });
  }
  // Whoever's repair a hostile-image entry documents, ours must leave that patched image clean and reading back.
  for (const dir of entries.filter((d) => readEntry(d).hostile)) {
    it(`our engine repairs ${path.basename(dir)}`, async () => {
      const r = await replayEntry(dir, { target: 'ts' });
      expect(r.failure, r.failure && `${r.failure.oracle}: ${r.failure.message}`).toBeUndefined();
    });
  }
});
