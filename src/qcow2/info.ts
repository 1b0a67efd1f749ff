/**
 * What qemu-img info reports about an open image: geometry, features,
 * snapshots and the persistent bitmaps the bitmaps autoclear bit vouches for.
 */
import { BITMAP_FLAG_AUTO, BITMAP_FLAG_IN_USE, decodeBitmapDirectory } from './format/bitmaps.js';
import { AUTOCLEAR_BITMAPS, CRYPT_NONE, INCOMPAT_CORRUPT, INCOMPAT_DIRTY } from './format/constants.js';
import { snapshotInfos } from './snapshot-table-io.js';
import type { ImageState } from './state.js';
import type { ImageInfo } from './types.js';

export function imageInfo(s: ImageState): ImageInfo {
  const h = s.header;
  const bitmaps = bitmapInfos(s);
  return {
    virtualSize: h.size,
    clusterSize: s.clusterSize,
    version: h.version,
    compat: h.version === 3 ? '1.1' : '0.10',
    refcountBits: 2 ** h.refcountOrder,
    lazyRefcounts: s.lazyRefcounts,
    extendedL2: s.layout.extended,
    compressionType: s.compressionType,
    corrupt: (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n,
    dirty: (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
    backingFile: s.backingFile,
    backingFormat: s.ext.backingFormat,
    dataFile: s.ext.dataFile,
    ...(s.hasDataFile ? { dataFileRaw: s.dataFileRaw } : {}),
    encrypted: h.cryptMethod !== CRYPT_NONE,
    actualSize: s.storage.size(),
    snapshots: snapshotInfos(s.snapshots),
    bitmaps,
  };
}

/** Persistent bitmaps as qemu-img info lists them (only while the bitmaps autoclear bit vouches for them). */
function bitmapInfos(s: ImageState): ImageInfo['bitmaps'] {
  const b = s.ext.bitmaps;
  if (!b || !(s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) || b.nbBitmaps === 0) return [];
  const dir = decodeBitmapDirectory(s.storage.read(b.bitmapDirectoryOffset, b.bitmapDirectorySize), b.nbBitmaps);
  return dir.map((d) => ({
    name: d.name,
    granularity: 2 ** d.granularityBits,
    flags: [...(d.flags & BITMAP_FLAG_IN_USE ? ['in-use'] : []), ...(d.flags & BITMAP_FLAG_AUTO ? ['auto'] : [])],
  }));
}
