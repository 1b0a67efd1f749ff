/**
 * Child entry of the robustness sweep: for each (image, mutation) case, every
 * sweep command runs in this process through runCli (the CLI's own entry,
 * all of its error handling) on a fresh copy of the corrupted image, and
 * qemu-img info judges the same bytes. The parent bounds time per command
 * (each one starts with a JSON line that re-arms its timer) and memory.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { bufferContext } from '../../src/cli/context.js';
import { runCli } from '../../src/cli/run.js';
import type { Mutation } from '../../src/harness/mutate/index.js';
import { readJob, serveCases, tool } from './child-lib.js';
import { mutationsOf, SWEEP_COMMANDS, type CommandRun, type SweepImage, type SweepJob, type SweepReport } from './sweep-lib.js';

async function runOne(argv: readonly string[], bytes: Uint8Array, img: SweepImage, dataBytes: Uint8Array | undefined, n: number): Promise<CommandRun> {
  const dir = dirname(img.path);
  const file = join(dir, `sweep-${process.pid}-${n}.qcow2`);
  const out = join(dir, `sweep-${process.pid}-${n}.out`);
  writeFileSync(file, bytes);
  if (img.dataFile && dataBytes) writeFileSync(img.dataFile, dataBytes);
  const args = argv.map((a) => (a === '@' ? file : a === '@out' ? out : a));
  const ctx = bufferContext(dir);
  const t0 = performance.now();
  const rc = await runCli(args, ctx);
  const ms = performance.now() - t0;
  const after = existsSync(file) ? readFileSync(file) : new Uint8Array(0);
  const changed = after.length !== bytes.length || !Buffer.from(after).equals(Buffer.from(bytes));
  const changedAt: number[] = [];
  if (after.length !== bytes.length) changedAt.push(Math.min(after.length, bytes.length));
  for (let i = 0; changed && i < Math.min(after.length, bytes.length) && changedAt.length < 16; i++) if (after[i] !== bytes[i]) changedAt.push(i);
  rmSync(file, { force: true });
  rmSync(out, { force: true });
  rmSync(`${out}.tmp`, { force: true });
  // Names in messages are the scratch file's: show them as the image operand.
  const plain = (s: string): string => s.split(file).join('IMG').slice(0, 4000);
  return { argv: args.map(plain), rc, stdout: plain(ctx.out).slice(0, 600), stderr: plain(ctx.err), changed, changedAt, ms };
}

const job = readJob<SweepJob>();
/** Mutations are listed per image on first use: a respawned child pays only for the images it still has cases of. */
const seeds = new Map<string, { mutations: Map<string, Mutation>; data?: Uint8Array }>();
function seedOf(name: string): { mutations: Map<string, Mutation>; data?: Uint8Array } {
  let s = seeds.get(name);
  if (!s) {
    const img = job.images[name]!;
    s = {
      mutations: mutationsOf(new Uint8Array(readFileSync(img.path)), job.seed, job.flips),
      data: img.dataFile ? new Uint8Array(readFileSync(img.dataFile)) : undefined,
    };
    seeds.set(name, s);
  }
  return s;
}

/** How long qemu-img info may take to judge one case's bytes. */
const QEMU_INFO_BOUND_MS = 600_000;

let n = 0;
await serveCases<SweepJob, SweepJob['cases'][number]>(job, async (c) => {
  const seed = seedOf(c.image);
  const m = seed.mutations.get(c.mutation);
  if (!m) throw new Error(`no mutation ${c.mutation} for ${c.image}`);
  const img = job.images[c.image]!;
  const bytes = m.apply();
  const runs: CommandRun[] = [];
  for (const argv of SWEEP_COMMANDS) {
    // Re-arms the parent's per-command timer.
    process.stdout.write(`${JSON.stringify({ tick: argv[0] })}\n`);
    runs.push(await runOne(argv, bytes, img, seed.data, n++));
  }
  const file = join(dirname(img.path), `sweep-${process.pid}-qemu.qcow2`);
  writeFileSync(file, bytes);
  if (img.dataFile && seed.data) writeFileSync(img.dataFile, seed.data);
  // qemu-img is the judge here, not the command under test, and it is slow on some of these bytes: it reads
  // each header extension with its own 8-byte request through the thread pool, so the 262,136 records of
  // extension:no-end-marker at 2 MiB clusters take it 31 s of wall time beside two CPU hogs (11 s of CPU).
  // Its bound is its own, far above the 60 s a command of ours gets; it re-arms the parent's timer to match.
  process.stdout.write(`${JSON.stringify({ tick: 'qemu-img info', ms: QEMU_INFO_BOUND_MS + 30_000 })}\n`);
  const q = await tool('qemu-img', ['info', '--output=json', '-f', 'qcow2', file], QEMU_INFO_BOUND_MS);
  rmSync(file, { force: true });
  return { runs, qemuInfo: { rc: q.rc, stderr: q.stderr.split(file).join('IMG').trim() } } satisfies SweepReport;
});
