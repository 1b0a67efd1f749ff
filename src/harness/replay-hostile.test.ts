/**
 * Hostile-image corpus entries (corpus.ts "hostile", replay-hostile.ts): the
 * repair oracle passes a repair that works, names what a repair left wrong,
 * refuses a patch that does not fit the base image, and the entry documenting
 * qemu-img 7.2's reftable repair bug reproduces with QEMU's tools alone.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { bufferContext } from '../cli/context.js';
import { runCli } from '../cli/run.js';
import { QEMU_IMG } from '../qemu/index.js';
import { CorpusFormatError, corpusMatches, readEntry, type BytePatch, type HostileImage, type TraceFile } from './corpus.js';
import { replayEntry } from './replay.js';
import { runHostile } from './replay-hostile.js';

const ENTRY = path.join(import.meta.dirname, '..', '..', 'corpus', 'qemu-check-repair-corrupts-reftable-reserved');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-hostile-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const documented = JSON.parse(fs.readFileSync(path.join(ENTRY, 'trace.json'), 'utf8')) as TraceFile;

/** An entry of ours (no "external") on the documented entry's base image, with another patch. */
function entryWith(id: string, patch: BytePatch[], hostile: Partial<HostileImage> = {}): string {
  const dir = path.join(tmp, id);
  fs.mkdirSync(dir, { recursive: true });
  const { external: _external, ...ours } = documented;
  const t = { ...ours, id, message: 'none', hostile: { ...documented.hostile!, ...hostile, patch } };
  fs.writeFileSync(path.join(dir, 'trace.json'), JSON.stringify(t, null, 2));
  return dir;
}

// On a 4 MiB image with 1 MiB written, QEMU lays out: header, reftable at 0x10000, refblock 0x20000, L1 0x30000, L2 0x40000, data from 0x50000.
const UNUSED_REFTABLE_ENTRY: BytePatch = { offset: 0x10008, from: '0000000000000000', to: '0000000000000001', what: 'reftable entry 1 (unused): reserved bit 0' };

