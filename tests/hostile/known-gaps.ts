/**
 * Known gaps between our engine and qemu-img 7.2 on hand-corrupted images,
 * each with the reason: what QEMU does, what we do, and why ours is kept.
 * Their tests run as `test.fails`: they must still fail, so a fix (or a
 * regression elsewhere) shows up at once and this list shrinks. Issue 10
 * item 5 took it from 30 entries to 6.
 */

const REBUILD_OVER_OLD_REFBLOCK =
  "qemu-img 7.2's repair fails (exit 1, image marked corrupt): check_refblocks skips the refcount table entry with " +
  "reserved bits, so the old refblock's cluster counts as free; rebuild_refcounts_write_refblocks allocates the new " +
  'refblock there (alloc_clusters_imrt, first fit from cluster 0 in the in-memory table) while the old table is still ' +
  'installed, and its own overlap check, which masks the reserved bits and sees a live refcount block in that cluster, ' +
  'refuses the write. Ours lays the new structure out past every used cluster (refcount-rebuild.ts), so it never lands ' +
  'on the old one, and leaves an image qemu-img check passes. Kept: the repair QEMU attempts, without the overlap it ' +
  'causes itself. Reproduced with qemu-utils alone by corpus/qemu-check-repair-corrupts-reftable-reserved.';

const FREE_COMPRESSED_REUSED_BY_ANOTHER_WRITE =
  'The compressed cluster at guest 1 MiB is shared with the snapshot and its refcount reads 0. The plan first writes ' +
  'guest 0..4 KiB, eight shared 512-byte clusters, which need new clusters. QEMU allocates them as one contiguous run ' +
  "(alloc_clusters_noref asks for 8 free clusters in a row), so the single 'free' cluster 29 is skipped; ours " +
  'allocates cluster by cluster and hands out cluster 29 first, overwriting the compressed data the snapshot still ' +
  'reads. Both allocators trust the refcount (QEMU never consults L2 tables when allocating either); ours refuses ' +
  'once it touches an entry whose cluster has refcount 0 (ownedDataCluster, requireCountedSource), but here the ' +
  'broken entry is not the one being written. Catching it would take a reverse map of L2 references on the ' +
  'allocation path, which neither engine keeps.';

export const KNOWN_GAPS: ReadonlyMap<string, string> = new Map([
  ['check-agrees/v2-64k-snap/reftable:first-reserved', REBUILD_OVER_OLD_REFBLOCK],
  ['check-agrees/v3-32k-extl2/reftable:first-reserved', REBUILD_OVER_OLD_REFBLOCK],
  ['check-agrees/v3-512b-rc8-zstd/reftable:first-reserved', REBUILD_OVER_OLD_REFBLOCK],
  ['check-agrees/v3-64k-backing/reftable:first-reserved', REBUILD_OVER_OLD_REFBLOCK],
  ['check-agrees/v3-64k-compressed-snaps/reftable:first-reserved', REBUILD_OVER_OLD_REFBLOCK],
  ['hostile/v3-512b-rc8-zstd/refcount:compressed=zero', FREE_COMPRESSED_REUSED_BY_ANOTHER_WRITE],
]);

export function knownGap(suite: 'check-agrees' | 'hostile', image: string, mutation: string): string | undefined {
  return KNOWN_GAPS.get(`${suite}/${image}/${mutation}`);
}
