/**
 * Consistency check and repair with qemu-img check's semantics
 * (block/qcow2-refcount.c: calculate_refcounts, compare_refcounts,
 * check_oflag_copied; qemu-img's double check after a repair): walk every
 * reference from the header, active and snapshot L1/L2 tables, the snapshot
 * table, the refcount table and blocks, the encryption header and bitmaps,
 * then compare with the stored refcounts.
 */
import type { CachedTable } from './cache.js';
import { CorruptImageError, InvalidImageError, Qcow2Error, ReadOnlyError } from './errors.js';
import { viewOf } from './format/bytes.js';
import {
  BITMAP_TABLE_ENTRY_SIZE,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  L1_ENTRY_SIZE,
  L2_ENTRY_SIZE,
  L2_RESERVED_HI,
  L2_RESERVED_LO,
  MAX_L1_BYTES,
  OFLAG_COMPRESSED_HI,
  OFLAG_ZERO_LO,
  REFTABLE_OFFSET_ALIGN,
} from './format/constants.js';
import { ClusterType, decodeCompressed, entryOffset, isCopied, l1ReservedBits, l2ReservedBits, withCopied } from './format/entries.js';
import { BITMAP_TABLE_OFFSET_MASK } from './format/bitmaps.js';
import { hasBitmapDirectory, loadBitmapList, loadBitmapTable } from './bitmaps.js';
import { snapshotL1Problem } from './snapshot-table-io.js';
import { L1Table } from './l1-table.js';
import { ALL_SUBCLUSTERS, type L2Entry } from './l2.js';
import { MetaKind } from './overlap.js';
import { installRefcountStructure } from './refcount-rebuild.js';
import { StoredRefcounts } from './check-stored.js';
import type { ImageState } from './state.js';
import { checkOflagCopied, hex64, readL2 } from './check-copied.js';
import type { CheckResult, RepairMode } from './types.js';

const FIX_LEAKS = 1;
const FIX_ERRORS = 2;

/**
 * The check stopped where qemu-img's returns an error (-EINVAL): the image
 * is inconsistent in a way the refcount walk cannot get past. Carries what
 * was counted up to there; the CLI reports "Check failed" and exits 1.
 */
export class CheckGaveUpError extends CorruptImageError {
  constructor(
    message: string,
    readonly partial: CheckResult,
  ) {
    super(message);
  }
}

interface Counts {
  table: Float64Array;
  size: number;
  /**
   * Active L2 tables as the refcount walk read them, for the OFLAG_COPIED
   * walk to reuse in a check that repairs nothing (so nothing can change
   * them in between): one read per table instead of two, which is most of a
   * check's time on an image of small clusters. Bounded by L2_MEMO_BYTES;
   * tables past the budget are read again, as before.
   */
  memo?: Map<number, CachedTable>;
  memoBytes: number;
}

const L2_MEMO_BYTES = 64 * 1024 * 1024;

/** Bits that are clear in a standard L2 entry for a plain data cluster: compressed, reserved, zero (OFLAG_COPIED may be set). */
const PLAIN_DATA_CLEAR_HI = OFLAG_COMPRESSED_HI | L2_RESERVED_HI;
const PLAIN_DATA_CLEAR_LO = OFLAG_ZERO_LO | L2_RESERVED_LO;

function emptyResult(): CheckResult {
  return {
    checkErrors: 0,
    corruptions: 0,
    leaks: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    imageEndOffset: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
    messages: [],
  };
}

/**
 * One check pass with the requested repair (bdrv_check). qemu-img's second,
 * read-only pass after a repair is the caller's (the CLI does it).
 */
export function checkImage(img: ImageState, repair: RepairMode): CheckResult {
  const fix = repair === 'all' ? FIX_LEAKS | FIX_ERRORS : repair === 'leaks' ? FIX_LEAKS : 0;
  if (fix && img.readOnly) throw new ReadOnlyError('repairing needs the image open read-write');
  return checkPass(img, fix);
}

/**
 * Appends one pass's report lines: a garbage L2 table of a 2 MiB-cluster
 * image yields a line per entry, hundreds of thousands, more arguments than
 * push(...lines) may pass (RangeError: Maximum call stack size exceeded).
 */
function appendMessages(res: CheckResult, lines: readonly string[]): void {
  for (const l of lines) res.messages.push(l);
}

