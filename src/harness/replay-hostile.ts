/**
 * Replay of a hostile-image corpus entry (trace.json "hostile", corpus.ts):
 * a bug in a repair tool, which no op trace reaches because it needs an
 * image no engine writes. The producer runs the entry's ops (with every
 * oracle, so the base image is known good), the byte patch corrupts it, the
 * target repairs it with check -r, and QEMU's tools then judge what the repair
 * left: it must have succeeded, qemu-img check must find nothing, the image
 * must open read/write (a repair that marks it corrupt fails here), and the
 * guest must read what the ops wrote.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { imgCheck, imgConvertToRaw, qemuIoBatch } from '../qemu/index.js';
import { Qcow2Error } from '../qcow2/errors.js';
import { openQcow2File } from '../qcow2/open-file.js';
import type { CheckResult } from '../qcow2/types.js';
import type { DiskModel } from '../model/disk.js';
import { accessOf, passphraseOf, type TraceConfig } from './config.js';
import type { BytePatch, HostileImage, TraceFile } from './corpus.js';
import { runTrace } from './execute.js';
import type { Op } from './ops.js';
import type { Failure } from './oracles.js';
import { makeTarget } from './targets/index.js';
import { describeMismatch, verifyRange } from './verify.js';

/** Targets that can repair an image: QEMU's qemu-img check and this engine's check. */
export const REPAIR_TARGETS: readonly string[] = ['qemu', 'ts'];

export interface RepairRun {
  rc: number;
  /** What the repair printed on stderr (qemu-img's ERROR/Repairing lines, its error). */
  stderr: string;
}

/** Applies a patch to an image file; returns why it does not fit (the base image holds other bytes there), or undefined. */
export function applyPatch(file: string, patch: readonly BytePatch[]): string | undefined {
  const fd = fs.openSync(file, 'r+');
  try {
    for (const b of patch) {
      const from = Buffer.from(b.from, 'hex');
      const found = Buffer.alloc(from.length);
      const n = fs.readSync(fd, found, 0, found.length, b.offset);
      if (n !== from.length || !found.equals(from)) {
        return `the base image holds ${found.subarray(0, n).toString('hex') || 'nothing'} at offset ${b.offset}, not ${b.from} (${b.what}): the producer laid the image out differently`;
      }
      fs.writeSync(fd, Buffer.from(b.to, 'hex'), 0, from.length, b.offset);
    }
  } finally {
    fs.closeSync(fd);
  }
  return undefined;
}

/**
 * This engine's repair as its CLI runs it (commands/check.ts): check -r, a
 * fresh check when anything was fixed, and qemu-img check's exit code from it.
 */
function tsRepair(file: string, mode: HostileImage['repair'], config: TraceConfig): RepairRun {
  let img;
  try {
    img = openQcow2File(file, { readOnly: false, repairDirty: false, forCheck: true, passphrase: passphraseOf(config), dataFileBase: path.dirname(file) });
  } catch (e) {
    if (e instanceof Qcow2Error) return { rc: 1, stderr: `could not open: ${e.message}` };
    throw e;
  }
  try {
    let r: CheckResult = img.check(mode);
    const lines = [...r.messages];
    if (r.corruptionsFixed || r.leaksFixed) {
      r = img.check('none');
      lines.push(...r.messages);
    }
    const rc = r.checkErrors ? 1 : r.corruptions ? 2 : r.leaks ? 3 : 0;
    return { rc, stderr: lines.join('\n') };
  } catch (e) {
    if (e instanceof Qcow2Error) return { rc: 1, stderr: `Check failed: ${e.message}` };
    throw e;
  } finally {
    img.close();
  }
}

async function repairWith(target: string, file: string, mode: HostileImage['repair'], config: TraceConfig): Promise<RepairRun> {
  if (target === 'ts') return tsRepair(file, mode, config);
  const r = await imgCheck(file, { repair: mode, access: accessOf(config) });
  return { rc: r.rc, stderr: r.stderr };
}

/** stderr as one line, for a failure message. */
const oneLine = (s: string) => s.trim().split('\n').map((l) => l.trim()).filter(Boolean).join('; ').slice(0, 800);

/** What is wrong with the image a repair left, judged by QEMU's tools and the model; one problem per item. */
async function judgeRepaired(file: string, model: DiskModel, config: TraceConfig, dir: string): Promise<string[]> {
  const access = accessOf(config);
  const problems: string[] = [];
  const after = await imgCheck(file, { access });
  if (after.rc !== 0) {
    const j = after.json;
    problems.push(`qemu-img check of the repaired image exits ${after.rc} (corruptions ${j?.corruptions ?? 0}, leaks ${j?.leaks ?? 0}, check-errors ${j?.['check-errors'] ?? '?'})`);
  }
  try {
    await qemuIoBatch(file, ['flush'], { access });
  } catch (e) {
    problems.push(`the repaired image does not open read/write: ${(e as Error).message}`);
  }
  const raw = path.join(dir, 'repaired.raw');
  try {
    await imgConvertToRaw(file, raw, { access });
    const m = verifyRange(model, model.active, 0, new Uint8Array(fs.readFileSync(raw)));
    if (m) problems.push(describeMismatch('the repaired image', m));
  } catch (e) {
    problems.push(`the repaired image cannot be read: ${(e as Error).message}`);
  } finally {
    fs.rmSync(raw, { force: true });
  }
  return problems;
}

/**
 * Builds the base image, patches it, repairs it on `target` and judges the
 * result: a 'repair' failure naming every problem, or undefined when the
 * repair did what it promises.
 */
export async function runHostile(entry: TraceFile & { parsedOps: Op[] }, target: string, tmpRoot?: string): Promise<Failure | undefined> {
  const h = entry.hostile!;
  if (!REPAIR_TARGETS.includes(target)) {
    return { oracle: 'exception', message: `hostile-image entries are repaired by ${REPAIR_TARGETS.join(' or ')}, not by target '${target}'` };
  }
  const base = await runTrace(makeTarget(h.producer, { strict: true, timeoutMs: entry.timeoutMs }), entry.config, { ops: entry.parsedOps }, { keepDir: true, tmpRoot });
  try {
    if (base.failure) return { oracle: 'exception', message: `the base image's ops failed on ${h.producer}: ${base.failure.oracle}: ${base.failure.message}` };
    const file = path.join(base.dir, 'image.qcow2');
    const misfit = applyPatch(file, h.patch);
    if (misfit) return { oracle: 'exception', message: misfit };
    const repair = await repairWith(target, file, h.repair, entry.config);
    const problems = repair.rc === 0 ? [] : [`check -r ${h.repair} of the patched image exits ${repair.rc}: ${oneLine(repair.stderr)}`];
    problems.push(...(await judgeRepaired(file, base.model!, entry.config, base.dir)));
    // Paths of the scratch directory would make every replay's message differ.
    return problems.length ? { oracle: 'repair', message: problems.join('; and ').split(base.dir + path.sep).join('') } : undefined;
  } finally {
    fs.rmSync(base.dir, { recursive: true, force: true });
  }
}
