/**
 * Finds a valid image's metadata with the format codecs: where the L1, L2
 * and refcount tables, the data clusters and the snapshot entries are, so
 * that the mutation families can name the exact bytes they corrupt.
 */
import {
  alignUp,
  decodeCompressed,
  decodeExtensions,
  decodeHeader,
  decodeSnapshotTable,
  entryOffset,
  getRefcount,
  HEADER_V2_LENGTH,
  INCOMPAT_EXTL2,
  L1_ENTRY_SIZE,
  L2_ENTRY_SIZE,
  L2_EXTENDED_ENTRY_SIZE,
  OFLAG_COMPRESSED_HI,
  REFTABLE_ENTRY_SIZE,
  refcountEntriesPerBlock,
  SECTOR_SIZE,
  setRefcount,
  viewOf,
  type HeaderExtensions,
  type Qcow2Header,
  type SnapshotEntry,
} from '../../qcow2/format/index.js';
import { snapshotEntryLayout } from './record-layout.js';

export interface TableEntryRef {
  /** Byte position of the entry in the file. */
  pos: number;
  hi: number;
  lo: number;
}

export interface DataClusterRef {
  /** Byte position of the L2 entry. */
  l2EntryPos: number;
  hostOffset: number;
  compressed: boolean;
  /** For compressed clusters: the bytes the descriptor names. */
  compressedSize?: number;
}

export interface SnapshotRef {
  entryPos: number;
  entry: SnapshotEntry;
}

export interface ImageLayout {
  header: Qcow2Header;
  extensions: HeaderExtensions;
  /** Where the header extension list begins. */
  extensionsStart: number;
  clusterSize: number;
  fileSize: number;
  l2EntrySize: number;
  l1Entries: TableEntryRef[];
  /** Host offsets of the active L2 tables, in L1 order. */
  l2Tables: number[];
  dataClusters: DataClusterRef[];
  reftableEntries: TableEntryRef[];
  refblocks: number[];
  snapshots: SnapshotRef[];
  /** Host offsets of snapshot L1 tables and the L2 tables only snapshots use. */
  snapshotL1s: { offset: number; size: number }[];
  backingName?: string;
}

export function readEntry(img: Uint8Array, pos: number): TableEntryRef {
  const v = viewOf(img);
  return { pos, hi: v.getUint32(pos), lo: v.getUint32(pos + 4) };
}

interface ActiveTables {
  l1Entries: TableEntryRef[];
  l2Tables: number[];
  dataClusters: DataClusterRef[];
}

/** The active L1 table, each distinct L2 table it names, and every data cluster those map. */
function walkActiveTables(img: Uint8Array, header: Qcow2Header, l2EntrySize: number): ActiveTables {
  const cs = 2 ** header.clusterBits;
  const t: ActiveTables = { l1Entries: [], l2Tables: [], dataClusters: [] };
  for (let i = 0; i < header.l1Size; i++) {
    const e = readEntry(img, header.l1TableOffset + i * L1_ENTRY_SIZE);
    t.l1Entries.push(e);
    const l2 = entryOffset(e.hi, e.lo);
    if (!l2 || t.l2Tables.includes(l2)) continue;
    t.l2Tables.push(l2);
    for (let j = 0; j < cs / l2EntrySize; j++) {
      const pos = l2 + j * l2EntrySize;
      const le = readEntry(img, pos);
      if (le.hi & OFLAG_COMPRESSED_HI) {
        const c = decodeCompressed(le.hi, le.lo, header.clusterBits);
        t.dataClusters.push({ l2EntryPos: pos, hostOffset: c.offset, compressed: true, compressedSize: c.size });
      } else {
        const off = entryOffset(le.hi, le.lo);
        if (off) t.dataClusters.push({ l2EntryPos: pos, hostOffset: off, compressed: false });
      }
    }
  }
  return t;
}

/** Snapshot entries with their byte positions (an entry's size comes from its own encoded lengths). */
function walkSnapshots(img: Uint8Array, header: Qcow2Header): SnapshotRef[] {
  const snapshots: SnapshotRef[] = [];
  if (header.nbSnapshots === 0) return snapshots;
  const entries = decodeSnapshotTable(img.subarray(header.snapshotsOffset), header.nbSnapshots);
  const lay = snapshotEntryLayout();
  const v = viewOf(img);
  let pos = header.snapshotsOffset;
  for (const entry of entries) {
    snapshots.push({ entryPos: pos, entry });
    const idSize = v.getUint16(pos + lay.idSize.offset);
    const nameSize = v.getUint16(pos + lay.nameSize.offset);
    const extraSize = v.getUint32(pos + lay.extraSize.offset);
    // The fixed part ends where the extra data begins: right after the extra-size field.
    const fixed = lay.extraSize.offset + lay.extraSize.width;
    pos += alignUp(fixed + extraSize + idSize + nameSize, 8);
  }
  return snapshots;
}

