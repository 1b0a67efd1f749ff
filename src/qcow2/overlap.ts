/**
 * Which host clusters hold live metadata, for the overlap check QEMU runs
 * before every metadata write (qcow2_check_metadata_overlap, "cached" mode:
 * header, L1, active L2, reftable, refblocks, snapshot table, snapshot L1
 * tables and, while the autoclear bit vouches for it, the bitmap directory).
 * Bitmap tables and the bitmap data clusters they name are here too, which
 * QEMU's check leaves out: neither engine rewrites them in place, so any
 * write landing on one is a misallocation that would silently destroy the
 * dirty bitmaps an incremental backup chain depends on. Kept incrementally
 * so the check is O(clusters written).
 */
import { OverlapError } from './errors.js';

export const enum MetaKind {
  Header = 1,
  ActiveL1 = 2,
  ActiveL2 = 3,
  Reftable = 4,
  Refblock = 5,
  SnapshotTable = 6,
  SnapshotL1 = 7,
  /** Metadata of no other kind (reserved; nothing is recorded as it today). */
  Other = 8,
  /** Claimed by two kinds of metadata on a damaged image: every write there is refused. */
  Conflict = 9,
  /** QCOW2_OL_BITMAP_DIRECTORY. */
  BitmapDirectory = 10,
  BitmapTable = 11,
  BitmapData = 12,
}

const KIND_NAMES: Record<MetaKind, string> = {
  [MetaKind.Header]: 'qcow2 header',
  [MetaKind.ActiveL1]: 'active L1 table',
  [MetaKind.ActiveL2]: 'active L2 table',
  [MetaKind.Reftable]: 'refcount table',
  [MetaKind.Refblock]: 'refcount block',
  [MetaKind.SnapshotTable]: 'snapshot table',
  [MetaKind.SnapshotL1]: 'inactive L1 table',
  [MetaKind.Other]: 'metadata',
  [MetaKind.Conflict]: 'metadata claimed by two tables',
  [MetaKind.BitmapDirectory]: 'bitmap directory',
  [MetaKind.BitmapTable]: 'bitmap table',
  [MetaKind.BitmapData]: 'bitmap data cluster',
};

export function metaKindName(k: MetaKind): string {
  return KIND_NAMES[k];
}

export class MetadataMap {
  private readonly kinds = new Map<number, MetaKind>();

  constructor(private readonly clusterBits: number) {}

  private clusterRange(offset: number, bytes: number): [number, number] {
    const cs = 2 ** this.clusterBits;
    return [Math.floor(offset / cs), Math.ceil((offset + Math.max(bytes, 1)) / cs)];
  }

  /**
   * Records metadata found in the image. A cluster two kinds of metadata
   * claim (a damaged image) becomes a conflict that no write may touch, as
   * QEMU's overlap check refuses a write of either table there.
   */
  add(offset: number, bytes: number, kind: MetaKind): void {
    const [a, b] = this.clusterRange(offset, bytes);
    for (let c = a; c < b; c++) {
      const k = this.kinds.get(c);
      if (k === undefined) this.kinds.set(c, kind);
      else if (k !== kind) this.kinds.set(c, MetaKind.Conflict);
    }
  }

  /**
   * Records metadata just placed in freshly allocated clusters. On a damaged
   * image the allocator may hand out a cluster whose refcount wrongly reads
   * zero; if that cluster holds metadata, this refuses (as QEMU's overlap
   * check refuses the write).
   */
  claim(offset: number, bytes: number, kind: MetaKind): void {
    this.check(offset, bytes, undefined);
    const [a, b] = this.clusterRange(offset, bytes);
    for (let c = a; c < b; c++) this.kinds.set(c, kind);
  }

  remove(offset: number, bytes: number): void {
    const [a, b] = this.clusterRange(offset, bytes);
    for (let c = a; c < b; c++) this.kinds.delete(c);
  }

  /** Like remove, for the clusters recorded as `kind` only: a conflict (or another table) stays. */
  removeKind(offset: number, bytes: number, kind: MetaKind): void {
    const [a, b] = this.clusterRange(offset, bytes);
    for (let c = a; c < b; c++) if (this.kinds.get(c) === kind) this.kinds.delete(c);
  }

  kindAtCluster(clusterIndex: number): MetaKind | undefined {
    return this.kinds.get(clusterIndex);
  }

  /**
   * Refuses a write of `kind` (undefined for guest data) that would land on a
   * cluster holding a different kind of metadata.
   */
  check(offset: number, bytes: number, kind: MetaKind | undefined): void {
    const [a, b] = this.clusterRange(offset, bytes);
    for (let c = a; c < b; c++) {
      const k = this.kinds.get(c);
      if (k !== undefined && k !== kind) {
        const what = kind === undefined ? 'guest data' : metaKindName(kind);
        throw new OverlapError(
          `refusing to write ${what} at host offset ${offset}: it overlaps the ${metaKindName(k)} at cluster ${c}`,
        );
      }
    }
  }

  clear(): void {
    this.kinds.clear();
  }
}