/**
 * One bdrv_check pass (qcow2_co_check_locked): count every reference,
 * compare with the stored refcounts, repair what `fix` allows (leaks,
 * errors, or a full refcount rebuild when a block is missing or broken),
 * then check OFLAG_COPIED.
 *
 * Returns the findings; it throws only what the storage or a repair write
 * throws (a refused write marks the image corrupt and propagates), and a
 * CheckGaveUpError where qemu-img's check returns an error. State left on
 * failure: entry repairs written before the failure are on disk, refcount
 * repairs still in the refcount cache are not (a refused write makes the
 * image read-only, so nothing more is flushed, as QEMU drops its caches);
 * nothing a repair writes is left half-pointed-to, since a rebuilt
 * structure only takes effect with its header write.
 */
export function checkPass(img: ImageState, fix: number): CheckResult {
  if (!img.readOnly) img.flush();
  const res = emptyResult();
  const cs = img.clusterSize;
  const fileSize = img.storage.size();
  let nbClusters = Math.ceil(fileSize / cs);
  res.totalClusters = Math.ceil(img.virtualSize / cs);
  const state = { rebuild: false };
  let counts = calculate(img, res, fix, nbClusters, state);
  const pre = { ...res, messages: [...res.messages] };
  nbClusters = Math.max(nbClusters, counts.size);
  // A pass that repairs nothing reads the stored refcounts once, for the compare and the OFLAG_COPIED walk.
  const stored = new StoredRefcounts(img, fix === 0 ? nbClusters : undefined);
  let highest = compare(img, res, 0, state, counts, nbClusters, stored);
  if (state.rebuild && fix & FIX_ERRORS) {
    const old = { ...res };
    res.messages.push('Rebuilding refcount structure');
    rebuildRefcounts(img, counts, nbClusters);
    res.corruptions = 0;
    res.leaks = 0;
    state.rebuild = false;
    nbClusters = Math.ceil(img.storage.size() / cs);
    // qcow2_check_refcounts recounts into the same result: what the walk still finds (references
    // past the end of the file, bad entries) stays a corruption and is not counted as fixed. The
    // fragmentation figures of the recount are dropped: qemu-img reports its second pass's.
    const recount = emptyResult();
    counts = calculate(img, recount, 0, nbClusters, state);
    res.corruptions += recount.corruptions;
    res.checkErrors += recount.checkErrors;
    appendMessages(res, recount.messages);
    nbClusters = Math.max(nbClusters, counts.size);
    let freshLeaks = 0;
    if (fix & FIX_LEAKS) {
      const leakRes = emptyResult();
      highest = compare(img, leakRes, FIX_LEAKS, state, counts, nbClusters);
      if (state.rebuild) res.messages.push('ERROR rebuilt refcount structure is still broken');
      freshLeaks = leakRes.leaks;
      appendMessages(res, leakRes.messages);
    }
    if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fix) {
    if (state.rebuild) {
      // qcow2_check_refcounts returns -EIO here: qemu-img says "Check failed" and prints no counts.
      res.messages.push('ERROR need to rebuild refcount structures');
      res.checkErrors++;
      throw new CheckGaveUpError('the refcount structure needs a rebuild, which only check -r all does: Input/output error', res);
    }
    if (res.leaks || res.corruptions) {
      Object.assign(res, pre, { messages: pre.messages });
      highest = compare(img, res, fix, state, counts, nbClusters);
    }
  }
  // Only a pass that repairs nothing may reuse what the walk read (the recount after a rebuild is
  // read-only itself, but this pass then repairs).
  // check_oflag_copied: -r all always repairs; -r leaks only when nothing else is wrong, for the
  // refcounts are then exact (the leak repair just ran).
  const repairCopied = fix & FIX_ERRORS ? true : fix & FIX_LEAKS ? res.checkErrors === 0 && res.corruptions === 0 && res.leaks === 0 : false;
  checkOflagCopied(img, res, repairCopied, fix === 0 ? counts.memo : undefined, fix === 0 ? stored : new StoredRefcounts(img));
  res.imageEndOffset = (highest + 1) * cs;
  if (fix && res.checkErrors === 0 && res.corruptions === 0) markCleanAndConsistent(img);
  return res;
}

