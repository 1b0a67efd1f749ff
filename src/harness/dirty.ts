/**
 * The check oracle on an image left dirty by lazy refcounts (config.dirty, or
 * a fault op whose close could not write the refcounts: DiskModel.dirtyFlagUnknown).
 * QEMU writes refcounts lazily there and repairs them at the next read-write
 * open (qcow2_do_open -> qcow2_check with BDRV_FIX_ERRORS | BDRV_FIX_LEAKS),
 * so `qemu-img check` without -r reports every cluster allocated since the
 * image was marked dirty (QEMU 7.2, checked: rc 2, two corruptions a cluster,
 * "refcount=0 reference=1" and "OFLAG_COPIED ... refcount=0") and, for
 * clusters freed, leaks. Those refcount mismatches are what a dirty image may
 * have, and nothing else; and once repaired the image must check clean and
 * still hold what the model says.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { imgCheck, imgCompare, imgInfo, type CheckOutcome, type ImageAccess } from '../qemu/index.js';

/** qcow2-refcount.c's lines for a refcount out of step with the references (compare_refcounts, check_oflag_copied). */
const REFCOUNT_MISMATCH = [
  /^(ERROR|Leaked) cluster \d+ refcount=\d+ reference=\d+$/,
  /^ERROR OFLAG_COPIED data cluster: l2_entry=[0-9a-f]+ refcount=\d+$/,
  /^ERROR OFLAG_COPIED L2 cluster: l1_index=\d+ l1_entry=[0-9a-f]+ refcount=\d+$/,
];

/** Lines of a no-repair check that are not refcount mismatches. */
export function nonRefcountErrors(c: CheckOutcome): string[] {
  return c.stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !REFCOUNT_MISMATCH.some((re) => re.test(l)));
}

/**
 * Judges `check` of a dirty image: undefined when its only complaints are
 * refcount mismatches and a repaired copy checks clean and compares equal to
 * `modelRaw`; else the problem, for the check oracle.
 */
export async function judgeDirtyCheck(check: CheckOutcome, image: string, modelRaw: string, access?: ImageAccess): Promise<string | undefined> {
  const j = check.json;
  if (!j) return `qemu-img check of the dirty image (rc ${check.rc}): no JSON: ${check.stderr.trim().split('\n')[0] ?? ''}`;
  if (j['check-errors'] !== 0) return `qemu-img check of the dirty image: check-errors=${j['check-errors']}`;
  const other = nonRefcountErrors(check);
  if (other.length) return `qemu-img check of the dirty image reports more than stale refcounts: ${other.slice(0, 3).join(' | ')}`;
  const copy = path.join(path.dirname(image), 'dirty-repaired.qcow2');
  fs.copyFileSync(image, copy);
  try {
    const repair = await imgCheck(copy, { repair: 'all', access });
    if (repair.rc !== 0) return `qemu-img check -r all of the dirty image (rc ${repair.rc}) left errors: ${repair.stderr.trim().split('\n').slice(0, 3).join(' | ')}`;
    // The three only read the repaired copy, so they run at once (one wait instead of three); they are
    // judged in the order they used to run in, a call's error surfacing only where that call is judged.
    const [again, info, cmp] = await Promise.allSettled([
      imgCheck(copy, { access }),
      imgInfo(copy, { format: 'qcow2', access }),
      imgCompare(copy, modelRaw, { formatA: 'qcow2', formatB: 'raw', access }),
    ]);
    const a = valueOf(again);
    if (a.rc !== 0) return `after qemu-img check -r all, check is still rc ${a.rc}: ${a.stderr.trim().split('\n').slice(0, 3).join(' | ')}`;
    if (valueOf(info)['dirty-flag']) return 'after qemu-img check -r all the image is still marked dirty';
    const c = valueOf(cmp);
    if (c.rc !== 0) return `the repaired image differs from the model (qemu-img compare rc ${c.rc}): ${(c.stdout + c.stderr).trim()}`;
    return undefined;
  } finally {
    fs.rmSync(copy, { force: true });
  }
}


/** A settled call's value, or its error thrown (as awaiting the call itself would have). */
function valueOf<T>(r: PromiseSettledResult<T>): T {
  if (r.status === 'rejected') throw r.reason;
  return r.value;
}
