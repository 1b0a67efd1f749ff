/**
 * Guest reads and block status (QEMU: qcow2_co_preadv_part,
 * qcow2_co_block_status): each guest cluster is read from its data
 * cluster, as zeros, from the backing file, or decompressed, per subcluster
 * with extended L2 entries.
 */
import { decompressCluster } from './compress.js';
import { readEncryptedData } from './crypto/data-path.js';
import { ClusterType, decodeCompressed } from './format/entries.js';
import { checkedHostOffset, dataClusterOffset, entryFor } from './cluster-map.js';
import type { L2Entry } from './l2.js';
import type { ImageState } from './state.js';

export interface BlockStatus {
  length: number;
  zero: boolean;
  allocated: boolean;
}

export type SubclusterState = 'normal' | 'zero' | 'unallocated';

/** What a pending run of readGuest holds: host data, zeros, or the backing file's bytes at the same guest offsets. */
const enum Run {
  None,
  Data,
  Zero,
  Backing,
}

/**
 * Reads guest bytes without the virtual-size bound (COW of the last partial
 * cluster needs that). Consecutive guest clusters whose data clusters are
 * consecutive on the host are read with one storage call, as QEMU's
 * qcow2_co_preadv_part takes the longest contiguous run qcow2_get_host_offset
 * reports: a fully written image reads in chunk-sized calls, not per cluster.
 * Runs of zero clusters, and of unallocated ones (read from the backing file
 * in one call), are gathered the same way, and an L1 entry that names no L2
 * table makes its whole span one unallocated run without looking at its
 * clusters: a sparse image at 512 B clusters is otherwise a call per 512 bytes.
 * Each entry is validated (dataClusterOffset) before its bytes are read; a
 * backing run is read before the next L2 table is looked at, so a corrupt
 * backing file is still reported before a corrupt table after it.
 */
export function readGuest(s: ImageState, offset: number, dst: Uint8Array): void {
  const cs = s.clusterSize;
  const plain = !s.layout.extended && !s.crypto;
  let kind = Run.None as Run;
  let runHost = 0; // host offset of a Data run
  let runStart = 0; // the run's start in dst
  let runLen = 0;
  const flushRun = (): void => {
    if (runLen > 0) {
      const part = dst.subarray(runStart, runStart + runLen);
      if (kind === Run.Data) s.data.readInto(runHost, part);
      else if (kind === Run.Zero) part.fill(0);
      else readBacking(s, offset + runStart, part);
    }
    kind = Run.None;
    runLen = 0;
  };
  /** Adds n bytes at done to the pending run, or flushes it and starts one; host is the Data run's next byte. */
  const add = (k: Run, done: number, n: number, host: number): void => {
    if (kind !== k || (k === Run.Data && runHost + runLen !== host)) {
      flushRun();
      kind = k;
      runHost = host;
      runStart = done;
    }
    runLen += n;
  };
  const perL1 = s.bytesPerL1Entry;
  let l1Seen = -1;
  let done = 0;
  while (done < dst.length) {
    const pos = offset + done;
    const l1Index = Math.floor(pos / perL1);
    if (l1Index !== l1Seen) {
      l1Seen = l1Index;
      if (kind === Run.Backing) flushRun();
      if (l1Index >= s.l1Entries || s.l1.l2OffsetAt(l1Index) === 0) {
        const n = Math.min((l1Index + 1) * perL1 - pos, dst.length - done);
        add(Run.Backing, done, n, 0);
        done += n;
        continue;
      }
    }
    const vc = Math.floor(pos / cs);
    const inOff = pos - vc * cs;
    const n = Math.min(cs - inOff, dst.length - done);
    const e = entryFor(s, vc);
    const type = s.layout.type(e);
    if (!s.layout.extended && type !== ClusterType.Compressed) {
      // Encrypted data goes the per-cluster path, which decrypts it (readData).
      if (type === ClusterType.Normal && plain) {
        add(Run.Data, done, n, dataClusterOffset(s, e, vc) + inOff);
        done += n;
        continue;
      }
      if (type === ClusterType.Unallocated) {
        add(Run.Backing, done, n, 0);
        done += n;
        continue;
      }
      if (type === ClusterType.ZeroPlain || type === ClusterType.ZeroAlloc) {
        refuseV2ZeroCluster(s, type, vc);
        if (type === ClusterType.ZeroAlloc) checkedHostOffset(s, e, vc);
        add(Run.Zero, done, n, 0);
        done += n;
        continue;
      }
    }
    flushRun();
    readInCluster(s, vc, inOff, dst.subarray(done, done + n), e);
    done += n;
  }
  flushRun();
}

function readInCluster(s: ImageState, vc: number, inOff: number, dst: Uint8Array, e: L2Entry): void {
  const type = s.layout.type(e);
  const guestBase = vc * s.clusterSize;
  if (type === ClusterType.Compressed) {
    if (s.hasDataFile) s.corruption(`Compressed cluster entry found in image with external data file (guest cluster ${vc})`);
    dst.set(decompressed(s, e).subarray(inOff, inOff + dst.length));
    return;
  }
  refuseV2ZeroCluster(s, type, vc);
  if (!s.layout.extended) {
    switch (type) {
      case ClusterType.Unallocated:
        readBacking(s, guestBase + inOff, dst);
        return;
      case ClusterType.ZeroAlloc:
        checkedHostOffset(s, e, vc);
        dst.fill(0);
        return;
      case ClusterType.ZeroPlain:
        dst.fill(0);
        return;
      default:
        readData(s, dataClusterOffset(s, e, vc) + inOff, guestBase + inOff, dst);
        return;
    }
  }
  // Extended L2: each subcluster has its own state; a host offset is checked whatever they are.
  if (type === ClusterType.Normal) checkedHostOffset(s, e, vc);
  const scs = s.subclusterSize;
  let done = 0;
  while (done < dst.length) {
    const pos = inOff + done;
    const sc = Math.floor(pos / scs);
    const n = Math.min((sc + 1) * scs - pos, dst.length - done);
    const part = dst.subarray(done, done + n);
    const st = subclusterState(s, e, type, sc, vc);
    if (st === 'normal') readData(s, dataClusterOffset(s, e, vc) + pos, guestBase + pos, part);
    else if (st === 'zero') part.fill(0);
    else readBacking(s, guestBase + pos, part);
    done += n;
  }
}

