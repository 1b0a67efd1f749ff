/**
 * The built CLI on a sample of hostile images: `info`, `convert -O raw` and
 * `check` must end within seconds with one of their documented exit codes
 * and a message, never a stack trace on stderr. Runs `node dist/cli/main.js`
 * (the bin users run), so it needs `npm run build` first.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, test } from 'vitest';
import { HOSTILE_RECIPES } from '../../src/harness/hostile-images.js';
import { listMutations, type Mutation } from '../../src/harness/mutate/index.js';
import { ROOT } from './runner.js';

const BIN = join(ROOT, 'dist', 'cli', 'main.js');
const TIMEOUT_MS = 20_000;
/** A V8 stack frame line: "    at fn (file:line:col)" or "    at file:line:col". */
const STACK_LINE = /^\s+at .*:\d+:\d+\)?$/m;

const ALLOWED: Record<string, number[]> = {
  info: [0, 1],
  convert: [0, 1],
  check: [0, 1, 2, 3, 63],
};

const dir = mkdtempSync(join(tmpdir(), 'qcow2-hostile-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The first mutation of each kind, plus the header ones most likely to trip size handling. */
function sample(ms: Mutation[]): Mutation[] {
  const perKind = new Map<string, number>();
  const keep = new Set(['header:size=u64-max', 'header:l1Size=u32-max', 'header:clusterBits=63', 'header:nbSnapshots=u32-max', 'header:incompatibleFeatures=unknown-bit5']);
  return ms.filter((m) => {
    const n = perKind.get(m.kind) ?? 0;
    perKind.set(m.kind, n + 1);
    return n < 1 || keep.has(m.name);
  });
}

// One seed image with snapshots and compressed clusters: each case costs three node start-ups.
const recipes = HOSTILE_RECIPES.filter((r) => r.name === 'v3-64k-compressed-snaps');
const cases: { image: string; m: Mutation; path: string }[] = [];
for (const r of recipes) {
  const seed = await r.build(dir);
  for (const m of sample(listMutations(new Uint8Array(readFileSync(seed)), { seed: 3, flips: 4 }))) {
    const path = join(dir, `${r.name}--${m.name.replace(/[^a-z0-9=.-]+/gi, '_')}.qcow2`);
    writeFileSync(path, m.apply());
    cases.push({ image: r.name, m, path });
  }
}

async function runBin(args: string[]): Promise<{ rc: number | undefined; stderr: string; timedOut: boolean }> {
  const r = await execa(process.execPath, [BIN, ...args], { reject: false, timeout: TIMEOUT_MS, cwd: dir, stdout: 'ignore' });
  return { rc: r.exitCode, stderr: String(r.stderr ?? ''), timedOut: r.timedOut };
}

describe('CLI on hostile images', () => {
  test('the CLI is built (npm run build)', () => expect(existsSync(BIN), BIN).toBe(true));

  test.concurrent.each(cases.map((c) => [`${c.image} ${c.m.name}`, c] as const))('%s', async (_, c) => {
    if (!existsSync(BIN)) throw new Error(`${BIN} missing: run npm run build`);
    const out = `${c.path}.raw`;
    const runs = {
      info: await runBin(['info', c.path]),
      convert: await runBin(['convert', '-O', 'raw', c.path, out]),
      check: await runBin(['check', '--output', 'json', c.path]),
    };
    rmSync(out, { force: true });
    for (const [cmd, r] of Object.entries(runs)) {
      expect(r.timedOut, `${cmd} did not finish within ${TIMEOUT_MS} ms`).toBe(false);
      expect(ALLOWED[cmd], `${cmd} exit code ${r.rc}; stderr:\n${r.stderr}`).toContain(r.rc);
      expect(r.stderr, `${cmd} printed a stack trace`).not.toMatch(STACK_LINE);
      if (r.rc === 1) expect(r.stderr.trim().length, `${cmd} failed without a message`).toBeGreaterThan(0);
    }
  });
});
