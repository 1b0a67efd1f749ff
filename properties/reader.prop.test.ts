/**
 * Reader targets end to end (docs/cmd-protocol.md, protocol 2): a producer
 * engine writes each image and a reader program must read the model. Broken
 * readers written for these tests are caught and shrunk; refusals are counted,
 * not failed; a crashing, hanging or garbage-printing reader is a clear
 * failure; a writer that declines a configuration steers the campaign away.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { TraceConfig } from '../src/harness/config.js';
import { readEntry } from '../src/harness/corpus.js';
import { runTrace } from '../src/harness/execute.js';
import { steer } from '../src/harness/reader/features.js';
import { replayEntry } from '../src/harness/replay.js';
import { runCampaign } from '../src/harness/runner.js';
import { targetCheck } from '../src/harness/target-check.js';
import { makeTarget } from '../src/harness/targets/index.js';

const root = path.join(import.meta.dirname, '..');
const baseline = path.join(root, 'adapters', 'qemu_convert_reader.py');
const refusing = path.join(root, 'properties', 'fixtures', 'refusing_reader.py');
const bad = path.join(root, 'properties', 'fixtures', 'bad_reader.sh');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-reader-test-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const plain: TraceConfig = { size: 65536, clusterSize: 4096, refcountBits: 16, compat: '1.1', lazyRefcounts: false, extendedL2: false, compressionType: 'zlib' };
const write = { kind: 'write' as const, off: 4096, len: 4096 };

describe('reader targets', () => {
  it('a reader that keeps serving the first image it opened is caught and shrunk to at most 2 ops', async () => {
    const corpusDir = path.join(tmp, 'corpus-stale');
    const target = `cmd:python3 ${baseline} --stale`;
    const stats = await runCampaign({ target, producer: 'ts', seed: 5, runs: 4, maxOps: 4, corpusDir, runsPerChunk: 4, tmpRoot: path.join(tmp, 'runs') });
    expect(stats.failures.length).toBeGreaterThan(0);
    const f = stats.failures[0]!;
    expect(f.oracle).toBe('read');
    expect(f.message).toContain(`reader ${target}: `);
    expect(f.ops.length).toBeLessThanOrEqual(2);
    expect(f.producer).toBe('ts');
    // Saved with the image it misread, and it replays (the producer rebuilds the image).
    const dir = path.join(corpusDir, f.corpusId!);
    expect(fs.existsSync(path.join(dir, 'image.qcow2'))).toBe(true);
    expect(fs.readFileSync(path.join(dir, 'repro.sh'), 'utf8')).toContain('qcow2-harness replay');
    expect(readEntry(dir).producer).toBe('ts');
    const r = await replayEntry(dir, { tmpRoot: tmp });
    expect(r.passed).toBe(false);
    expect(r.failure?.message).toContain('reader ');
  });

  it('a reader that ignores the backing file misreads at the end, blamed on the reader', async () => {
    const config: TraceConfig = { ...plain, backing: { format: 'qcow2', size: 65536, clusterSize: 4096, writes: [[0, 8192]] } };
    const r = await runTrace(makeTarget(`cmd:python3 ${baseline} --ignore-backing`, { producer: 'qemu' }), config, { ops: [write] });
    expect(r.failure?.oracle).toBe('read');
    expect(r.failure?.message).toMatch(/^reader cmd:.*at guest offset 0 expected backing/);
  });

  it('the honest baseline reads images of both producers, snapshots included', async () => {
    const ops = [write, { kind: 'snapshot' as const, action: 'create' as const, name: 's1' }, { kind: 'write-zeroes' as const, off: 0, len: 8192, unmap: false }];
    for (const producer of ['ts', 'qemu'] as const) {
      const r = await runTrace(makeTarget(`cmd:python3 ${baseline}`, { producer }), plain, { ops });
      expect(r.failure, `producer ${producer}`).toBeUndefined();
      expect(r.readerMode).toBe(true);
    }
  });

  it('a reader that reports a disk one sector bigger than it is fails, though every read is right', async () => {
    const r = await runTrace(makeTarget(`cmd:python3 ${baseline} --oversize`, { producer: 'qemu' }), plain, { ops: [write] });
    expect(r.failure?.oracle).toBe('read');
    expect(r.failure?.message).toMatch(/^reader cmd:.*after op #1: reports a disk of 66048 bytes, the model's is 65536$/);
  });

  // qcow2 over qcow2 over raw, sizes shrinking down the chain, each level written.
  const chain: TraceConfig = {
    ...plain,
    backing: {
      format: 'qcow2',
      size: 65536,
      clusterSize: 4096,
      writes: [[0, 4096]],
      backing: { format: 'qcow2', size: 49152, clusterSize: 512, writes: [[2048, 8192]], backing: { format: 'raw', size: 32768, writes: [[0, 32768]] } },
    },
  };

  it('a backing chain reaches the reader as the image names it, and each level shows where it must', async () => {
    const ops = [{ kind: 'write' as const, off: 1024, len: 512 }];
    for (const [target, producer] of [[`cmd:python3 ${baseline}`, 'ts'], [`cmd:python3 ${baseline}`, 'qemu'], ['ts', 'qemu'], ['qemu', 'ts']] as const) {
      const r = await runTrace(makeTarget(target, { producer }), chain, { ops });
      expect(r.failure, `${target} reading ${producer}`).toBeUndefined();
    }
    // Cluster 0 was copied up by the write; past it the middle level's first write shows (stamp base + 1000).
    const r = await runTrace(makeTarget(`cmd:python3 ${baseline} --ignore-backing`, { producer: 'qemu' }), chain, { ops });
    expect(r.failure?.message).toMatch(/^reader cmd:.*at guest offset 4096 expected backing write #1000, read zeros/);
  });

  it('preallocation=metadata images read as zeros (or the backing file, with extended L2) both ways', async () => {
    const ops = [write, { kind: 'write-compressed' as const, off: 8192, len: 4096 }, { kind: 'discard' as const, off: 0, len: 16384 }];
    const pre: TraceConfig = { ...plain, preallocation: 'metadata' };
    const preBacked: TraceConfig = { ...plain, clusterSize: 16384, extendedL2: true, preallocation: 'metadata', backing: { format: 'raw', size: 65536, writes: [[0, 65536]] } };
    for (const config of [pre, preBacked]) {
      for (const [target, producer] of [['ts', 'qemu'], ['qemu', 'ts']] as const) {
        const r = await runTrace(makeTarget(target, { producer }), config, { ops });
        expect(r.failure, `${target} reading ${producer}, ${JSON.stringify(config)}`).toBeUndefined();
      }
    }
  });

  it('our engine and QEMU read each other’s images', async () => {
    const ops = [write, { kind: 'write-compressed' as const, off: 8192, len: 4096 }, { kind: 'snapshot' as const, action: 'create' as const, name: 's1' }, { kind: 'discard' as const, off: 4096, len: 4096 }];
    for (const [target, producer] of [['ts', 'qemu'], ['qemu', 'ts']] as const) {
      const r = await runTrace(makeTarget(target, { producer }), plain, { ops });
      expect(r.failure, `${target} reading ${producer}`).toBeUndefined();
    }
  });
});

describe('refusals', () => {
  it('a reader declining a feature by name is counted against it, not failed', async () => {
    const r = await runTrace(makeTarget(`cmd:python3 ${refusing}`), { ...plain, extendedL2: true, clusterSize: 16384 }, { ops: [write] });
    expect(r.failure).toBeUndefined();
    expect(r.refusal?.features).toEqual(['extended_l2']);
  });

  it('a campaign on a reader that declines everything has refusals and no failures', async () => {
    const stats = await runCampaign({ target: `cmd:python3 ${refusing} --everything`, seed: 3, runs: 4, maxOps: 3, tmpRoot: path.join(tmp, 'runs') });
    expect(stats.failures).toEqual([]);
    expect(stats.runs).toBe(4);
    expect(stats.refusedRuns).toBe(4);
    expect(Object.values(stats.refusals).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(4);
    expect(stats.declined).toEqual([]); // a reader's refusal never steers
  });

  it('a writer declining a configuration at create is counted and steers generation away', async () => {
    const writer = path.join(tmp, 'declining-writer.sh');
    fs.writeFileSync(writer, '#!/bin/sh\nread -r l\necho \'{"id":1,"ok":false,"code":"unsupported","error":"no extended L2 here","features":["extended_l2"]}\'\nread -r l\n');
    const stats = await runCampaign({ target: `cmd:sh ${writer}`, seed: 3, runs: 3, maxOps: 3, tmpRoot: path.join(tmp, 'runs') });
    expect(stats.failures).toEqual([]);
    expect(stats.refusals).toEqual({ extended_l2: 3 });
    expect(stats.declined).toEqual(['extended_l2']);
    const c: TraceConfig = { ...plain, clusterSize: 65536, extendedL2: true, compressionType: 'zstd' };
    expect(steer(c, new Set(['extended_l2']))).toEqual({ ...c, extendedL2: false });
    expect(steer({ ...plain, compat: '0.10' }, new Set(['compat=0.10'])).compat).toBe('1.1');
  });
});

describe('misbehaving readers are clear failures, never harness exceptions', () => {
  const run = (mode: string, timeoutMs = 10_000) => runTrace(makeTarget(`cmd:sh ${bad} ${mode}`, { producer: 'ts', timeoutMs }), plain, { ops: [write] });

  it('crash: the exit and its stderr are quoted', async () => {
    const r = await run('crash');
    expect(r.failure?.oracle).toBe('exception');
    expect(r.failure?.message).toMatch(/exited \(exit status 139\) during 'read'.*segfault in read/);
  });

  it('hang: reported as a hang', async () => {
    const r = await run('hang', 800);
    expect(r.failure?.oracle).toBe('hang');
  });

  it('garbage: a non-JSON line', async () => {
    const r = await run('garbage');
    expect(r.failure?.oracle).toBe('exception');
    expect(r.failure?.message).toContain("not a JSON line in reply to 'open': opening the image now");
  });

  it('short read: named with both lengths', async () => {
    const r = await run('short');
    expect(r.failure?.oracle).toBe('exception');
    expect(r.failure?.message).toMatch(/read returned 3 bytes, wanted \d+/);
  });
});

describe('target-check', () => {
  it('the Python kit baseline passes every probe; a stale reader fails exactly the reopen probe', async () => {
    const good = await targetCheck(`python3 ${baseline}`);
    expect(good.filter((p) => !p.ok)).toEqual([]);
    expect(good.length).toBeGreaterThanOrEqual(8);
    const stale = await targetCheck(`python3 ${baseline} --stale`);
    expect(stale.filter((p) => !p.ok).map((p) => p.probe)).toEqual(['open again after the image changed']);
  });

  it('a crashing reader gets one line per failed probe', async () => {
    const r = await targetCheck(`sh ${bad} crash`, { timeoutMs: 1500 });
    const failed = r.filter((p) => !p.ok);
    expect(failed.length).toBeGreaterThan(0);
    for (const p of failed) expect(p.detail).not.toMatch(/harness problem/);
    expect(failed.some((p) => /exited \(exit status 139\)/.test(p.detail ?? ''))).toBe(true);
  });
});

describe('the libqcow target', () => {
  it('a machine without python3-libqcow gets one line naming the package, exit 2', async () => {
    const { execa } = await import('execa');
    const r = await execa(process.execPath, [path.join(root, 'dist', 'cli', 'main.js'), 'fuzz', '--target', 'libqcow', '--runs', '1'], {
      reject: false,
      env: { QH_LIBQCOW_PYTHON: path.join(tmp, 'no-such-python') },
    });
    expect(r.exitCode).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('python3-libqcow');
  });
});

describe('external reader entries', () => {
  it('a libqcow entry replayed on a reader without the bug says the bug no longer shows', async () => {
    const dir = path.join(root, 'corpus', 'libqcow-zero-flag-ignored');
    const r = await replayEntry(dir, { target: `cmd:python3 ${baseline}`, tmpRoot: tmp });
    expect(r.failure).toBeUndefined();
    expect(r.passed).toBe(false);
    expect(r.note).toMatch(/libqcow 20201213.*no longer shows/);
  });
});
