/**
 * The stored refcounts as qemu-img check reads them (qcow2_get_refcount in
 * compare_refcounts and check_oflag_copied): a cluster whose refcount block
 * cannot be read has none (undefined), one past the table or under a zero
 * table entry has 0.
 *
 * A check that repairs nothing reads every cluster's refcount once in the
 * compare and again for each L2 table and data cluster in the OFLAG_COPIED
 * walk; one snapshot read block by block serves both (a table lookup per
 * block, not a cache lookup per cluster). A repairing pass reads through
 * the refcount cache, which its own repairs update.
 */
import { INT64_LIMIT } from './format/constants.js';
import type { ImageState } from './state.js';

/** Clusters a snapshot may cover (8 bytes each: 64 MiB). */
const SNAPSHOT_MAX_CLUSTERS = 8 * 1024 * 1024;

export class StoredRefcounts {
  private readonly snapshot: Float64Array | undefined;

  /** With `clusters`, clusters [0, clusters) are read up front; the image must not change while this is used. */
  constructor(
    private readonly img: ImageState,
    clusters?: number,
  ) {
    if (clusters !== undefined && clusters <= SNAPSHOT_MAX_CLUSTERS) this.snapshot = this.read(clusters);
  }

  get(cluster: number): number | undefined {
    const s = this.snapshot;
    if (s !== undefined && cluster < s.length) {
      const v = s[cluster]!;
      return Number.isNaN(v) ? undefined : v;
    }
    return this.direct(cluster);
  }

  private direct(cluster: number): number | undefined {
    const rt = this.img.refcounts;
    const bi = Math.floor(cluster / rt.entriesPerBlock);
    const off = this.blockState(bi);
    if (off === undefined) return undefined;
    return off === 0 ? 0 : rt.get(cluster);
  }

  /** The block's offset, 0 when there is none, undefined when it cannot be read. */
  private blockState(bi: number): number | undefined {
    const rt = this.img.refcounts;
    if (bi >= rt.table.length) return 0;
    const off = rt.table[bi]!;
    if (off === 0) return 0;
    // Offsets with bit 63 set are negative to QEMU's block layer: the read fails.
    if (off % this.img.clusterSize !== 0 || off >= INT64_LIMIT) return undefined;
    return off;
  }

  private read(clusters: number): Float64Array {
    const out = new Float64Array(clusters);
    const rt = this.img.refcounts;
    const per = rt.entriesPerBlock;
    for (let bi = 0; bi * per < clusters; bi++) {
      const first = bi * per;
      const count = Math.min(per, clusters - first);
      const off = this.blockState(bi);
      if (off === undefined) out.fill(NaN, first, first + count);
      else if (off !== 0) rt.readBlock(bi, count, out, first);
    }
    return out;
  }
}
