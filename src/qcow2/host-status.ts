/**
 * Where guest bytes live on the host, run by run, as QEMU's
 * qcow2_get_host_offset (block/qcow2-cluster.c) reports them to
 * qcow2_co_block_status: the subcluster type at an offset, the host offset
 * for the types that have one, and how many bytes from there share both
 * (same type, host clusters consecutive), never past the end of the L2 table
 * (QEMU's default L2 slice is the whole table) nor past INT_MAX bytes. This
 * is what `qemu-img map` and `compare` see; blockStatus (guest-read.ts) is the
 * engine's own coarser view for reads and writes.
 */
import { dataClusterOffset, entryFor } from './cluster-map.js';
import { ClusterType } from './format/entries.js';
import type { L2Entry } from './l2.js';
import type { ImageState } from './state.js';

/** QEMU's QCow2SubclusterType, without INVALID (that is corruption, thrown). */
export const enum HostKind {
  UnallocatedPlain = 'unallocated-plain',
  UnallocatedAlloc = 'unallocated-alloc',
  ZeroPlain = 'zero-plain',
  ZeroAlloc = 'zero-alloc',
  Normal = 'normal',
  Compressed = 'compressed',
}

export interface HostRun {
  /** Bytes from the queried offset with this kind (and consecutive host offsets). */
  bytes: number;
  kind: HostKind;
  /** Host offset of the queried byte, in the data file when the image has one; 0 when the kind has none. */
  host: number;
}

/** qcow2_co_block_status takes MIN(INT_MAX, count). */
const INT_MAX = 2 ** 31 - 1;

/** The kinds whose L2 entry names a host cluster (count_contiguous_subclusters checks their offsets). */
export function hasHostCluster(k: HostKind): boolean {
  return k === HostKind.Normal || k === HostKind.ZeroAlloc || k === HostKind.UnallocatedAlloc;
}

/** qcow2_get_subcluster_type; an impossible bitmap is corruption, as QEMU's INVALID becomes -EIO. */
function kindOf(s: ImageState, e: L2Entry, sc: number, vc: number): HostKind {
  const type = s.layout.type(e);
  if (type === ClusterType.Compressed) return HostKind.Compressed;
  if (!s.layout.extended) {
    if (type === ClusterType.Unallocated) return HostKind.UnallocatedPlain;
    if (type === ClusterType.ZeroPlain || type === ClusterType.ZeroAlloc) {
      if (s.version < 3) s.corruption(`Zero cluster entry found in pre-v3 image (guest cluster ${vc})`);
      return type === ClusterType.ZeroPlain ? HostKind.ZeroPlain : HostKind.ZeroAlloc;
    }
    return HostKind.Normal;
  }
  const invalid = () => s.corruption(`Invalid cluster entry found (guest cluster ${vc})`);
  if ((e.zero & e.alloc) !== 0) invalid();
  const z = (e.zero >>> sc) & 1;
  if (type === ClusterType.Unallocated) {
    if (e.alloc !== 0) invalid();
    return z ? HostKind.ZeroPlain : HostKind.UnallocatedPlain;
  }
  if (z) return HostKind.ZeroAlloc;
  return (e.alloc >>> sc) & 1 ? HostKind.Normal : HostKind.UnallocatedAlloc;
}

/** qcow2_get_subcluster_range_type: subclusters from sc on in this cluster of the same kind. */
function sameKindFrom(s: ImageState, e: L2Entry, kind: HostKind, sc: number, vc: number): number {
  const per = s.layout.extended ? 32 : 1;
  if (!s.layout.extended || kind === HostKind.Compressed) return per - sc;
  let n = 0;
  while (sc + n < per && kindOf(s, e, sc + n, vc) === kind) n++;
  return n;
}

/** qcow2_get_host_offset for [offset, offset + bytes); bytes > 0. */
export function hostRun(s: ImageState, offset: number, bytes: number): HostRun {
  const cs = s.clusterSize;
  const scs = s.subclusterSize;
  const inCluster = offset % cs;
  const vc = Math.floor(offset / cs);
  const entries = s.layout.entries;
  const needed = Math.min(Math.min(INT_MAX, bytes) + inCluster, (entries - (vc % entries)) * cs);
  const l1Index = Math.floor(vc / entries);
  if (l1Index >= s.l1Entries || s.l1.l2OffsetAt(l1Index) === 0) {
    return { bytes: needed - inCluster, kind: HostKind.UnallocatedPlain, host: 0 };
  }
  const sc = Math.floor(inCluster / scs);
  const first = entryFor(s, vc);
  const kind = kindOf(s, first, sc, vc);
  if (kind === HostKind.Compressed && s.hasDataFile) {
    s.corruption(`Compressed cluster entry found in image with external data file (guest cluster ${vc})`);
  }
  const host = hasHostCluster(kind) ? dataClusterOffset(s, first, vc) + inCluster : 0;
  // count_contiguous_subclusters: a compressed cluster is always a run of its own.
  const clusters = Math.ceil(needed / cs);
  const per = s.layout.extended ? 32 : 1;
  let count = sameKindFrom(s, first, kind, sc, vc);
  if (kind !== HostKind.Compressed && sc + count >= per) {
    const firstHost = s.layout.offset(first);
    for (let i = 1; i < clusters; i++) {
      const e = entryFor(s, vc + i);
      if (kindOf(s, e, 0, vc + i) !== kind) break;
      if (hasHostCluster(kind) && s.layout.offset(e) !== firstHost + i * cs) break;
      const n = sameKindFrom(s, e, kind, 0, vc + i);
      count += n;
      if (n < per) break;
    }
  }
  const available = Math.min((count + sc) * scs, needed);
  return { bytes: available - inCluster, kind, host };
}

/**
 * qcow2_detect_metadata_preallocation: more clusters are in use than the file
 * occupies on disk (by a margin), so data clusters may be holes of the file
 * and block status must ask the file (BDRV_BLOCK_RECURSE). False when the
 * storage cannot say what it occupies.
 */
export function metadataPreallocated(s: ImageState): boolean {
  const occupied = s.storage.allocatedBytes?.();
  if (occupied === undefined) return false;
  const real = Math.floor(occupied / s.clusterSize);
  const threshold = Math.max(Math.floor((real * 10) / 9), real + 2);
  const end = Math.ceil(s.storage.size() / s.clusterSize);
  let counted = 0;
  for (let i = 0; i < end && counted < threshold; i++) if (s.refcounts.get(i) !== 0) counted++;
  return counted >= threshold;
}
