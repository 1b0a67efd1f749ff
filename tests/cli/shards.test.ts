/**
 * Scale-out: one campaign split into three `fuzz --shard i/3` processes, their
 * corpora merged, finds what the campaign finds in one process with the same
 * seed: the same runs, ops and failures in total, and the same failure
 * signatures in the corpus. The target is a deliberately wrong cmd: adapter
 * (fixtures/drops-write-zeroes.mjs: our engine, with `write -z` ignored), so
 * there is something to find; seed 7 with 24 runs finds that bug twice, in two
 * different chunks. Runs are budgeted (--runs), never timed.
 */
import { execaNode } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusSignatures, listEntries } from '../../src/harness/corpus.js';
import { scratchDir, ensureBuilt } from './helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.join(root, 'dist/cli/main.js');
const dir = scratchDir('shards');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const target = `cmd:node ${path.join(root, 'tests/cli/fixtures/drops-write-zeroes.mjs')}`;
const campaign = ['--target', target, '--seed', '7', '--runs', '24', '--max-ops', '1', '--json'];

interface Summary {
  runs: number;
  shrinkRuns: number;
  ops: number;
  failures: number;
  corpus: string[];
}

async function fuzz(args: string[]): Promise<Summary> {
  const r = await execaNode(bin, ['fuzz', ...campaign, ...args], { cwd: dir, reject: false });
  // 1: failures found, which this target is built to give; anything else is a problem.
  if (r.exitCode !== 1 && r.exitCode !== 0) throw new Error(`fuzz ${args.join(' ')} exited ${r.exitCode}: ${r.stderr}`);
  return JSON.parse(String(r.stdout).trim().split('\n').pop()!) as Summary;
}

// The bin and the adapter run compiled code.
beforeAll(ensureBuilt);

const sigs = (corpus: string) => [...corpusSignatures(corpus).keys()].sort();

describe('sharded campaigns', () => {
  it('three shards plus merge find what one campaign with the same seed finds', async () => {
    const [one, ...shards] = await Promise.all([
      fuzz(['--corpus', path.join(dir, 'one')]),
      ...[0, 1, 2].map((i) => fuzz(['--shard', `${i}/3`, '--corpus', path.join(dir, `shard-${i}`)])),
    ]);
    expect(one!.failures).toBeGreaterThanOrEqual(1);
    const total = (k: keyof Summary) => shards.reduce((a, s) => a + (s[k] as number), 0);
    expect({ runs: total('runs'), shrinkRuns: total('shrinkRuns'), ops: total('ops'), failures: total('failures') }).toEqual({
      runs: one!.runs,
      shrinkRuns: one!.shrinkRuns,
      ops: one!.ops,
      failures: one!.failures,
    });

    const merged = path.join(dir, 'merged');
    const shardDirs = [0, 1, 2].map((i) => path.join(dir, `shard-${i}`)).filter((d) => fs.existsSync(d));
    const m = await execaNode(bin, ['merge', merged, ...shardDirs], { cwd: dir, reject: false });
    expect(m.stderr).toBe('');
    expect(m.exitCode).toBe(0);
    expect(sigs(merged)).toEqual(sigs(path.join(dir, 'one')));
    expect(sigs(merged).length).toBeGreaterThanOrEqual(1);
    expect(listEntries(merged).length).toBe(listEntries(path.join(dir, 'one')).length);

    // Merging again changes nothing.
    const before = listEntries(merged);
    const again = await execaNode(bin, ['merge', '--json', merged, ...shardDirs], { cwd: dir, reject: false });
    expect(again.exitCode).toBe(0);
    expect(JSON.parse(String(again.stdout).trim().split('\n').pop()!)).toMatchObject({ added: [], removed: [] });
    expect(listEntries(merged)).toEqual(before);
  });
});
