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
  const l1 = img.l1;
  // Not a walkTree visitor: at 512 B clusters this pass meets a quarter million entries, and the walk's
  // calls into a visitor (megamorphic across its users) cost more than the test itself. The loop below
  // reads each entry's two words and goes to the decoded entry only for the few that disagree.
  for (let i = 0; i < l1.entries; i++) {
    const l2Offset = l1.l2OffsetAt(i);
    if (l2Offset === 0) continue;
    const aligned = l2Offset % cs === 0;
    const rc = stored.get(Math.floor(l2Offset / cs));
    if (rc === undefined) continue;
    if ((rc === 1) !== l1.copiedAt(i)) {
      const l1Entry = l1.rawAt(i);
      if (repair) {
        res.messages.push(`Repairing OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${l1Entry.toString(16)} refcount=${rc}`);
        l1.setHi(i, withCopied(l1.hiAt(i), rc === 1));
        img.writeL1Entry(i);
        res.corruptionsFixed++;
      } else {
        res.messages.push(`ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${l1Entry.toString(16)} refcount=${rc}`);
        res.corruptions++;
      }
    }
    // A misaligned table is read where it points (QEMU does) but only reported, never repaired.
    const table = aligned ? (memo?.get(l2Offset) ?? img.l2Cache.get(l2Offset)) : readL2(img, l2Offset);
    const view = table.view;
    for (let j = 0, p = 0; j < layout.entries; j++, p += layout.entrySize) {
      const hi = view.getUint32(p);
      if (hi & OFLAG_COMPRESSED_HI) continue;
      // With a data file an entry at offset 0 may be a data cluster (layout.type decides), and every
      // data cluster counts as refcount 1 (check_oflag_copied).
      if (!dataFile) {
        const offset = entryOffset(hi, view.getUint32(p + 4));
        if (offset === 0) continue;
        const drc = stored.get(Math.floor(offset / cs));
        if (drc === undefined || (drc === 1) === isCopied(hi)) continue;
      }
      copiedEntry(img, res, stored, repair && aligned, table, j);
    }
  }
  if (repair) img.flush();
}

/** One L2 entry whose OFLAG_COPIED may disagree with its cluster's refcount: reported, or rewritten when `fix`. */
function copiedEntry(img: ImageState, res: CheckResult, stored: StoredRefcounts, fix: boolean, table: CachedTable, j: number): void {
  const layout = img.layout;
  const e = layout.get(table, j);
  const type = layout.type(e);
  if (type !== ClusterType.Normal && type !== ClusterType.ZeroAlloc) return;
  // Misaligned offsets are checked too, at the cluster they fall in (QEMU: offset >> cluster_bits).
  const drc = img.hasDataFile ? 1 : stored.get(Math.floor(layout.offset(e) / img.clusterSize));
  if (drc === undefined) return;
  if ((drc === 1) !== isCopied(e.hi)) {
    const entry = hex64(e.hi, e.lo);
    if (fix) {
      res.messages.push(`Repairing OFLAG_COPIED data cluster: l2_entry=${entry} refcount=${drc}`);
      layout.set(table, j, { ...e, hi: withCopied(e.hi, drc === 1) });
      res.corruptionsFixed++;
    } else {
      res.messages.push(`ERROR OFLAG_COPIED data cluster: l2_entry=${entry} refcount=${drc}`);
      res.corruptions++;
    }
  }
}
