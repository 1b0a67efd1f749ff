/**
 * A new finding names the corpus entries whose ops it repeats (issue 12
 * item 5): the same ops after shrinking, or an entry's ops as a prefix,
 * whatever the entry's oracle and message. One fixed-seed campaign with a
 * planted bug finds the trace; a second, on a corpus written around that
 * trace, must name exactly the entries that match.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusMatches, describeMatches, entrySignature, failurePlace, failureSignature, writeEntry } from './corpus.js';
import { parseOp } from './ops.js';
import { formatFailure, runCampaign, type CampaignOptions, type FailureReport } from './runner.js';
import { TsTarget } from './targets/ts.js';
import type { OpOutcome, StampedOp } from './targets/types.js';

/** Our engine with a planted bug: after two plain writes, reads come back with their first byte flipped. */
class Planted extends TsTarget {
  private writes = 0;
  override async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    const out = await super.run(ops);
    this.writes += ops.filter((o, i) => o.op.kind === 'write' && out[i]?.ok).length;
    return out;
  }
  override async read(off: number, len: number): Promise<Uint8Array> {
    const b = await super.read(off, len);
    if (this.writes >= 2 && b.length > 0) b[0] = b[0]! ^ 0xff;
    return b;
  }
}

// The clock stands still, so no shrink budget runs out whatever this machine's speed.
const base = { target: 'ts', seed: 12, maxOps: 10, runs: 10, runsPerChunk: 10, concurrency: 1, clock: () => 0, targetFactory: () => new Planted() } satisfies CampaignOptions;

describe('a finding names the corpus entries it repeats', () => {
  let root: string;
  let first: FailureReport;
  beforeAll(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-match-'));
    const s = await runCampaign({ ...base, corpusDir: path.join(root, 'a') });
    expect(s.failures.length).toBe(1);
    first = s.failures[0]!;
  });
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

  it('the entry a finding is saved as is not a match of itself', () => {
    expect(first.corpusId).toBeDefined();
    expect(first.duplicate).toBe(false);
    expect(first.corpusMatches).toBeUndefined();
    expect(first.ops.length).toBeGreaterThanOrEqual(2);
  });

  it('same ops and a prefix are named, with whether the config is the same; other targets and other ops are not', async () => {
    const dir = path.join(root, 'b');
    const entry = (id: string, target: string, ops: string[], config = first.config) =>
      writeEntry(dir, { id, target, config, ops: ops.map(parseOp), oracle: 'check', message: `planted entry ${id}`, repro: '#!/bin/sh\n' });
    entry('same-other-oracle', 'ts', first.ops);
    entry('prefix-other-config', 'ts', first.ops.slice(0, -1), { ...first.config, size: first.config.size * 2 });
    entry('same-other-target', 'qemu', first.ops);
    entry('longer', 'ts', [...first.ops, 'flush']);
    entry('other-ops', 'ts', ['discard 0 512', ...first.ops.slice(1)]);
    const s = await runCampaign({ ...base, corpusDir: dir });
    expect(s.failures.length).toBe(1);
    const f = s.failures[0]!;
    // The same campaign finds the same trace, saved as its own new entry.
    expect(f.ops).toEqual(first.ops);
    expect(f.corpusId).toBe(first.corpusId);
    expect(f.duplicate).toBe(false);
    expect(f.corpusMatches).toEqual([
      { id: 'same-other-oracle', how: 'same ops', sameConfig: true },
      { id: 'prefix-other-config', how: 'prefix', sameConfig: false },
    ]);
    expect(formatFailure(f)).toContain('matches corpus same-other-oracle (same ops, same config), prefix-other-config (its ops as a prefix; config differs)');
  });

  it('a failure whose signature the corpus holds is reported as that entry, without a shrink', async () => {
    const s = await runCampaign({ ...base, corpusDir: path.join(root, 'a') });
    expect(s.failures.length).toBe(1);
    const f = s.failures[0]!;
    expect(f.shrinkSkipped).toBe(true);
    expect(f.duplicate).toBe(true);
    expect(f.corpusId).toBe(first.corpusId);
    expect(s.shrinkRuns).toBe(0);
    expect(formatFailure(f)).toContain(`not shrunk: corpus entry ${first.corpusId} has its signature`);
    // The first campaign shrank: its trace is no longer than the one generated here.
    expect(f.ops.length).toBeGreaterThanOrEqual(first.ops.length);
  });

  it('corpusMatches reads entries as saved, whatever their key order', () => {
    const dir = path.join(root, 'b');
    const reordered = Object.fromEntries(Object.entries(first.config).reverse()) as typeof first.config;
    const ms = corpusMatches(dir, { target: 'ts', config: reordered, ops: first.ops });
    expect(ms.map((m) => [m.id, m.how, m.sameConfig])).toContainEqual(['same-other-oracle', 'same ops', true]);
    // Its own entry (from the second campaign) matches too, unless named as self.
    expect(corpusMatches(dir, { target: 'ts', config: reordered, ops: first.ops }, first.corpusId).map((m) => m.id)).not.toContain(first.corpusId);
    expect(ms.map((m) => m.id)).toContain(first.corpusId);
    expect(describeMatches(ms.slice(0, 1))).toBe(`matches corpus ${ms[0]!.id} (same ops, same config)`);
  });
});

describe('failure signatures', () => {
  const msg = 'QemuToolError: qemu-img convert failed (rc 1): qemu-img: error while reading at byte 0: Input/output error';
  it('tell one message apart by the op kind it showed at; numbers and quoted text do not count', () => {
    const atFault = failureSignature('qemu', 'exception', msg, failurePlace(1, ['fault cluster_alloc_bytes eio write -c 0 131072']));
    const atAmend = failureSignature('qemu', 'exception', msg, failurePlace(4, ['write -c 0 4096', 'snapshot -c s0', 'write 0 512', 'amend compat=0.10']));
    expect(atFault).not.toBe(atAmend);
    expect(atAmend).toBe('qemu exception at amend: QemuToolError: qemu-img convert failed (rc #): qemu-img: error while reading at byte #: Input/output error');
    expect(failureSignature('ts', 'read', "after 'write 7 9': 12 differ", 'end')).toBe(failureSignature('ts', 'read', "after 'discard 1 2': 3 differ", 'end'));
    expect(failureSignature('ts', 'read', 'whole disk: at guest offset 5 expected zeros, read op #2 (3 sectors differ)', 'end')).toBe(
      failureSignature('ts', 'read', 'whole disk: at guest offset 7 expected zeros, read op #1', 'end'),
    );
    expect(failurePlace(undefined, ['write 0 512'])).toBe('end');
    expect(failurePlace(0, [])).toBe('setup');
  });

  it('an entry saved with an older signature form is compared by its failure', () => {
    const t = { target: 'qemu', oracle: 'exception' as const, message: msg, opIndex: 4, ops: ['write -c 0 4096', 'snapshot -c s0', 'write 0 512', 'amend compat=0.10'], signature: 'qemu exception old form' };
    expect(entrySignature(t)).toBe(failureSignature('qemu', 'exception', msg, 'amend'));
    expect(entrySignature({ ...t, producer: 'qemu' as const, target: 'libqcow' })).toMatch(/^libqcow producer=qemu exception at amend: /);
  });
});