/** Parses a valid image's metadata; throws (any error) when the image is not one it can walk. */
export function analyzeImage(img: Uint8Array): ImageLayout {
  const header = decodeHeader(img);
  const cs = 2 ** header.clusterBits;
  const extensionsStart = header.version === 3 ? header.headerLength : HEADER_V2_LENGTH;
  const extensions = decodeExtensions(img.subarray(0, Math.min(cs, img.length)), extensionsStart);
  const l2EntrySize = header.incompatibleFeatures & INCOMPAT_EXTL2 ? L2_EXTENDED_ENTRY_SIZE : L2_ENTRY_SIZE;
  const active = walkActiveTables(img, header, l2EntrySize);

  const reftableEntries: TableEntryRef[] = [];
  const refblocks: number[] = [];
  const rtEntries = (header.refcountTableClusters * cs) / REFTABLE_ENTRY_SIZE;
  for (let i = 0; i < rtEntries; i++) {
    const e = readEntry(img, header.refcountTableOffset + i * REFTABLE_ENTRY_SIZE);
    reftableEntries.push(e);
    const rb = entryOffset(e.hi, e.lo);
    if (rb) refblocks.push(rb);
  }

  const snapshots = walkSnapshots(img, header);
  let backingName: string | undefined;
  if (header.backingFileOffset && header.backingFileSize) {
    backingName = new TextDecoder().decode(
      img.subarray(header.backingFileOffset, header.backingFileOffset + header.backingFileSize),
    );
  }
  return {
    header,
    extensions,
    extensionsStart,
    clusterSize: cs,
    fileSize: img.length,
    l2EntrySize,
    ...active,
    reftableEntries,
    refblocks,
    snapshots,
    snapshotL1s: snapshots.map((s) => ({ offset: s.entry.l1TableOffset, size: s.entry.l1Size })),
    backingName,
  };
}

/** The refcount block holding host cluster `index`'s refcount, and the index inside it. */
function refblockFor(img: Uint8Array, lay: ImageLayout, index: number): { block: Uint8Array; at: number } | undefined {
  const epb = refcountEntriesPerBlock(lay.header.clusterBits, lay.header.refcountOrder);
  const rt = lay.reftableEntries[Math.floor(index / epb)];
  if (!rt) return undefined;
  const rb = entryOffset(rt.hi, rt.lo);
  if (!rb) return undefined;
  return { block: img.subarray(rb, rb + lay.clusterSize), at: index % epb };
}

/** Refcount of host cluster `index` per the image's refcount structures, or undefined when no refblock covers it. */
export function refcountOf(img: Uint8Array, lay: ImageLayout, index: number): number | undefined {
  const r = refblockFor(img, lay, index);
  return r && getRefcount(r.block, viewOf(r.block), r.at, lay.header.refcountOrder);
}

/** Sets a refcount in place; false (nothing written) when no whole refblock in the file covers the cluster. */
export function setRefcountIn(img: Uint8Array, lay: ImageLayout, index: number, value: number): boolean {
  const r = refblockFor(img, lay, index);
  if (!r || r.block.length < lay.clusterSize) return false;
  setRefcount(r.block, viewOf(r.block), r.at, lay.header.refcountOrder, value);
  return true;
}

/** Byte ranges holding metadata: header cluster, L1, L2s, reftable, refblocks, snapshot table. */
export function metadataRanges(lay: ImageLayout): [number, number][] {
  const h = lay.header;
  const cs = lay.clusterSize;
  const r: [number, number][] = [[0, Math.min(cs, lay.fileSize)]];
  if (h.l1Size) r.push([h.l1TableOffset, h.l1TableOffset + h.l1Size * L1_ENTRY_SIZE]);
  const usedReftable = Math.max(1, lay.reftableEntries.filter((e) => entryOffset(e.hi, e.lo)).length);
  r.push([h.refcountTableOffset, h.refcountTableOffset + usedReftable * REFTABLE_ENTRY_SIZE]);
  for (const l2 of lay.l2Tables) r.push([l2, l2 + cs]);
  for (const rb of lay.refblocks) r.push([rb, rb + cs]);
  if (h.nbSnapshots) r.push([h.snapshotsOffset, h.snapshotsOffset + SECTOR_SIZE]);
  return r.filter(([s, e]) => e > s && e <= lay.fileSize);
}
