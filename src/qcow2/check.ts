/**
 * Consistency check and repair with qemu-img check's semantics
 * (block/qcow2-refcount.c: calculate_refcounts, compare_refcounts,
 * check_oflag_copied; qemu-img's double check after a repair): walk every
 * reference from the header, active and snapshot L1/L2 tables, the snapshot
 * table, the refcount table and blocks, the encryption header and bitmaps,
 * then compare with the stored refcounts.
 */
import type { CachedTable } from './cache.js';
import { OverlapError, Qcow2Error, ReadOnlyError } from './errors.js';
import { viewOf } from './format/bytes.js';
import {
  AUTOCLEAR_BITMAPS,
  BITMAP_TABLE_ENTRY_SIZE,
  CHECK_MAX_BITMAP_DIRECTORY_BYTES,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INT64_LIMIT,
  L1_ENTRY_SIZE,
  L2_ENTRY_SIZE,
  MAX_L1_BYTES,
  OFLAG_ZERO_LO,
  REFTABLE_OFFSET_ALIGN,
} from './format/constants.js';
import { ClusterType, decodeCompressed, entryOffset, isCopied, l1ReservedBits, l2ReservedBits, withCopied } from './format/entries.js';
import { decodeBitmapDirectory } from './format/bitmaps.js';
import { snapshotL1Problem } from './snapshot-table-io.js';
import { L1Table } from './l1-table.js';
import { ALL_SUBCLUSTERS } from './l2.js';
import { MetaKind } from './overlap.js';
import { installRefcountStructure } from './refcount-rebuild.js';
import type { ImageState } from './state.js';
import { walkTree } from './tree-walk.js';
import type { CheckResult, RepairMode } from './types.js';

const FIX_LEAKS = 1;
const FIX_ERRORS = 2;

interface Counts {
  table: Float64Array;
  size: number;
}

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
 * One bdrv_check pass (qcow2_co_check_locked): count every reference,
 * compare with the stored refcounts, repair what `fix` allows (leaks,
 * errors, or a full refcount rebuild when a block is missing or broken),
 * then check OFLAG_COPIED.
 *
 * Returns the findings; it throws only what the storage or a repair write
 * throws (a refused write marks the image corrupt and propagates). State
 * left on failure: repairs completed before the failure are on disk (each
 * one is ordered as in normal operation), the rest are not; nothing a repair
 * writes is left half-pointed-to, since a rebuilt structure only takes
 * effect with its header write.
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
  let highest = compare(img, res, 0, state, counts, nbClusters);
  if (state.rebuild && fix & FIX_ERRORS) {
    const old = { ...res };
    res.messages.push('Rebuilding refcount structure');
    rebuildRefcounts(img, counts, nbClusters);
    res.corruptions = 0;
    res.leaks = 0;
    state.rebuild = false;
    nbClusters = Math.ceil(img.storage.size() / cs);
    const scratch = emptyResult();
    counts = calculate(img, scratch, 0, nbClusters, state);
    nbClusters = Math.max(nbClusters, counts.size);
    let freshLeaks = 0;
    if (fix & FIX_LEAKS) {
      const leakRes = emptyResult();
      highest = compare(img, leakRes, FIX_LEAKS, state, counts, nbClusters);
      if (state.rebuild) res.messages.push('ERROR rebuilt refcount structure is still broken');
      freshLeaks = leakRes.leaks;
      res.messages.push(...leakRes.messages);
    }
    if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fix) {
    if (state.rebuild) {
      res.messages.push('ERROR need to rebuild refcount structures');
      res.checkErrors++;
      return res;
    }
    if (res.leaks || res.corruptions) {
      Object.assign(res, pre, { messages: pre.messages });
      highest = compare(img, res, fix, state, counts, nbClusters);
    }
  }
  checkOflagCopied(img, res, fix);
  res.imageEndOffset = (highest + 1) * cs;
  if (fix && res.checkErrors === 0 && res.corruptions === 0) markCleanAndConsistent(img);
  return res;
}

function markCleanAndConsistent(img: ImageState): void {
  const h = img.header;
  if (h.incompatibleFeatures & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)) {
    h.incompatibleFeatures &= ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
    img.writeHeader();
    img.storage.flush();
  }
}

