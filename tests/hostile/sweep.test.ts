/**
 * Robustness sweep of the CLI on hostile images: QEMU-made seeds (every
 * HOSTILE_RECIPES image plus data file, 1/64-bit refcounts, 4 KiB/2 MiB
 * clusters, a bitmap, compat 0.10 over raw), each corrupted by a bounded,
 * seeded sample of the mutation generator and by every targeted mutation of
 * sweep-mutations.ts; on each, every SWEEP_COMMANDS command (info, info
 * JSON, check, check -r all, convert -O raw, io read, io write, snapshot -l,
 * snapshot -c, amend, resize) on a fresh copy, in a child process with a
 * bounded heap (--max-old-space-size), address space and peak RSS, and a
 * 60 s bound per command that only a hang can reach.
 *
 * Each command must: exit with a documented code (never 70, an internal
 * error); print no stack trace and no JavaScript error name; on failure put
 * exactly one line on stderr, `qcow2-harness: ...` (an io command that
 * opened the image says `read failed: ...` on stdout instead, as qemu-io;
 * check prints its report on stderr, as qemu-img check does); leave the image byte for byte as it
 * was when it is a read-only command or when it failed to open the image
 * (but for the corrupt bit an open that met corruption sets, as QEMU's).
 * Where qemu-img info and ours disagree on whether the image opens, the
 * disagreement must be one sweep-qemu-diffs.ts records with its reason.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { prng } from '../../src/harness/prng.js';
import { HEADER_FIELDS } from '../../src/qcow2/format/index.js';
import { ramScratchDir } from '../support/scratch.js';
import { runInChild, type ChildLimits, type ChildOutcome } from './runner.js';
import { mutationsOf, type CommandRun, type SweepImage, type SweepReport } from './sweep-lib.js';
import { SWEEP_RECIPES } from './sweep-images.js';
import { SWEEP_QEMU_DIFFS } from './sweep-qemu-diffs.js';
import { sweepMutations } from './sweep-mutations.js';

const SEED = 0x5eed_2026;
const FLIPS = 6;
/** Generator mutations drawn per image besides the KEEP list: the bound on the sweep's size. */
const SAMPLE_PER_IMAGE = 12;
/** Always swept when the image has them: the fields whose hostile values are the brief's. */
const KEEP = new Set([
  'header:size=unaligned',
  'header:size=u64-max',
  'header:clusterBits=22',
  'header:clusterBits=63',
  'header:l1Size=u32-max',
  'header:l1Size=above-32MiB',
  'header:l1TableOffset=misaligned',
  'header:refcountTableOffset=far-past-eof',
  'header:refcountTableClusters=u32-max',
  'header:nbSnapshots=u32-max',
  'header:nbSnapshots=above-65536',
  'header:snapshotsOffset=far-past-eof',
  'header:refcountOrder=7',
  'header:refcountOrder=4294967295',
  'header:headerLength=4294967295',
  'header:headerLength=8',
  'header:backingFileSize=u32-max',
  'header:backing=past-eof',
  'header:incompatibleFeatures=unknown-bit63',
  'extension:first-length=u32-max',
  'extension:no-end-marker',
  'extension:crypto-header-past-eof',
  'extension:bitmaps-huge',
  'extension:bitmaps-dir-in-header',
  'l1:first->far-past-eof',
  'l2:normal->far-past-eof',
  'l2:normal->misaligned',
  'reftable:first-all-ones',
  'snapshot:extra-size=huge',
  'snapshot:l1-size=u32-max',
  'snapshot:table-all-ones',
]);

/**
 * The memory bound catches an allocation sized by a hostile field (GiB), not
 * the report of a big table of garbage: check and check -r all of a 2 MiB
 * cluster image whose L2 table holds 262144 random entries print a few lines
 * per entry (655167 lines for check of l2:garbage there), and both run in
 * this child one after the other (746 MB peak RSS measured; check -r all
 * alone 590 MB, where qemu-img check keeps 22 MB by streaming its report: our
 * CheckResult holds every line until the command prints it). The heap bound
 * is set above that; a hostile size field asks for far more.
 */
