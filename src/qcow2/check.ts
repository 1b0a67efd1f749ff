/**
 * Consistency check and repair with qemu-img check's semantics
 * (block/qcow2-refcount.c: calculate_refcounts, compare_refcounts,
 * check_oflag_copied; qemu-img's double check after a repair): walk every
 * reference from the header, active and snapshot L1/L2 tables, the snapshot
 * table, the refcount table and blocks, the encryption header and bitmaps,
 * then compare with the stored refcounts.
 */
import type { CachedTable } from './cache.js';
import { ReadOnlyError } from './errors.js';
import { getU64, viewOf } from './format/bytes.js';
import {
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  L1_ENTRY_SIZE,
  MAX_L1_BYTES,
  OFLAG_COPIED_HI,
} from './format/constants.js';
import { ClusterType, decodeCompressed, entryOffset, isCopied, l1ReservedBits, l2ReservedBits } from './format/entries.js';
import { decodeBitmapDirectory } from './format/bitmaps.js';
import { snapshotL1Problem } from './snapshot-table-io.js';
import type { Qcow2Image } from './image.js';
import { ALL_SUBCLUSTERS, type L2Entry } from './l2.js';
import { MetaKind } from './overlap.js';
import { Refcounts } from './refcount.js';
import { layoutRefcountStructure } from './refcount-rebuild.js';
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
export function checkImage(img: Qcow2Image, repair: RepairMode): CheckResult {
  const fix = repair === 'all' ? FIX_LEAKS | FIX_ERRORS : repair === 'leaks' ? FIX_LEAKS : 0;
  if (fix && img.readOnly) throw new ReadOnlyError('repairing needs the image open read-write');
  return checkPass(img, fix);
}