/** qcow2_mark_clean then qcow2_mark_consistent: the repairs are durable before the header says so. */
function markCleanAndConsistent(img: ImageState): void {
  img.flush();
  const h = img.header;
  if (h.incompatibleFeatures & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)) {
    h.incompatibleFeatures &= ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
    img.writeHeader();
    img.storage.flush();
  }
}

// ------------------------------------------------------------------ walking references

/** The offset field of a compressed entry in hex, exact (a hostile one may pass 2^53; QEMU prints l2_entry & cluster_offset_mask). */
function compressedOffsetHex(hi: number, lo: number, clusterBits: number): string {
  const hiOffsetBits = 62 - (clusterBits - 8) - 32;
  return hex64(hi & ((1 << hiOffsetBits) - 1), lo);
}

function inc(img: ImageState, res: CheckResult, c: Counts, offset: number, size: number): void {
  if (size <= 0) return;
  const cs = img.clusterSize;
  const fileLen = img.storage.size();
  if (offset + size - fileLen >= cs) {
    res.messages.push(
      `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${offset.toString(16)} size 0x${size.toString(16)}`,
    );
    res.corruptions++;
    return;
  }
  const first = Math.floor(offset / cs);
  const last = Math.floor((offset + size - 1) / cs);
  for (let k = first; k <= last; k++) {
    if (k >= c.table.length) {
      const grown = new Float64Array(Math.max(k + 1, c.table.length * 2));
      grown.set(c.table);
      c.table = grown;
    }
    if (c.table[k] >= img.refcounts.max) {
      res.messages.push(`ERROR: overflow cluster offset=0x${(k * cs).toString(16)}`);
      res.corruptions++;
      continue;
    }
    c.table[k]++;
    if (k + 1 > c.size) c.size = k + 1;
  }
}

function calculate(img: ImageState, res: CheckResult, fix: number, nbClusters: number, state: { rebuild: boolean }): Counts {
  const h = img.header;
  const cs = img.clusterSize;
  const c: Counts = { table: new Float64Array(Math.max(nbClusters, 1)), size: nbClusters, memo: fix === 0 ? new Map() : undefined, memoBytes: 0 };
  inc(img, res, c, 0, cs);
  checkL1(img, res, c, h.l1TableOffset, h.l1Size, true, fix);
  if (img.hasDataFile && img.snapshots.length > 0) {
    res.messages.push(`ERROR ${img.snapshots.length} snapshots in image with data file`);
    res.corruptions++;
  }
  if (img.snapshotTableIncompleteAt !== undefined) {
    res.messages.push(`ERROR snapshot table entry ${img.snapshotTableIncompleteAt} is incomplete`);
    res.corruptions++;
  }
  for (const sn of img.snapshots) {
    const problem = snapshotL1Problem(img, sn);
    if (problem) {
      res.messages.push(`ERROR snapshot ${sn.id} (${sn.name}) ${problem}`);
      res.corruptions++;
      continue;
    }
    checkL1(img, res, c, sn.l1TableOffset, sn.l1Size, false, fix);
  }
  if (h.nbSnapshots > 0) inc(img, res, c, h.snapshotsOffset, img.snapshotTableBytes);
  inc(img, res, c, h.refcountTableOffset, h.refcountTableClusters * cs);
  if (img.ext.cryptoHeader && img.ext.cryptoHeader.length > 0) {
    inc(img, res, c, img.ext.cryptoHeader.offset, img.ext.cryptoHeader.length);
  }
  countBitmaps(img, res, c);
  checkRefblocks(img, res, c, nbClusters, state, fix);
  return c;
}

/**
 * qcow2_check_bitmaps_refcounts: the directory, every bitmap's table and
 * the data clusters it names. A directory or table QEMU cannot load
 * (bitmap_list_load, bitmap_table_load) is a corruption that ends the check
 * with EINVAL: qemu-img says "Check failed: Invalid argument" and exits 1,
 * whatever else it found. Open loads the same directory, but a table is
 * loaded there only for bitmaps not in use, so an in-use bitmap's table is
 * first validated here.
 */
