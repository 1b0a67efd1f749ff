/**
 * Child entry of the hostile suite: regenerates each image's mutations from
 * the seed (they are deterministic) and runs the read side and the write side
 * of every case; for writes that went through, qemu-img check judges the
 * image before and after.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { memoryBackingOpener, planAsQemuIo, runReadCase, runWriteCase } from '../../src/harness/hostile.js';
import { listMutations, type Mutation } from '../../src/harness/mutate/index.js';
import { qemuCheck, qemuWrites, readJob, serveCases, type CaseJob, type QemuCheckRun, type QemuWritesRun } from './child-lib.js';

export interface HostileJob extends CaseJob {
  images: Record<string, string>;
  cases: { id: string; image: string; mutation: string }[];
  seed: number;
  flips: number;
  write: boolean;
  tmp: string;
}

export interface HostileReport {
  read: ReturnType<typeof runReadCase>;
  write?: Omit<ReturnType<typeof runWriteCase>, 'after'>;
  /** qemu-img check of the corrupted image, and of it after our writes. */
  qemuBefore?: QemuCheckRun;
  qemuAfter?: QemuCheckRun;
  /** The same writes through qemu-io on the corrupted image, and qemu-img check after them. */
  qemuWrites?: QemuWritesRun;
  qemuAfterQemuWrites?: QemuCheckRun;
  /** Milliseconds spent per part, to keep the suite's time budget visible. */
  ms: { read: number; write: number; qemu: number };
}

const job = readJob<HostileJob>();
const mutations = new Map<string, Map<string, Mutation>>();
for (const [name, path] of Object.entries(job.images)) {
  const list = listMutations(new Uint8Array(readFileSync(path)), { seed: job.seed, flips: job.flips });
  mutations.set(name, new Map(list.map((m) => [m.name, m])));
}

await serveCases<HostileJob, HostileJob['cases'][number]>(job, async (c) => {
  const m = mutations.get(c.image)?.get(c.mutation);
  if (!m) throw new Error(`no mutation ${c.mutation} for ${c.image}`);
  const openBacking = memoryBackingOpener(dirname(job.images[c.image]));
  const bytes = m.apply();
  let t = performance.now();
  const report: HostileReport = { read: runReadCase(bytes, { openBacking }), ms: { read: 0, write: 0, qemu: 0 } };
  report.ms.read = performance.now() - t;
  if (job.write) {
    t = performance.now();
    const w = runWriteCase(m.apply(), { openBacking });
    report.ms.write = performance.now() - t;
    t = performance.now();
    const { after: _after, ...rest } = w;
    report.write = rest;
    if (w.wrote && w.after) {
      // Judge with qemu-img check, next to the seed image so a relative backing name resolves.
      const dir = dirname(job.images[c.image]);
      const before = join(dir, `case-${process.pid}-before.qcow2`);
      const after = join(dir, `case-${process.pid}-after.qcow2`);
      writeFileSync(before, bytes);
      writeFileSync(after, w.after);
      report.qemuBefore = await qemuCheck(before);
      report.qemuAfter = await qemuCheck(after);
      // When our result looks wrong, what QEMU itself does with the same writes: corrupt
      // images are judged against it (garbage in, the same garbage out is not our bug).
      const c0 = report.qemuBefore.json?.corruptions ?? 0;
      const c1 = report.qemuAfter.json?.corruptions ?? 0;
      if (w.readback !== 'ok' || c1 > c0 || (w.othersChangedAt ?? -1) >= 0) {
        const io = planAsQemuIo(w.plan);
        report.qemuWrites = await qemuWrites(before, io.writes, io.reads);
        if (report.qemuWrites.wrote) report.qemuAfterQemuWrites = await qemuCheck(before);
      }
      rmSync(before, { force: true });
      rmSync(after, { force: true });
    }
    report.ms.qemu = performance.now() - t;
  }
  return report;
});
