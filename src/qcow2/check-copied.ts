/**
 * qemu-img check's OFLAG_COPIED pass (block/qcow2-refcount.c: check_oflag_copied), after the refcount
 * comparison: the pass, and the table and entry helpers it shares with check.ts's refcount walk.
 */
import type { CachedTable } from './cache.js';
import type { StoredRefcounts } from './check-stored.js';
import { viewOf } from './format/bytes.js';
import { OFLAG_COMPRESSED_HI } from './format/constants.js';
import { ClusterType, entryOffset, isCopied, withCopied } from './format/entries.js';
import type { ImageState } from './state.js';
import { walkTree } from './tree-walk.js';
import type { CheckResult } from './types.js';

/** An entry's 64 bits in hex as QEMU prints them (PRIx64: no leading zeros). */
export function hex64(hi: number, lo: number): string {
  return hi === 0 ? (lo >>> 0).toString(16) : (hi >>> 0).toString(16) + (lo >>> 0).toString(16).padStart(8, '0');
}

/** An L2 table as check sees it: the cached copy if any (it may be newer), else the bytes on disk, uncached. */
export function readL2(img: ImageState, offset: number): CachedTable {
  const cached = img.l2Cache.peek(offset);
  const data = cached ? cached.data : img.storage.read(offset, img.clusterSize);
  return { offset, data, view: viewOf(data), dirty: false };
}

/**
 * check_oflag_copied: OFLAG_COPIED of every active L1 and L2 entry against the stored refcount of the cluster
 * it points to (set exactly when the refcount is 1); `repair` says whether a wrong flag is rewritten or
 * counted as a corruption. `memo` holds the L2 tables the refcount walk read, in a check that repairs nothing.
 */
export function checkOflagCopied(img: ImageState, res: CheckResult, repair: boolean, memo: Map<number, CachedTable> | undefined, stored: StoredRefcounts): void {
  const cs = img.clusterSize;
  const layout = img.layout;
  const dataFile = img.hasDataFile;
  let aligned = true;
  walkTree(img, img.l1, {
    enter(i, l2Offset) {
      aligned = l2Offset % cs === 0;
      const rc = stored.get(Math.floor(l2Offset / cs));
      if (rc === undefined) return false;
      if ((rc === 1) !== img.l1.copiedAt(i)) {
        const l1Entry = img.l1.rawAt(i);
        if (repair) {
          res.messages.push(`Repairing OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${l1Entry.toString(16)} refcount=${rc}`);
          img.l1.setHi(i, withCopied(img.l1.hiAt(i), rc === 1));
          img.writeL1Entry(i);
          res.corruptionsFixed++;
        } else {
          res.messages.push(`ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${l1Entry.toString(16)} refcount=${rc}`);
          res.corruptions++;
        }
      }
      return true;
    },
    // A misaligned table is read where it points (QEMU does) but only reported, never repaired.
    load: (l2Offset) => (aligned ? (memo?.get(l2Offset) ?? img.l2Cache.get(l2Offset)) : readL2(img, l2Offset)),
    // Most entries agree with their refcount; only the others are decoded (the same test as entry's below).
    wants(hi, lo) {
      if (hi & OFLAG_COMPRESSED_HI) return false;
      // With a data file an entry at offset 0 may be a data cluster (layout.type decides).
      if (dataFile) return true;
      const offset = entryOffset(hi, lo);
      if (offset === 0) return false;
      const drc = stored.get(Math.floor(offset / cs));
      return drc !== undefined && (drc === 1) !== isCopied(hi);
    },
    entry(e, type, j, table) {
      if (type !== ClusterType.Normal && type !== ClusterType.ZeroAlloc) return;
      // Misaligned offsets are checked too, at the cluster they fall in (QEMU: offset >> cluster_bits).
      // check_oflag_copied: data file clusters always count as refcount 1.
      const drc = dataFile ? 1 : stored.get(Math.floor(layout.offset(e) / cs));
      if (drc === undefined) return;
      if ((drc === 1) !== isCopied(e.hi)) {
        const entry = hex64(e.hi, e.lo);
        if (repair && aligned) {
          res.messages.push(`Repairing OFLAG_COPIED data cluster: l2_entry=${entry} refcount=${drc}`);
          layout.set(table, j, { ...e, hi: withCopied(e.hi, drc === 1) });
          res.corruptionsFixed++;
        } else {
          res.messages.push(`ERROR OFLAG_COPIED data cluster: l2_entry=${entry} refcount=${drc}`);
          res.corruptions++;
        }
      }
    },
  });
  if (repair) img.flush();
}