function countBitmaps(img: ImageState, res: CheckResult, c: Counts): void {
  if (!hasBitmapDirectory(img)) return;
  const b = img.ext.bitmaps!;
  const cs = img.clusterSize;
  inc(img, res, c, b.bitmapDirectoryOffset, b.bitmapDirectorySize);
  const dir = loadOrGiveUp(res, 'bitmap directory', () => loadBitmapList(img));
  for (const bm of dir) {
    inc(img, res, c, bm.bitmapTableOffset, bm.bitmapTableSize * BITMAP_TABLE_ENTRY_SIZE);
    const table = loadOrGiveUp(res, `bitmap table of '${bm.name}'`, () => loadBitmapTable(img, bm.bitmapTableOffset, bm.bitmapTableSize));
    for (const entry of table) {
      const off = Number(entry & BITMAP_TABLE_OFFSET_MASK);
      if (off !== 0) inc(img, res, c, off, cs);
    }
  }
}

/** Runs a bitmap load; QEMU's refusal is counted as a corruption and ends the check (CheckGaveUpError). */
function loadOrGiveUp<T>(res: CheckResult, what: string, load: () => T): T {
  try {
    return load();
  } catch (e) {
    // Only the engine's own refusals (bad directory or table); bugs and storage errors propagate as they are.
    if (!(e instanceof InvalidImageError)) throw e;
    res.corruptions++;
    throw new CheckGaveUpError(`${what} cannot be loaded (${e.message}): Invalid argument`, res);
  }
}