/** Data cluster bytes, decrypted for an encrypted image (qcow2_co_preadv_encrypted); compressed ones never are. */
function readData(s: ImageState, host: number, guest: number, dst: Uint8Array): void {
  if (s.crypto) readEncryptedData(s.crypto, s.data, host, guest, dst);
  else s.data.readInto(host, dst);
}

/** v2 has no zero clusters; QEMU signals corruption on one ("Zero cluster entry found in pre-v3 image"). */
function refuseV2ZeroCluster(s: ImageState, type: ClusterType, vc: number): void {
  if (s.version < 3 && (type === ClusterType.ZeroPlain || type === ClusterType.ZeroAlloc)) {
    s.corruption(`zero cluster entry found in pre-v3 image (guest cluster ${vc})`);
  }
}

/** State of subcluster sc of an extended entry; a forbidden bitmap combination is corruption. */
export function subclusterState(s: ImageState, e: L2Entry, type: ClusterType, sc: number, vc: number): SubclusterState {
  const a = (e.alloc >>> sc) & 1;
  const z = (e.zero >>> sc) & 1;
  if (a && z) s.corruption(`invalid subcluster bitmap (guest cluster ${vc}, subcluster ${sc})`);
  if (a) {
    if (type === ClusterType.Unallocated) s.corruption(`subcluster allocated in an unallocated cluster (guest cluster ${vc})`);
    return 'normal';
  }
  return z ? 'zero' : 'unallocated';
}

/** Backing file bytes; past the backing file's end (or without one) the guest reads zeros. */
function readBacking(s: ImageState, offset: number, dst: Uint8Array): void {
  const b = s.backing;
  if (!b || offset >= b.virtualSize) {
    dst.fill(0);
    return;
  }
  const n = Math.min(dst.length, b.virtualSize - offset);
  b.readInto(offset, dst.subarray(0, n));
  if (n < dst.length) dst.fill(0, n);
}

function decompressed(s: ImageState, e: L2Entry): Uint8Array {
  const c = decodeCompressed(e.hi, e.lo, s.clusterBits);
  if (s.lastDecompressed?.offset === c.offset) return s.lastDecompressed.data;
  if (c.offset < s.clusterSize) s.corruption(`compressed cluster at offset ${c.offset} overlaps the image header`);
  const src = s.storage.read(c.offset, c.size);
  const data = decompressCluster(s.compressionType, src, s.clusterSize);
  s.lastDecompressed = { offset: c.offset, data };
  return data;
}

/** Status of [offset, offset+length) from offset on: the longest run of one (zero, allocated) state. */
export function blockStatus(s: ImageState, offset: number, length: number): BlockStatus {
  const first = statusAt(s, offset);
  let len = Math.min(first.until - offset, length);
  while (len < length) {
    const next = statusAt(s, offset + len);
    if (next.zero !== first.zero || next.allocated !== first.allocated) break;
    len = Math.min(next.until - offset, length);
  }
  return { length: len, zero: first.zero, allocated: first.allocated };
}

function statusAt(s: ImageState, pos: number): { until: number; zero: boolean; allocated: boolean } {
  const cs = s.clusterSize;
  const vc = Math.floor(pos / cs);
  const l1Index = Math.floor(vc / s.layout.entries);
  if (l1Index < s.l1Entries && s.l1.l2OffsetAt(l1Index) === 0) {
    return { until: (l1Index + 1) * s.bytesPerL1Entry, ...unallocatedStatus(s, pos) };
  }
  const e = entryFor(s, vc);
  const type = s.layout.type(e);
  const end = (vc + 1) * cs;
  if (type === ClusterType.Compressed) return { until: end, zero: false, allocated: true };
  refuseV2ZeroCluster(s, type, vc);
  if (!s.layout.extended) {
    if (type === ClusterType.Unallocated) return { until: end, ...unallocatedStatus(s, pos) };
    if (type === ClusterType.Normal || type === ClusterType.ZeroAlloc) checkedHostOffset(s, e, vc);
    if (type === ClusterType.Normal) return { until: end, zero: false, allocated: true };
    return { until: end, zero: true, allocated: true };
  }
  if (type === ClusterType.Normal) checkedHostOffset(s, e, vc);
  const sc = Math.floor((pos - vc * cs) / s.subclusterSize);
  const until = vc * cs + (sc + 1) * s.subclusterSize;
  const st = subclusterState(s, e, type, sc, vc);
  if (st === 'normal') return { until, zero: false, allocated: true };
  if (st === 'zero') return { until, zero: true, allocated: true };
  return { until, ...unallocatedStatus(s, pos) };
}

function unallocatedStatus(s: ImageState, pos: number): { zero: boolean; allocated: boolean } {
  return { zero: !s.backing || pos >= s.backing.virtualSize, allocated: false };
}