/** One bdrv_check pass (qcow2_co_check_locked). */
export function checkPass(img: Qcow2Image, fix: number): CheckResult {
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

function markCleanAndConsistent(img: Qcow2Image): void {
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

function inc(img: Qcow2Image, res: CheckResult, c: Counts, offset: number, size: number): void {
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

function calculate(img: Qcow2Image, res: CheckResult, fix: number, nbClusters: number, state: { rebuild: boolean }): Counts {
  const h = img.header;
  const cs = img.clusterSize;
  const c: Counts = { table: new Float64Array(Math.max(nbClusters, 1)), size: nbClusters };
  inc(img, res, c, 0, cs);
  checkL1(img, res, c, h.l1TableOffset, h.l1Size, true, fix);
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

function countBitmaps(img: Qcow2Image, res: CheckResult, c: Counts): void {
  const b = img.ext.bitmaps;
  if (!b || !(img.header.autoclearFeatures & 1n) || b.nbBitmaps === 0) return;
  const cs = img.clusterSize;
  inc(img, res, c, b.bitmapDirectoryOffset, b.bitmapDirectorySize);
  if (b.bitmapDirectorySize > 64 * 1024 * 1024) return;
  let dir;
  try {
    dir = decodeBitmapDirectory(img.storage.read(b.bitmapDirectoryOffset, b.bitmapDirectorySize), b.nbBitmaps);
  } catch {
    res.checkErrors++;
    return;
  }
  for (const bm of dir) {
    const bytes = bm.bitmapTableSize * 8;
    inc(img, res, c, bm.bitmapTableOffset, bytes);
    if (bytes > MAX_L1_BYTES) continue;
    const t = img.storage.read(bm.bitmapTableOffset, bytes);
    const v = viewOf(t);
    for (let i = 0; i < bm.bitmapTableSize; i++) {
      const off = entryOffset(v.getUint32(i * 8), v.getUint32(i * 8 + 4));
      if (off > 1) inc(img, res, c, off, cs);
    }
  }
}

function checkL1(img: Qcow2Image, res: CheckResult, c: Counts, l1Offset: number, l1Size: number, active: boolean, fix: number): void {
  const bytes = l1Size * L1_ENTRY_SIZE;
  if (bytes > MAX_L1_BYTES) {
    res.messages.push('ERROR: L1 size too big');
    res.corruptions++;
    return;
  }
  inc(img, res, c, l1Offset, bytes);
  if (l1Size === 0) return;
  const l1 = active ? img.l1 : img.storage.read(l1Offset, bytes);
  const v = viewOf(l1);
  for (let i = 0; i < l1Size; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
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

function readL2(img: Qcow2Image, offset: number): Uint8Array {
  const cached = img.l2Cache.peek(offset);
  return cached ? cached.data : img.storage.read(offset, img.clusterSize);
}

/** Overwrites the standard part of one L2 entry in place (repair); false when that would hit other metadata. */
function rewriteL2Entry(img: Qcow2Image, l2Offset: number, index: number, lo: number): boolean {
  const at = l2Offset + index * img.layout.entrySize;
  const bytes = new Uint8Array(8);
  viewOf(bytes).setUint32(4, lo);
  const cached = l2Offset % img.clusterSize === 0 ? img.l2Cache.peek(l2Offset) : undefined;
  try {
    img.meta.check(at, 8, MetaKind.ActiveL2);
  } catch {
    return false;
  }
  img.storage.write(at, bytes);
  img.storage.flush();
  if (cached) cached.data.set(bytes, index * img.layout.entrySize);
  return true;
}

function checkL2(img: Qcow2Image, res: CheckResult, c: Counts, l2Offset: number, active: boolean, fix: number): void {
  const cs = img.clusterSize;
  const table = readL2(img, l2Offset);
  const tv = viewOf(table);
  const layout = img.layout;
  let nextContiguous = 0;
  for (let i = 0; i < layout.entries; i++) {
    const p = i * layout.entrySize;
    const e: L2Entry = {
      hi: tv.getUint32(p),
      lo: tv.getUint32(p + 4),
      zero: layout.extended ? tv.getUint32(p + 8) : 0,
      alloc: layout.extended ? tv.getUint32(p + 12) : 0,
    };
    const type = layout.type(e);
    if (type !== ClusterType.Compressed && l2ReservedBits(e.hi, e.lo)) {
      res.messages.push(`ERROR found l2 entry with reserved bits set: ${hex64(e.hi, e.lo)}`);
      res.corruptions++;
    }
    if (type === ClusterType.Compressed) {
      if (isCopied(e.hi)) {
        res.messages.push(`ERROR: coffset=0x${decodeCompressed(e.hi, e.lo & ~0, img.clusterBits).offset.toString(16)}: copied flag must never be set for compressed clusters`);
        res.corruptions++;
        e.hi = (e.hi & ~OFLAG_COPIED_HI) >>> 0;
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
          if (repair && rewriteL2Entry(img, l2Offset, i, layout.extended ? 0 : 1)) {
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
      inc(img, res, c, offset, cs);
    } else if (type === ClusterType.Unallocated && layout.extended && e.alloc !== 0) {
      res.messages.push('ERROR: Unallocated cluster has corrupted subcluster allocation bitmap');
      res.corruptions++;
    }
  }
}

function checkRefblocks(img: Qcow2Image, res: CheckResult, c: Counts, nbClusters: number, state: { rebuild: boolean }, fix: number): void {
  const cs = img.clusterSize;
  const rt = img.refcounts;
  for (let i = 0; i < rt.table.length; i++) {
    const raw = rt.rawTable[i] ?? rt.table[i];
    if (raw === 0) continue;
    const offset = rt.table[i];
    if (raw % 512 !== 0) {
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
function storedRefcount(img: Qcow2Image, cluster: number): number | undefined {
  const rt = img.refcounts;
  const bi = Math.floor(cluster / rt.entriesPerBlock);
  if (bi >= rt.table.length) return 0;
  const off = rt.table[bi];
  if (off === 0) return 0;
  // Offsets with bit 63 set are negative to QEMU's block layer: the read fails.
  if (off % img.clusterSize !== 0 || off >= 2 ** 63) return undefined;
  return rt.get(cluster);
}

function compare(img: Qcow2Image, res: CheckResult, fix: number, state: { rebuild: boolean }, c: Counts, nbClusters: number): number {
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
      } catch {
        // Could not fix it: count it as found.
      }
    }
    if (stored < computed) res.corruptions++;
    else res.leaks++;
  }
  if (fix) img.refcounts.flush();
  return highest;
}

function checkOflagCopied(img: Qcow2Image, res: CheckResult, fix: number): void {
  const cs = img.clusterSize;
  const layout = img.layout;
  for (let i = 0; i < img.l1Entries; i++) {
    const l2Offset = img.l2OffsetAt(i);
    if (l2Offset === 0) continue;
    const aligned = l2Offset % cs === 0;
    const rc = storedRefcount(img, Math.floor(l2Offset / cs));
    if (rc === undefined) continue;
    const l1Copied = img.l1CopiedAt(i);
    if ((rc === 1) !== l1Copied) {
      const l1Entry = getU64(img.l1View, i * 8);
      if (fix & FIX_ERRORS) {
        res.messages.push(`Repairing OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${l1Entry.toString(16)} refcount=${rc}`);
        const hi = img.l1View.getUint32(i * 8);
        img.l1View.setUint32(i * 8, rc === 1 ? (hi | OFLAG_COPIED_HI) >>> 0 : (hi & ~OFLAG_COPIED_HI) >>> 0);
        img.writeMeta(img.header.l1TableOffset + i * 8, img.l1.slice(i * 8, i * 8 + 8), MetaKind.ActiveL1);
        res.corruptionsFixed++;
      } else {
        res.messages.push(`ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${l1Entry.toString(16)} refcount=${rc}`);
        res.corruptions++;
      }
    }
    // A misaligned table is read where it points (QEMU does) but only reported, never repaired.
    let table: CachedTable;
    if (aligned) table = img.l2Cache.get(l2Offset);
    else {
      const data = readL2(img, l2Offset);
      table = { offset: l2Offset, data, view: viewOf(data), dirty: false };
    }
    for (let j = 0; j < layout.entries; j++) {
      const e = layout.get(table, j);
      const type = layout.type(e);
      if (type !== ClusterType.Normal && type !== ClusterType.ZeroAlloc) continue;
      // Misaligned offsets are checked too, at the cluster they fall in (QEMU: offset >> cluster_bits).
      const off = layout.offset(e);
      const drc = storedRefcount(img, Math.floor(off / cs));
      if (drc === undefined) continue;
      if ((drc === 1) !== isCopied(e.hi)) {
        const entry = (e.hi * 2 ** 32 + e.lo).toString(16);
        if (fix & FIX_ERRORS && aligned) {
          res.messages.push(`Repairing OFLAG_COPIED data cluster: l2_entry=${entry} refcount=${drc}`);
          layout.set(table, j, { ...e, hi: drc === 1 ? (e.hi | OFLAG_COPIED_HI) >>> 0 : (e.hi & ~OFLAG_COPIED_HI) >>> 0 });
          res.corruptionsFixed++;
        } else {
          res.messages.push(`ERROR OFLAG_COPIED data cluster: l2_entry=${entry} refcount=${drc}`);
          res.corruptions++;
        }
      }
    }
  }
  if (fix & FIX_ERRORS) img.flush();
}

// ------------------------------------------------------------------ rebuild

/** Replaces the refcount structure with one built from the computed counts (rebuild_refcount_structure). */
function rebuildRefcounts(img: Qcow2Image, c: Counts, nbClusters: number): void {
  installRefcountStructure(img, c.table, c.size, img.refcounts.order, Math.max(nbClusters, c.size));
}

/**
 * Writes a fresh refcount structure of width 2^order for `counts` past
 * `start` and switches the header to it. Returns nothing; img.refcounts is
 * replaced. The old structure's clusters are left for a leak repair (check)
 * or freed by the caller.
 */
export function installRefcountStructure(img: Qcow2Image, counts: ArrayLike<number>, nbClusters: number, order: number, start: number): void {
  const cs = img.clusterSize;
  img.resetCaches();
  const s = layoutRefcountStructure(counts, nbClusters, order, img.clusterBits, start);
  for (const [off, data] of s.writes) img.storage.write(off, data);
  img.storage.flush();
  img.meta.remove(img.header.refcountTableOffset, img.header.refcountTableClusters * cs);
  for (const off of img.refcounts.table) if (off !== 0 && off % cs === 0) img.meta.remove(off, cs);
  img.header.refcountTableOffset = s.tableOffset;
  img.header.refcountTableClusters = s.tableClusters;
  img.header.refcountOrder = order;
  img.writeHeader();
  img.storage.flush();
  const fresh = new Refcounts(img, order, s.tableOffset, s.tableClusters, Math.max(4, img.refcounts.cache.capacity));
  fresh.load();
  img.refcounts = fresh;
}