function checkL1(img: ImageState, res: CheckResult, c: Counts, l1Offset: number, l1Size: number, active: boolean, fix: number): void {
  const bytes = l1Size * L1_ENTRY_SIZE;
  if (bytes > MAX_L1_BYTES) {
    res.messages.push('ERROR: L1 size too big');
    res.corruptions++;
    return;
  }
  inc(img, res, c, l1Offset, bytes);
  if (l1Size === 0) return;
  const l1 = active ? img.l1 : L1Table.read(img.storage, l1Offset, l1Size);
  for (let i = 0; i < l1Size; i++) {
    const hi = l1.hiAt(i);
    const lo = l1.loAt(i);
    if (hi === 0 && lo === 0) continue;
    if (l1ReservedBits(hi, lo)) {
      res.messages.push(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`);
      res.corruptions++;
    }
    const l2Offset = entryOffset(hi, lo);
    inc(img, res, c, l2Offset, img.clusterSize);
    if (l2Offset % img.clusterSize !== 0) {
      res.messages.push(`ERROR l2_offset=${l2Offset.toString(16)}: Table is not cluster aligned; L1 entry corrupted`);
      res.corruptions++;
    }
    checkL2(img, res, c, l2Offset, active, fix);
  }
}

/**
 * Overwrites the standard part of one L2 entry in place (repair). A write
 * that would land on other metadata (the "L2 table" is really the header, a
 * refcount block, ...) marks the image corrupt and throws, ending the check
 * as QEMU's fix_l2_entry_by_zero does (its overlap check ignores only the
 * kind of L2 table being walked: active, or inactive for a snapshot's).
 */
function rewriteL2Entry(img: ImageState, l2Offset: number, index: number, lo: number, active: boolean): void {
  const at = l2Offset + index * img.layout.entrySize;
  // Only the standard 8-byte part: with extended L2 the subcluster bitmap stays as it is.
  const bytes = new Uint8Array(L2_ENTRY_SIZE);
  viewOf(bytes).setUint32(4, lo);
  const cached = l2Offset % img.clusterSize === 0 ? img.l2Cache.peek(l2Offset) : undefined;
  // Inactive L2 tables are not in the metadata map; every other kind, active L2 included, is checked.
  img.overlapCheck(at, L2_ENTRY_SIZE, active ? MetaKind.ActiveL2 : undefined);
  img.storage.write(at, bytes);
  img.storage.flush();
  if (cached) cached.data.set(bytes, index * img.layout.entrySize);
}

function checkL2(img: ImageState, res: CheckResult, c: Counts, l2Offset: number, active: boolean, fix: number): void {
  const cs = img.clusterSize;
  const table = readL2(img, l2Offset);
  if (active && c.memo && c.memoBytes + cs <= L2_MEMO_BYTES && l2Offset % cs === 0) {
    c.memo.set(l2Offset, table);
    c.memoBytes += cs;
  }
  const layout = img.layout;
  const dataFile = img.hasDataFile;
  const fileLen = img.storage.size();
  const max = img.refcounts.max;
  let nextContiguous = 0;
  /** A data cluster's share of the counts: the active image's statistics and its reference. */
  const dataCluster = (offset: number): void => {
    if (active) {
      res.allocatedClusters++;
      if (nextContiguous && offset !== nextContiguous) res.fragmentedClusters++;
      nextContiguous = offset + cs;
    }
    // Data clusters in an external data file are not refcounted (check_refcounts_l2).
    if (dataFile) return;
    // inc() inline for an aligned cluster inside the file whose count is below the maximum; inc() for the rest.
    const k = offset / cs;
    if (offset % cs === 0 && offset < fileLen && k < c.table.length && c.table[k]! < max) {
      c.table[k]!++;
      if (k >= c.size) c.size = k + 1;
    } else {
      inc(img, res, c, offset, cs);
    }
  };
  const entry = (i: number, e: L2Entry): void => {
    const type = layout.type(e);
    if (type !== ClusterType.Compressed && l2ReservedBits(e.hi, e.lo)) {
      res.messages.push(`ERROR found l2 entry with reserved bits set: ${hex64(e.hi, e.lo)}`);
      res.corruptions++;
    }
    if (type === ClusterType.Compressed) {
      if (isCopied(e.hi)) {
        res.messages.push(`ERROR: coffset=0x${compressedOffsetHex(e.hi, e.lo, img.clusterBits)}: copied flag must never be set for compressed clusters`);
        res.corruptions++;
        e.hi = withCopied(e.hi, false);
      }
      // check_refcounts_l2: a compressed entry with a data file, or with a non-zero subcluster
      // bitmap, is a corruption and its data is not counted (so its clusters show as leaked).
      if (dataFile) {
        res.messages.push(`ERROR compressed cluster ${i} with data file, entry=0x${hex64(e.hi, e.lo)}`);
        res.corruptions++;
        return;
      }
      if (layout.extended && (e.alloc | e.zero) !== 0) {
        res.messages.push(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(e.hi, e.lo)}`);
        res.corruptions++;
        return;
      }
      const cc = decodeCompressed(e.hi, e.lo, img.clusterBits);
      inc(img, res, c, cc.offset, cc.size);
      if (active) {
        res.allocatedClusters++;
        res.compressedClusters++;
        res.fragmentedClusters++;
      }
    } else if (type === ClusterType.Normal || type === ClusterType.ZeroAlloc) {
      const offset = layout.offset(e);
      if (layout.extended && (e.zero & e.alloc) !== 0) {
        res.messages.push(`ERROR offset=${offset.toString(16)}: Allocated cluster has corrupted subcluster allocation bitmap`);
        res.corruptions++;
      }
      if (offset % cs !== 0) {
        res.corruptions++;
        const containsData = layout.extended ? (e.alloc & ALL_SUBCLUSTERS) !== 0 : type === ClusterType.Normal;
        if (!containsData) {
          const repair = (fix & FIX_ERRORS) !== 0;
          res.messages.push(
            `${repair ? 'Repairing' : 'ERROR'} offset=${offset.toString(16)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
          );
          // Nothing is lost by making it a plain zero cluster (QEMU repairs it so).
          if (repair) {
            rewriteL2Entry(img, l2Offset, i, layout.extended ? 0 : OFLAG_ZERO_LO, active);
            res.corruptions--;
            res.corruptionsFixed++;
            return;
          }
        } else {
          res.messages.push(`ERROR offset=${offset.toString(16)}: Data cluster is not properly aligned; L2 entry corrupted.`);
        }
      }
      dataCluster(offset);
    } else if (type === ClusterType.Unallocated && layout.extended && e.alloc !== 0) {
      res.messages.push('ERROR: Unallocated cluster has corrupted subcluster allocation bitmap');
      res.corruptions++;
    }
  };
  if (layout.extended) {
    for (let i = 0; i < layout.entries; i++) entry(i, layout.get(table, i));
    return;
  }
  // Standard entries that are unallocated, or plain data clusters at an aligned offset (nearly all of a
  // healthy image), are counted from the table's words; every other kind takes the full path above.
  const v = table.view;
  for (let i = 0; i < layout.entries; i++) {
    const hi = v.getUint32(i * L2_ENTRY_SIZE);
    const lo = v.getUint32(i * L2_ENTRY_SIZE + 4);
    if (hi === 0 && lo === 0) continue;
    if ((hi & PLAIN_DATA_CLEAR_HI) === 0 && (lo & PLAIN_DATA_CLEAR_LO) === 0) {
      const offset = entryOffset(hi, lo);
      if (offset !== 0 && offset % cs === 0) {
        dataCluster(offset);
        continue;
      }
    }
    entry(i, layout.get(table, i));
  }
}

function checkRefblocks(img: ImageState, res: CheckResult, c: Counts, nbClusters: number, state: { rebuild: boolean }, fix: number): void {
  const cs = img.clusterSize;
  const rt = img.refcounts;
  for (let i = 0; i < rt.table.length; i++) {
    const raw = rt.rawEntry(i);
    if (raw === 0) continue;
    const offset = rt.table[i];
    if (raw % REFTABLE_OFFSET_ALIGN !== 0) {
      res.messages.push(`ERROR refcount table entry ${i} has reserved bits set`);
      res.corruptions++;
      state.rebuild = true;
      continue;
    }
    if (offset % cs !== 0) {
      res.messages.push(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      res.corruptions++;
      state.rebuild = true;
      continue;
    }
    const cluster = offset / cs;
    if (cluster >= nbClusters) {
      res.corruptions++;
      if (fix & FIX_ERRORS) {
        res.messages.push(`Repairing refcount block ${i} is outside image`);
        // QEMU grows the file to take the block in; it then counts as an allocated, zeroed block.
        try {
          img.storage.truncate(offset + cs);
          res.corruptions--;
          res.corruptionsFixed++;
          inc(img, res, c, offset, cs);
        } catch (e) {
          res.messages.push(`ERROR could not resize image: ${(e as Error).message}`);
          state.rebuild = true;
        }
      } else {
        res.messages.push(`ERROR refcount block ${i} is outside image`);
      }
      continue;
    }
    inc(img, res, c, offset, cs);
    if (c.table[cluster] !== 1) {
      res.messages.push(`ERROR refcount block ${i} refcount=${c.table[cluster]}`);
      res.corruptions++;
      state.rebuild = true;
    }
  }
}

// ------------------------------------------------------------------ comparing

function compare(
  img: ImageState,
  res: CheckResult,
  fix: number,
  state: { rebuild: boolean },
  c: Counts,
  nbClusters: number,
  stored0 = new StoredRefcounts(img),
): number {
  let highest = 0;
  for (let i = 0; i < nbClusters; i++) {
    const stored = stored0.get(i);
    const computed = c.table[i] ?? 0;
    if (stored === undefined) {
      res.messages.push(`ERROR: Can't get refcount for cluster ${i}`);
      res.checkErrors++;
      continue;
    }
    if (stored > 0 || computed > 0) highest = i;
    if (stored === computed) continue;
    let fixed: 'leaks' | 'corruptions' | undefined;
    if (stored === 0) state.rebuild = true;
    else if (stored > computed && fix & FIX_LEAKS) fixed = 'leaks';
    else if (stored < computed && fix & FIX_ERRORS) fixed = 'corruptions';
    const label = fixed ? 'Repairing' : stored < computed ? 'ERROR' : 'Leaked';
    res.messages.push(`${label} cluster ${i} refcount=${stored} reference=${computed}`);
    if (fixed) {
      try {
        img.refcounts.update(i, computed - stored);
        if (fixed === 'leaks') res.leaksFixed++;
        else res.corruptionsFixed++;
        continue;
      } catch (e) {
        // A refused repair write (the engine's own error) is counted as found; bugs propagate.
        if (!(e instanceof Qcow2Error)) throw e;
      }
    }
    if (stored < computed) res.corruptions++;
    else res.leaks++;
  }
  // The repaired refcounts stay in the cache, as update_refcount leaves them: they reach the file
  // with the next flush (OFLAG_COPIED repair, marking the image clean, close). A later repair write
  // that marks the image corrupt leaves them unwritten, as it leaves QEMU's.
  return highest;
}

// ------------------------------------------------------------------ rebuild

/** Replaces the refcount structure with one built from the computed counts (rebuild_refcount_structure). */
function rebuildRefcounts(img: ImageState, c: Counts, nbClusters: number): void {
  installRefcountStructure(img, c.table, c.size, img.refcounts.order, Math.max(nbClusters, c.size));
}
