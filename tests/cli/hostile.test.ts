/**
 * Issue 3, done-means 3, at the command line: damaged and hostile images
 * (the harness's mutation generator applied to real QEMU-made images) are
 * answered by `info`, `check` and `convert` with a documented exit code and
 * one-line errors — never an internal error, a stack trace, a hang or a
 * runaway allocation — and convert leaves no half-written output.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HOSTILE_RECIPES } from '../../src/harness/hostile-images.js';
import { listMutations } from '../../src/harness/mutate/index.js';
import { ours, scratchDir } from './helpers.js';

const dir = scratchDir('hostile');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Per command: a generous bound for a 2-core CI machine; the hostile suite's job is to catch hangs. */
const SECONDS_PER_COMMAND = 10;
/** Resident memory may not grow past this over the run (a huge allocation would show). */
const RSS_GROWTH_LIMIT = 400 * 1024 * 1024;

/** Every mutation of the small-cluster image (many tables, zstd), every 2nd of the others: a bounded, covering subset. */
function sampled(recipe: string, i: number): boolean {
  return recipe === 'v3-512b-rc8-zstd' || i % 2 === 0;
}

// A file cut short of the magic probes as raw, which has no checks (63), as with qemu-img.
const allowed: Record<string, number[]> = { info: [0, 1], check: [0, 1, 2, 3, 63], convert: [0, 1] };

describe('info, check and convert answer hostile images cleanly', () => {
  for (const recipe of HOSTILE_RECIPES) {
    it(recipe.name, async () => {
      const sub = path.join(dir, recipe.name);
      fs.mkdirSync(sub);
      const seed = await recipe.build(sub);
      const mutations = listMutations(fs.readFileSync(seed), { seed: 7, flips: 8 }).filter((_, i) => sampled(recipe.name, i));
      const target = path.join(sub, 'hostile.qcow2');
      const out = path.join(sub, 'out.raw');
      const problems: string[] = [];
      const rss0 = process.memoryUsage().rss;
      for (const m of mutations) {
        fs.writeFileSync(target, m.apply());
        const runs: [string, string[]][] = [
          ['info', ['info', '--output=json', target]],
          ['check', ['check', '--output=json', target]],
          ['convert', ['convert', '-O', 'raw', target, out]],
        ];
        for (const [name, argv] of runs) {
          const t0 = performance.now();
          const r = await ours(sub, argv);
          const secs = (performance.now() - t0) / 1000;
          const where = `${m.name} (${m.description}): ${name}`;
          if (!allowed[name]!.includes(r.rc)) problems.push(`${where}: exit ${r.rc}: ${r.stderr.trim()}`);
          if (/internal error|^\s+at /m.test(r.stderr)) problems.push(`${where}: ${r.stderr.trim()}`);
          if (name !== 'check' && r.rc !== 0 && !/^qcow2-harness: [^\n]+\n$/.test(r.stderr)) problems.push(`${where}: not one line: ${JSON.stringify(r.stderr)}`);
          if (secs > SECONDS_PER_COMMAND) problems.push(`${where}: took ${secs.toFixed(1)} s`);
        }
        if (fs.existsSync(`${out}.tmp`)) problems.push(`${m.name}: convert left ${out}.tmp`);
        fs.rmSync(out, { force: true });
        const grown = process.memoryUsage().rss - rss0;
        if (grown > RSS_GROWTH_LIMIT) problems.push(`${m.name}: resident memory grew by ${(grown / 2 ** 20).toFixed(0)} MiB`);
      }
      expect(problems).toEqual([]);
      expect(mutations.length).toBeGreaterThan(20);
    });
  }
});
