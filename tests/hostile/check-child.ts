/**
 * Child entry of check-agrees: for each hand-corrupted image, our
 * `check --output json` and `check -r all --output json` (the CLI, run in
 * this process), qemu-img's same two, and qemu-img check of both repaired
 * copies.
 */
import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { bufferContext } from '../../src/cli/context.js';
import { runCli } from '../../src/cli/run.js';
import { listMutations, type Mutation } from '../../src/harness/mutate/index.js';
import { qemuCheck, readJob, serveCases, type CaseJob, type QemuCheckRun } from './child-lib.js';

export interface CheckJob extends CaseJob {
  images: Record<string, string>;
  cases: { id: string; image: string; mutation: string }[];
  seed: number;
}

export interface OursRun {
  rc: number;
  json?: Record<string, number>;
  stderr: string;
}

export interface CheckReport {
  qemu: QemuCheckRun;
  ours: OursRun;
  qemuRepair: QemuCheckRun;
  oursRepair: OursRun;
  /** qemu-img check of the copy qemu-img repaired, and of the copy we repaired. */
  qemuAfterQemuRepair: QemuCheckRun;
  qemuAfterOurRepair: QemuCheckRun;
}

const job = readJob<CheckJob>();
const mutations = new Map<string, Map<string, Mutation>>();
for (const [name, path] of Object.entries(job.images)) {
  const list = listMutations(new Uint8Array(readFileSync(path)), { seed: job.seed });
  mutations.set(name, new Map(list.map((m) => [m.name, m])));
}

async function ours(argv: string[], cwd: string): Promise<OursRun> {
  const ctx = bufferContext(cwd);
  const rc = await runCli(argv, ctx);
  const start = ctx.out.indexOf('{');
  let json: OursRun['json'];
  if (start >= 0) {
    try {
      json = JSON.parse(ctx.out.slice(start));
    } catch {
      json = undefined;
    }
  }
  return { rc, json, stderr: ctx.err.slice(0, 2000) };
}

await serveCases<CheckJob, CheckJob['cases'][number]>(job, async (c) => {
  const m = mutations.get(c.image)?.get(c.mutation);
  if (!m) throw new Error(`no mutation ${c.mutation} for ${c.image}`);
  const dir = dirname(job.images[c.image]);
  const base = join(dir, `chk-${process.pid}`);
  const [corrupt, q, o] = [`${base}.qcow2`, `${base}-q.qcow2`, `${base}-o.qcow2`];
  writeFileSync(corrupt, m.apply());
  copyFileSync(corrupt, q);
  copyFileSync(corrupt, o);
  const report: CheckReport = {
    qemu: await qemuCheck(corrupt),
    ours: await ours(['check', '--output', 'json', corrupt], dir),
    qemuRepair: await qemuCheck(q, 'all'),
    oursRepair: await ours(['check', '-r', 'all', '--output', 'json', o], dir),
    qemuAfterQemuRepair: await qemuCheck(q),
    qemuAfterOurRepair: await qemuCheck(o),
  };
  for (const f of [corrupt, q, o]) rmSync(f, { force: true });
  return report;
});