const LIMITS: ChildLimits = { caseTimeoutMs: 60_000, vmemMB: 4096, rssLimitMB: 1024, restartRssMB: 450, nodeArgs: ['--max-old-space-size=768'] };

const ALLOWED_RC: Record<string, number[]> = { check: [0, 1, 2, 3, 63] };
const DEFAULT_RC = [0, 1];
/** What only a bug prints: a JavaScript error name or a stack frame. */
const BUG_TEXT = /TypeError|RangeError|ReferenceError|SyntaxError|Invalid typed array length|Maximum call stack|internal error \(a bug|out of memory|^\s+at .+:\d+:\d+\)?$/m;
/** The one line a failed command prints on stderr. */
const ONE_LINE = /^qcow2-harness: [^\n]*\n$/;
/** A failed io command says so on stdout, as qemu-io does ("read failed: Input/output error"). */
const IO_FAILED = /^\w+ failed: \S/m;
const OPEN_FAILED = /^qcow2-harness: (Could not open|can't open device)/;

/** Commands that never write the image: a change is a bug whatever their exit code. */
function readOnly(argv: string[]): boolean {
  const [cmd, ...rest] = argv;
  if (cmd === 'info' || cmd === 'convert') return true;
  if (cmd === 'check') return !rest.includes('-r');
  if (cmd === 'io') return rest.includes('-r');
  return cmd === 'snapshot' && rest[0] === '-l';
}

/**
 * A read-write open that meets corruption marks the image corrupt before it
 * fails, as QEMU's does (qcow2_signal_corruption from the open's own header
 * or bitmap directory update: qemu-io and qemu-img check -r all leave the
 * same byte changed on the same image): only the incompatible features field
 * may differ then.
 */
function corruptBitOnly(r: CommandRun): boolean {
  const f = HEADER_FIELDS.incompatibleFeatures;
  return /corrupt image/.test(r.stderr) && r.changedAt.every((i) => i >= f.offset && i < f.offset + f.width);
}

/** Every rule a command's run breaks, as lines. */
export function problemsOf(r: CommandRun): string[] {
  const out: string[] = [];
  const cmd = r.argv[0]!;
  const what = r.argv.join(' ');
  if (!(ALLOWED_RC[cmd] ?? DEFAULT_RC).includes(r.rc)) out.push(`${what}: exit ${r.rc}`);
  if (BUG_TEXT.test(r.stderr) || BUG_TEXT.test(r.stdout)) out.push(`${what}: bug text: ${JSON.stringify(r.stderr.slice(0, 500) + r.stdout.slice(0, 200))}`);
  if (cmd !== 'check' && r.stderr !== '' && !ONE_LINE.test(r.stderr)) out.push(`${what}: stderr not one line: ${JSON.stringify(r.stderr.slice(0, 500))}`);
  if (r.rc !== 0 && cmd !== 'check' && r.stderr === '' && !(cmd === 'io' && IO_FAILED.test(r.stdout))) out.push(`${what}: exit ${r.rc} without a message`);
  if (r.changed && readOnly(r.argv)) out.push(`${what}: a read-only command changed the image`);
  if (r.changed && OPEN_FAILED.test(r.stderr) && !corruptBitOnly(r)) out.push(`${what}: refused to open the image but changed it at ${r.changedAt.join(',')}: ${r.stderr.trim()}`);
  return out;
}

/** Whether our `info` opened the image as qcow2 (a probe as raw is not an open of the qcow2 bytes). */
function oursOpens(r: SweepReport): boolean | undefined {
  const info = r.runs[0]!;
  if (/file format: raw/.test(info.stdout)) return undefined;
  return info.rc === 0;
}

const dir = ramScratchDir('qcow2-sweep-');
const images: Record<string, SweepImage> = {};
const cases: { id: string; image: string; mutation: string }[] = [];
for (const r of SWEEP_RECIPES) {
  const path = await r.build(dir);
  const bytes = new Uint8Array(readFileSync(path));
  images[r.name] = { path, ...(r.name.includes('datafile') ? { dataFile: join(dir, `${r.name}.data`) } : {}) };
  const all = [...mutationsOf(bytes, SEED, FLIPS).values()];
  const targeted = new Set(sweepMutations(bytes).map((m) => m.name));
  const kept = all.filter((m) => KEEP.has(m.name) || targeted.has(m.name));
  const rest = all.filter((m) => !kept.includes(m));
  const rnd = prng(SEED ^ r.name.length);
  const drawn = new Set<string>();
  while (drawn.size < Math.min(SAMPLE_PER_IMAGE, rest.length)) drawn.add(rest[Math.floor(rnd() * rest.length)]!.name);
  for (const m of [...kept.map((k) => k.name), ...[...drawn].sort()]) cases.push({ id: `${r.name}/${m}`, image: r.name, mutation: m });
}

let outcomes = new Map<string, ChildOutcome<SweepReport>>();
beforeAll(async () => {
  // Two children, one per core, cases interleaved; but an image with a data file has its cases in
  // one child: the data file is shared (the header names it), and the other child's open of it would
  // be a lock conflict between the two sweeps, not a finding.
  const half = (c: (typeof cases)[number], i: number): number => (images[c.image]!.dataFile ? 0 : i % 2);
  const halves = [cases.filter((c, i) => half(c, i) === 0), cases.filter((c, i) => half(c, i) === 1)];
  const results = await Promise.all(halves.map((h) => runInChild<SweepReport>('tests/hostile/sweep-child.ts', { images, cases: h, seed: SEED, flips: FLIPS }, dir, LIMITS)));
  outcomes = new Map(results.flatMap((m) => [...m]));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function finished(id: string): Extract<ChildOutcome<SweepReport>, { kind: 'done' }> {
  const o = outcomes.get(id);
  if (!o) throw new Error(`no outcome for ${id}`);
  if (o.kind === 'hang') throw new Error(`${id}: a command gave no answer within ${o.ms} ms (killed)`);
  if (o.kind === 'crash') throw new Error(`${id}: the child process died (memory bound?): ${o.detail}`);
  const r = o.report as SweepReport & { harnessError?: string };
  if (r.harnessError) throw new Error(`${id}: ${r.harnessError}`);
  return o;
}

describe('CLI robustness sweep on hostile images', () => {
  test('the sweep is the size it claims', () => {
    expect(Object.keys(images).length).toBe(SWEEP_RECIPES.length);
    expect(cases.length).toBeGreaterThan(SWEEP_RECIPES.length * SAMPLE_PER_IMAGE);
  });

  for (const c of cases) {
    test(c.id, () => {
      const o = finished(c.id);
      if (o.rssBeforeMB <= LIMITS.rssLimitMB) expect(o.maxRssMB, `peak RSS ${o.maxRssMB.toFixed(0)} MB`).toBeLessThanOrEqual(LIMITS.rssLimitMB);
      expect(o.report.runs.flatMap(problemsOf)).toEqual([]);
    });
  }

  test('where qemu-img info and ours disagree on opening an image, the disagreement is a recorded one', () => {
    const seen = new Map<string, string>();
    for (const c of cases) {
      const o = outcomes.get(c.id);
      if (o?.kind !== 'done') continue;
      const ours = oursOpens(o.report);
      if (ours === undefined) continue;
      const qemu = o.report.qemuInfo.rc === 0;
      if (ours !== qemu) {
        seen.set(c.id, ours ? `we open it, qemu-img: ${o.report.qemuInfo.stderr}` : `qemu-img opens it, we: ${o.report.runs[0]!.stderr.trim()}`);
      }
    }
    const unrecorded = [...seen].filter(([id]) => !SWEEP_QEMU_DIFFS.has(id)).map(([id, why]) => `${id}: ${why}`);
    const gone = [...SWEEP_QEMU_DIFFS.keys()].filter((id) => outcomes.has(id) && !seen.has(id));
    expect({ unrecorded, gone }).toEqual({ unrecorded: [], gone: [] });
  });
});
