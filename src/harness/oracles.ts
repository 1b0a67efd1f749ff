/**
 * End-of-run oracles (DESIGN.md "Oracles"): the whole disk and every snapshot
 * against the model, then qemu-img check, qemu-img compare against the model
 * as a sparse raw file, and qemu-img info, run in parallel; finally our own
 * check against qemu-img's verdict and counts when the target offers one.
 */
import * as path from 'node:path';
import type { DiskModel } from '../model/disk.js';
import { imgCheck, imgCompare, imgInfo, type CheckOutcome, type QemuInfo } from '../qemu/index.js';
import type { CheckResult } from '../qcow2/types.js';
import { judgeBitmaps } from './bitmap-oracle.js';
import { accessOf, type TraceConfig } from './config.js';
import { writeModelRaw } from './fixture.js';
import { judgeDirtyCheck } from './dirty.js';
import { mediaSizeProblem } from './reader/size.js';
import type { Target } from './targets/types.js';
import { describeMismatch, verifyRange } from './verify.js';

/** 'repair': a hostile-image entry's repair and the image it left (replay-hostile.ts). */
export type OracleName =
  | 'op'
  | 'read'
  | 'snapshot-read'
  | 'check'
  | 'compare'
  | 'info'
  | 'bitmap'
  | 'own-check'
  | 'crash'
  | 'hang'
  | 'exception'
  | 'cost'
  | 'repair';

export interface Failure {
  oracle: OracleName;
  message: string;
  /** 1-based number of the op after which it was detected (0 = at setup, undefined = at the end). */
  opIndex?: number;
}

export interface EndResult {
  failure?: Failure;
  qemuImgChecks: number;
}

export interface EndOptions {
  /** Why leaks (not corruptions) are tolerated in this run (a known bug of the target). */
  tolerateLeaks?: string;
}

/**
 * Whose reads are checked against the model, in order: a reader target's
 * producer first (so what was written is checked before what was read), then
 * the target. Labels stay empty for ordinary targets, keeping their messages.
 */
export function readViews(target: Target): { label: string; target: Target }[] {
  if (!target.producer) return [{ label: '', target }];
  return [
    { label: `producer ${target.producer.name}: `, target: target.producer },
    { label: `reader ${target.name}: `, target },
  ];
}

/**
 * Promise.all that waits for every promise before rethrowing the first
 * rejection: when one reader fails, no qemu-img still writes into the run's
 * directory while it is removed.
 */
async function settleAll<T extends readonly unknown[]>(ps: { readonly [K in keyof T]: Promise<T[K]> }): Promise<{ -readonly [K in keyof T]: T[K] }> {
  const r = await Promise.allSettled(ps as readonly Promise<unknown>[]);
  const bad = r.find((x): x is PromiseRejectedResult => x.status === 'rejected');
  if (bad) throw bad.reason;
  return r.map((x) => (x as PromiseFulfilledResult<unknown>).value) as unknown as { -readonly [K in keyof T]: T[K] };
}

export async function endOracles(
  target: Target,
  model: DiskModel,
  config: TraceConfig,
  dir: string,
  o: EndOptions = {},
): Promise<EndResult> {
  await target.sync();
  const image = target.imagePath();
  const snaps = model.snapshots.map((s) => ({ ...s, layer: model.snapshotLayer(s.id)! }));
  const modelRaw = path.join(dir, 'model.raw');
  // Unspecified sectors are filled from what the target shows, so the model file
  // can be written up front (and compare run alongside) only when there are none.
  const early = model.active.undefinedSectors.size === 0;
  if (early) writeModelRaw(modelRaw, model, model.active);
  // An encrypted image opens only with its secret, in every oracle (config.ts accessOf).
  const access = accessOf(config);
  const compare = () => imgCompare(image, modelRaw, { formatA: 'qcow2', formatB: 'raw', access });
  // Everything that only reads the image runs at once: each is a process for the qemu target.
  // A reader target is read twice: its producer's view, then the reader's (execute.ts readViews).
  const views = readViews(target);
  const [viewReads, check, info, earlyCmp] = await settleAll([
    settleAll(
      views.map(async (v) => {
        const [whole, snapshots] = await settleAll([
          v.target.read(0, model.size),
          settleAll(snaps.map((s) => v.target.readSnapshot(s.id, s.layer.size))),
        ] as const);
        return { label: v.label, whole, snapshots };
      }),
    ),
    imgCheck(image, { access }),
    imgInfo(image, { format: 'qcow2', access }),
    early ? compare() : Promise.resolve(undefined),
  ] as const);
  for (const v of views) {
    const sized = await mediaSizeProblem(v.target, model.size, 'at the end', v.label);
    if (sized) return { failure: { oracle: 'read', message: sized }, qemuImgChecks: 1 };
  }
  for (const v of viewReads) {
    const m = verifyRange(model, model.active, 0, v.whole);
    if (m) return { failure: { oracle: 'read', message: describeMismatch(`${v.label}whole disk at the end`, m) }, qemuImgChecks: 1 };
    for (let i = 0; i < snaps.length; i++) {
      const s = snaps[i]!;
      const sm = verifyRange(model, s.layer, 0, v.snapshots[i]!);
      if (sm) {
        return {
          failure: { oracle: 'snapshot-read', message: describeMismatch(`${v.label}snapshot id ${s.id} ('${s.name}')`, sm) },
          qemuImgChecks: 1,
        };
      }
    }
  }
  const active = viewReads[0]!.whole;
  if (!early) writeModelRaw(modelRaw, model, model.active, active);
  const cmp = earlyCmp ?? (await compare());

  // An image left marked dirty may carry stale refcounts, which repair must fix (./dirty.ts): one
  // never closed cleanly (config.dirty), or one whose last close failed to write its lazy refcounts
  // (a fault op: QEMU's qcow2_inactivate then leaves the dirty bit set, as lazy_refcounts=on intends).
  const checkProblem =
    model.dirtyFlagUnknown && info['dirty-flag'] ? await judgeDirtyCheck(check, image, modelRaw, access) : judgeCheck(check, o.tolerateLeaks !== undefined);
  if (checkProblem) return { failure: { oracle: 'check', message: checkProblem }, qemuImgChecks: 1 };
  if (cmp.rc !== 0) {
    return {
      failure: { oracle: 'compare', message: `qemu-img compare with the model (rc ${cmp.rc}): ${(cmp.stdout + cmp.stderr).trim()}` },
      qemuImgChecks: 1,
    };
  }
  const infoProblem = judgeInfo(info, model, config);
  if (infoProblem) return { failure: { oracle: 'info', message: infoProblem }, qemuImgChecks: 1 };
  const bitmapProblem = await judgeBitmaps(target, model, image, info, access);
  if (bitmapProblem) return { failure: { oracle: 'bitmap', message: bitmapProblem }, qemuImgChecks: 1 };

  if (target.ownCheck) {
    const own = await target.ownCheck();
    const ownProblem = judgeOwnCheck(own, check);
    if (ownProblem) return { failure: { oracle: 'own-check', message: ownProblem }, qemuImgChecks: 1 };
  }
  return { qemuImgChecks: 1 };
}