describe('hostile-image entries', () => {
  it('a repair that works runs clean: reserved bits in an unused reftable entry, repaired by qemu-img and by our engine', async () => {
    const dir = entryWith('unused-entry', [UNUSED_REFTABLE_ENTRY]);
    for (const target of ['qemu', 'ts']) {
      const r = await replayEntry(dir, { target, tmpRoot: tmp });
      expect(r.failure, `${target}: ${r.failure?.message}`).toBeUndefined();
      expect(r.passed).toBe(true);
    }
  });

  it('names a repair that leaves the guest reading something else than the ops wrote', async () => {
    // L2 entry 16 (guest 1 MiB, never written) made to share the data cluster at 0x50000: check -r all fixes the
    // refcount and COPIED flags, so the image is clean, but guest 1 MiB now reads guest 0's data instead of zeros.
    const shared = { offset: 0x40080, from: '0000000000000000', to: '8000000000050000', what: 'L2 entry 16 -> the data cluster of L2 entry 0' };
    const dir = entryWith('shared-cluster', [shared]);
    for (const target of ['qemu', 'ts']) {
      const r = await replayEntry(dir, { target, tmpRoot: tmp });
      expect(r.failure?.oracle, target).toBe('repair');
      expect(r.failure?.message, target).toMatch(/^the repaired image: at guest offset 1048576 expected zeros, read /);
    }
  });

  it('refuses a patch whose bytes the base image does not hold (another layout), before any repair', async () => {
    const misfit = { offset: 0x10000, from: '0000000000030000', to: '0000000000030001', what: 'reftable entry 0' };
    const r = await replayEntry(entryWith('misfit', [misfit]), { target: 'qemu', tmpRoot: tmp });
    expect(r.failure).toEqual({
      oracle: 'exception',
      message: 'the base image holds 0000000000020000 at offset 65536, not 0000000000030000 (reftable entry 0): the producer laid the image out differently',
    });
  });

  it('says which targets can repair', async () => {
    const f = await runHostile(readEntry(entryWith('libqcow', [UNUSED_REFTABLE_ENTRY])), 'libqcow', tmp);
    expect(f).toEqual({ oracle: 'exception', message: "hostile-image entries are repaired by qemu or ts, not by target 'libqcow'" });
  });

  it('readEntry rejects a malformed hostile block', () => {
    const bad: [string, BytePatch[], Partial<HostileImage>, RegExp][] = [
      ['empty', [], {}, /hostile.patch must list at least one byte patch/],
      ['not-hex', [{ ...UNUSED_REFTABLE_ENTRY, to: 'zz00000000000001' }], {}, /patch\[0\]: from and to must be hex bytes/],
      ['lengths', [{ ...UNUSED_REFTABLE_ENTRY, to: '01' }], {}, /patch\[0\]: from and to must be the same length/],
      ['offset', [{ ...UNUSED_REFTABLE_ENTRY, offset: -8 }], {}, /patch\[0\].offset must be a byte offset/],
      ['producer', [UNUSED_REFTABLE_ENTRY], { producer: 'libqcow' as 'qemu' }, /hostile.producer 'libqcow' is not qemu or ts/],
    ];
    for (const [id, patch, h, message] of bad) {
      const dir = entryWith(`bad-${id}`, patch, h);
      expect(() => readEntry(dir), id).toThrow(CorpusFormatError);
      expect(() => readEntry(dir), id).toThrow(message);
    }
  });

  it('a finding with the same ops matches no hostile entry (those ops only build its base image)', () => {
    const corpus = path.dirname(ENTRY);
    const finding = { target: 'qemu', config: documented.config, ops: [...documented.ops, 'flush'] };
    expect(corpusMatches(corpus, finding).map((m) => m.id)).not.toContain(documented.id);
  });

  it('minimize refuses a hostile entry with a usage error (exit 2): its ops are no failing trace', async () => {
    const ctx = bufferContext(tmp);
    expect(await runCli(['minimize', ENTRY], ctx)).toBe(2);
    expect(ctx.err).toContain('is a hostile-image entry');
  });
});

describe('corpus/qemu-check-repair-corrupts-reftable-reserved/repro.sh', () => {
  const env = { LC_ALL: 'C', PATH: process.env.PATH };
  it('exits 1 with qemu-img 7.2 and says what it saw', async () => {
    const r = await execa('sh', [path.join(ENTRY, 'repro.sh')], { reject: false, env });
    expect(r.exitCode, r.stdout + r.stderr).toBe(1);
    expect(r.stdout).toContain('refcount table entry 0 at offset 65536: 0000000000020000 -> 0000000000020001');
    expect(r.stdout).toContain('Preventing invalid write on metadata (overlaps with refcount block)');
    expect(r.stdout).toContain('BUG: check -r all exits 1; qemu-img check after the repair exits 2; the repair marked the image corrupt');
  });

  it('exits 0 once the repair works: the same qemu-img with its overlap check off for check -r all', async () => {
    // The rebuild's only mistake is tripping its own overlap check (trace.json); without it the repair succeeds.
    const real = (await execa('sh', ['-c', `command -v ${QEMU_IMG}`])).stdout.trim();
    const bin = path.join(tmp, 'fixed-bin');
    fs.mkdirSync(bin, { recursive: true });
    const wrapper = [
      '#!/bin/sh',
      `if [ "$1" = check ] && [ "$2" = -r ] && [ "$3" = all ]; then exec ${real} check -r all --image-opts "driver=qcow2,file.filename=$4,overlap-check=none"; fi`,
      `exec ${real} "$@"`,
    ].join('\n');
    fs.writeFileSync(path.join(bin, 'qemu-img'), wrapper + '\n', { mode: 0o755 });
    const r = await execa('sh', [path.join(ENTRY, 'repro.sh')], { reject: false, env: { ...env, PATH: `${bin}:${process.env.PATH}` } });
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('qemu-img check -r all: exit 0');
    expect(r.stdout.trim().split('\n').at(-1)).toBe('no problem found');
  });
});