// ------------------------------------------------------------------ walking references

function hex64(hi: number, lo: number): string {
  return hi === 0 ? (lo >>> 0).toString(16) : (hi >>> 0).toString(16) + (lo >>> 0).toString(16).padStart(8, '0');
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
  const c: Counts = { table: new Float64Array(Math.max(nbClusters, 1)), size: nbClusters };
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

function countBitmaps(img: ImageState, res: CheckResult, c: Counts): void {
  const b = img.ext.bitmaps;
  if (!b || !(img.header.autoclearFeatures & AUTOCLEAR_BITMAPS) || b.nbBitmaps === 0) return;
  const cs = img.clusterSize;
  inc(img, res, c, b.bitmapDirectoryOffset, b.bitmapDirectorySize);
  if (b.bitmapDirectorySize > CHECK_MAX_BITMAP_DIRECTORY_BYTES) return;
  let dir;
  try {
    dir = decodeBitmapDirectory(img.storage.read(b.bitmapDirectoryOffset, b.bitmapDirectorySize), b.nbBitmaps);
  } catch (e) {
    // An unreadable or malformed directory is a check error (QEMU: bitmap_list_load fails); bugs propagate.
    if (!(e instanceof Qcow2Error)) throw e;
    res.checkErrors++;
    return;
  }
  for (const bm of dir) {
    const bytes = bm.bitmapTableSize * BITMAP_TABLE_ENTRY_SIZE;
    inc(img, res, c, bm.bitmapTableOffset, bytes);
    if (bytes > MAX_L1_BYTES) continue;
    const t = img.storage.read(bm.bitmapTableOffset, bytes);
    const v = viewOf(t);
    for (let i = 0; i < bm.bitmapTableSize; i++) {
      const pos = i * BITMAP_TABLE_ENTRY_SIZE;
      const off = entryOffset(v.getUint32(pos), v.getUint32(pos + 4));
      if (off > 1) inc(img, res, c, off, cs);
    }
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

/** An L2 table as check sees it: the cached copy if any (it may be newer), else the bytes on disk, uncached. */
function readL2(img: ImageState, offset: number): CachedTable {
  const cached = img.l2Cache.peek(offset);
  const data = cached ? cached.data : img.storage.read(offset, img.clusterSize);
  return { offset, data, view: viewOf(data), dirty: false };
}

/** Overwrites the standard part of one L2 entry in place (repair); false when that would hit other metadata. */
function rewriteL2Entry(img: ImageState, l2Offset: number, index: number, lo: number): boolean {
  const at = l2Offset + index * img.layout.entrySize;
  // Only the standard 8-byte part: with extended L2 the subcluster bitmap stays as it is.
  const bytes = new Uint8Array(L2_ENTRY_SIZE);
  viewOf(bytes).setUint32(4, lo);
  const cached = l2Offset % img.clusterSize === 0 ? img.l2Cache.peek(l2Offset) : undefined;
  try {
    img.meta.check(at, L2_ENTRY_SIZE, MetaKind.ActiveL2);
  } catch (e) {
    if (e instanceof OverlapError) return false;
    throw e;
  }
  img.storage.write(at, bytes);
  img.storage.flush();
  if (cached) cached.data.set(bytes, index * img.layout.entrySize);
  return true;
}

function checkL2(img: ImageState, res: CheckResult, c: Counts, l2Offset: number, active: boolean, fix: number): void {
  const cs = img.clusterSize;
  const table = readL2(img, l2Offset);
  const layout = img.layout;
  let nextContiguous = 0;
  for (let i = 0; i < layout.entries; i++) {
    const e = layout.get(table, i);
    const type = layout.type(e);
    if (type !== ClusterType.Compressed && l2ReservedBits(e.hi, e.lo)) {
      res.messages.push(`ERROR found l2 entry with reserved bits set: ${hex64(e.hi, e.lo)}`);
      res.corruptions++;
    }
    if (type === ClusterType.Compressed) {
      if (isCopied(e.hi)) {
        res.messages.push(`ERROR: coffset=0x${decodeCompressed(e.hi, e.lo, img.clusterBits).offset.toString(16)}: copied flag must never be set for compressed clusters`);
        res.corruptions++;
        e.hi = withCopied(e.hi, false);
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
          if (repair && rewriteL2Entry(img, l2Offset, i, layout.extended ? 0 : OFLAG_ZERO_LO)) {
            res.corruptions--;
            res.corruptionsFixed++;
            continue;
          }
        } else {
          res.messages.push(`ERROR offset=${offset.toString(16)}: Data cluster is not properly aligned; L2 entry corrupted.`);
        }
      }
      if (active) {
        res.allocatedClusters++;
        if (nextContiguous && offset !== nextContiguous) res.fragmentedClusters++;
        nextContiguous = offset + cs;
      }
      // Data clusters in an external data file are not refcounted (check_refcounts_l2).
      if (!img.hasDataFile) inc(img, res, c, offset, cs);
    } else if (type === ClusterType.Unallocated && layout.extended && e.alloc !== 0) {
      res.messages.push('ERROR: Unallocated cluster has corrupted subcluster allocation bitmap');
      res.corruptions++;
    }
  }
}

function checkRefblocks(img: ImageState, res: CheckResult, c: Counts, nbClusters: number, state: { rebuild: boolean }, fix: number): void {
  const cs = img.clusterSize;
  const rt = img.refcounts;
  for (let i = 0; i < rt.table.length; i++) {
    const raw = rt.rawTable[i] ?? rt.table[i];
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

/** Stored refcount of a cluster, or undefined when its refcount block cannot be read. */
function storedRefcount(img: ImageState, cluster: number): number | undefined {
  const rt = img.refcounts;
  const bi = Math.floor(cluster / rt.entriesPerBlock);
  if (bi >= rt.table.length) return 0;
  const off = rt.table[bi];
  if (off === 0) return 0;
  // Offsets with bit 63 set are negative to QEMU's block layer: the read fails.
  if (off % img.clusterSize !== 0 || off >= INT64_LIMIT) return undefined;
  return rt.get(cluster);
}

function compare(img: ImageState, res: CheckResult, fix: number, state: { rebuild: boolean }, c: Counts, nbClusters: number): number {
  let highest = 0;
  for (let i = 0; i < nbClusters; i++) {
    const stored = storedRefcount(img, i);
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
  if (fix) img.refcounts.flush();
  return highest;
}

function checkOflagCopied(img: ImageState, res: CheckResult, fix: number): void {
  const cs = img.clusterSize;
  const layout = img.layout;
  let aligned = true;
  walkTree(img, img.l1, {
    enter(i, l2Offset) {
      aligned = l2Offset % cs === 0;
      const rc = storedRefcount(img, Math.floor(l2Offset / cs));
      if (rc === undefined) return false;
      if ((rc === 1) !== img.l1.copiedAt(i)) {
        const l1Entry = img.l1.rawAt(i);
        if (fix & FIX_ERRORS) {
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
    load: (l2Offset) => (aligned ? img.l2Cache.get(l2Offset) : readL2(img, l2Offset)),
    entry(e, type, j, table) {
      if (type !== ClusterType.Normal && type !== ClusterType.ZeroAlloc) return;
      // Misaligned offsets are checked too, at the cluster they fall in (QEMU: offset >> cluster_bits).
      // check_oflag_copied: data file clusters always count as refcount 1.
      const drc = img.hasDataFile ? 1 : storedRefcount(img, Math.floor(layout.offset(e) / cs));
      if (drc === undefined) return;
      if ((drc === 1) !== isCopied(e.hi)) {
        const entry = hex64(e.hi, e.lo);
        if (fix & FIX_ERRORS && aligned) {
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
  if (fix & FIX_ERRORS) img.flush();
}

// ------------------------------------------------------------------ rebuild

/** Replaces the refcount structure with one built from the computed counts (rebuild_refcount_structure). */
function rebuildRefcounts(img: ImageState, c: Counts, nbClusters: number): void {
  installRefcountStructure(img, c.table, c.size, img.refcounts.order, Math.max(nbClusters, c.size));
}