export function judgeCheck(c: CheckOutcome, tolerateLeaks = false): string | undefined {
  const j = c.json;
  const leaksOnly = c.rc === 3 && j !== undefined && (j.corruptions ?? 0) === 0 && j['check-errors'] === 0;
  if (tolerateLeaks && leaksOnly) return undefined;
  if (c.rc !== 0 || !j || j['check-errors'] !== 0 || (j.corruptions ?? 0) > 0 || (j.leaks ?? 0) > 0) {
    const counts = j ? `corruptions=${j.corruptions ?? 0} leaks=${j.leaks ?? 0} check-errors=${j['check-errors']}` : 'no JSON';
    const detail = c.stderr.split('\n').filter(Boolean).slice(0, 4).join(' | ');
    return `qemu-img check rc ${c.rc}: ${counts}${detail ? `: ${detail}` : ''}`;
  }
  return undefined;
}

export function judgeInfo(info: QemuInfo, model: DiskModel, config: TraceConfig): string | undefined {
  const d = info['format-specific']?.data;
  const problems: string[] = [];
  const want = (what: string, got: unknown, exp: unknown) => {
    if (got !== exp) problems.push(`${what} is ${JSON.stringify(got)}, model says ${JSON.stringify(exp)}`);
  };
  want('virtual-size', info['virtual-size'], model.size);
  want('cluster-size', info['cluster-size'], config.clusterSize);
  if (!model.dirtyFlagUnknown) want('dirty-flag', info['dirty-flag'] ?? false, false);
  want('compat', d?.compat, model.meta.compat);
  want('refcount-bits', d?.['refcount-bits'], model.meta.refcountBits);
  want('lazy-refcounts', d?.['lazy-refcounts'] ?? false, model.meta.lazyRefcounts);
  want('corrupt', d?.corrupt ?? false, false);
  if (model.meta.compat === '1.1') {
    want('extended-l2', d?.['extended-l2'] ?? false, model.meta.extendedL2);
    want('compression-type', d?.['compression-type'] ?? 'zlib', model.meta.compressionType);
  }
  const snaps = (info.snapshots ?? []).map((s) => `${s.id}:${s.name}`).join(',');
  want('snapshots', snaps, model.snapshots.map((s) => `${s.id}:${s.name}`).join(','));
  want('backing file', info['backing-filename'] !== undefined, config.backing !== undefined);
  want('encrypted', info.encrypted ?? false, config.encrypt !== undefined);
  want('encrypt format', d?.encrypt?.format, config.encrypt?.format);
  want('data file', d?.['data-file'] !== undefined, config.dataFile !== undefined);
  if (config.dataFile) want('data-file-raw', d?.['data-file-raw'], config.dataFile.raw);
  return problems.length ? `qemu-img info: ${problems.join('; ')}` : undefined;
}

/** Our check must reach qemu-img's verdict with the same counts. */
export function judgeOwnCheck(own: CheckResult, q: CheckOutcome): string | undefined {
  const j = q.json;
  if (!j) return undefined;
  const pairs: [string, number, number][] = [
    ['corruptions', own.corruptions, j.corruptions ?? 0],
    ['leaks', own.leaks, j.leaks ?? 0],
    ['check-errors', own.checkErrors, j['check-errors']],
    ['image-end-offset', own.imageEndOffset, j['image-end-offset'] ?? own.imageEndOffset],
    ['total-clusters', own.totalClusters, j['total-clusters'] ?? own.totalClusters],
    ['allocated-clusters', own.allocatedClusters, j['allocated-clusters'] ?? 0],
    ['fragmented-clusters', own.fragmentedClusters, j['fragmented-clusters'] ?? 0],
    ['compressed-clusters', own.compressedClusters, j['compressed-clusters'] ?? 0],
  ];
  const diff = pairs.filter(([, a, b]) => a !== b).map(([k, a, b]) => `${k} ours ${a} qemu-img ${b}`);
  return diff.length ? `our check disagrees with qemu-img check: ${diff.join('; ')}` : undefined;
}
