/**
 * `qcow2-harness merge`: one entry per failure signature, the smallest trace
 * winning, whatever order the shards come in; a second merge changes nothing;
 * a broken entry stops the merge before DEST changes.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { corpusSignatures, listEntries, writeEntry, type ExternalExpectation } from '../../src/harness/corpus.js';
import { parseOp } from '../../src/harness/ops.js';
import { ours, scratchDir } from './helpers.js';
import { plainConfig } from '../support/trace.js';

const root = scratchDir('merge');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const config = plainConfig();

/** An entry whose failure message is `BUG at offset X` (numbers do not count in a signature, names do). */
function entry(corpus: string, bug: string, ops: string[], o: { offset?: number; external?: ExternalExpectation } = {}): string {
  return writeEntry(path.join(root, corpus), {
    target: 'ts',
    config,
    ops: ops.map(parseOp),
    oracle: 'read',
    message: `${bug} at offset ${o.offset ?? ops.length * 512}`,
    external: o.external,
    repro: '#!/bin/sh\nexit 1\n',
  }).id;
}

/** Every file under dir with its content hash: what a second merge must leave as it was. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[path.relative(dir, p)] = createHash('sha256').update(fs.readFileSync(p)).digest('hex');
    }
  };
  walk(dir);
  return out;
}

const ids = (dir: string) => listEntries(dir).map((d) => path.basename(d));

describe('merge', () => {
  const a1 = entry('a', 'alpha', ['write 0 512', 'write 512 512', 'flush']);
  const a2 = entry('a', 'beta', ['write 0 4096']);
  const b1 = entry('b', 'alpha', ['write 0 512', 'flush']);
  const b3 = entry('b', 'gamma', ['discard 0 512', 'flush']);
  const c1 = entry('c', 'alpha', ['write 65536 512', 'write 0 512', 'flush'], { offset: 9 });

  it('keeps one entry per signature, the smallest trace', async () => {
    const r = await ours(root, ['merge', 'dest', 'a', 'b', 'c']);
    expect(r.stderr).toBe('');
    expect(r.rc).toBe(0);
    expect(r.stdout).toBe('merge: 5 entries read, 3 signatures in dest: 3 added, 0 removed, 0 unchanged\n');
    expect(ids(path.join(root, 'dest'))).toEqual([a2, b1, b3].sort());
    expect([a1, c1]).not.toContain(b1);
    // Whole entries, no temporaries left behind.
    expect(fs.readdirSync(path.join(root, 'dest')).sort()).toEqual([a2, b1, b3].sort());
    expect(fs.readdirSync(path.join(root, 'dest', b1)).sort()).toEqual(['repro.sh', 'trace.json']);
    expect(fs.readFileSync(path.join(root, 'dest', b1, 'trace.json'), 'utf8')).toBe(fs.readFileSync(path.join(root, 'b', b1, 'trace.json'), 'utf8'));
  });

  it('a second merge of the same inputs changes nothing', async () => {
    const before = snapshot(path.join(root, 'dest'));
    const r = await ours(root, ['merge', '--json', 'dest', 'a', 'b', 'c']);
    expect(r.rc).toBe(0);
    const report = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(report).toEqual({ read: 8, signatures: 3, added: [], removed: [], unchanged: [a2, b1, b3].sort() });
    expect(snapshot(path.join(root, 'dest'))).toEqual(before);
  });

  it('does not depend on the order of the shards', async () => {
    expect((await ours(root, ['merge', 'dest2', 'c', 'b', 'a'])).rc).toBe(0);
    expect(snapshot(path.join(root, 'dest2'))).toEqual(snapshot(path.join(root, 'dest')));
  });

  it('replaces a DEST entry by a smaller trace of its signature; an external-bug entry is kept over a smaller finding', async () => {
    const big = entry('d', 'alpha', ['write 0 512', 'write 512 512', 'write 1024 512', 'flush']);
    const ext: ExternalExpectation = { project: 'qemu 7.2', description: 'documented', oracle: 'read', messageIncludes: 'beta' };
    const documented = entry('e', 'beta', ['write 0 4096', 'flush'], { external: ext, offset: 512 });
    const r = await ours(root, ['merge', '--json', 'd', 'a', 'e']);
    expect(r.rc).toBe(0);
    const report = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(report.removed).toEqual([big]);
    expect(ids(path.join(root, 'd'))).toEqual([a1, documented].sort());
    expect([...corpusSignatures(path.join(root, 'd')).keys()].sort()).toEqual(['ts read at end: alpha at offset #', 'ts read at end: beta at offset #']);
  });

  it('a broken entry stops the merge with DEST untouched', async () => {
    const broken = path.join(root, 'f', 'broken');
    fs.mkdirSync(broken, { recursive: true });
    fs.writeFileSync(path.join(broken, 'trace.json'), '{"formatVersion": 1, "id": ');
    const before = snapshot(path.join(root, 'dest'));
    const r = await ours(root, ['merge', 'dest', 'a', 'f']);
    expect(r.rc).toBe(1);
    expect(r.stderr).toMatch(/^qcow2-harness: .*broken\/trace\.json: not JSON .*; nothing merged\n$/);
    expect(snapshot(path.join(root, 'dest'))).toEqual(before);
  });

  it('usage errors exit 2 with one line and the --help hint', async () => {
    expect((await ours(root, ['merge', '--help'])).stdout).toMatch(/^Usage: qcow2-harness merge .*\n[\s\S]*Exit codes: 0 merged/);
    for (const args of [['merge', 'dest'], ['merge', 'dest', 'missing'], ['merge', '--frob', 'dest', 'a']]) {
      const r = await ours(root, args);
      expect(r.rc, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(/^qcow2-harness: [^\n]+\nTry 'qcow2-harness merge --help' for more information\n$/);
    }
  });
});
