/**
 * Hostile-image generator: given a valid qcow2 image, find its metadata with
 * the format codecs and produce named, deterministic corruptions of it
 * (header fields, extensions, L1/L2/reftable entries, refcounts, leaks,
 * overlapping tables, truncations, seeded byte flips, snapshot table).
 *
 * Byte positions of fields are not written down here: they are learnt from
 * the codecs themselves by encoding sentinel values (see `probe*`), so the
 * on-disk layout stays defined in src/qcow2/format only.
 */
import {
  alignDown,
  alignUp,
  decodeCompressed,
  decodeExtensions,
  decodeHeader,
  decodeSnapshotTable,
  encodeExtensions,
  encodeHeader,
  encodeSnapshotTable,
  entryOffset,
  getRefcount,
  HEADER_V2_LENGTH,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN,
  AUTOCLEAR_BITMAPS,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO_HEADER,
  EXT_FEATURE_TABLE,
  FEATURE_NAME_ENTRY_SIZE,
  encodeCompressed,
  OFFSET_MASK_HI,
  OFFSET_MASK_LO,
  L1_ENTRY_SIZE,
  L1_RESERVED_HI,
  L1_RESERVED_LO,
  L2_ENTRY_SIZE,
  L2_EXTENDED_ENTRY_SIZE,
  L2_RESERVED_HI,
  L2_RESERVED_LO,
  MAX_HOST_OFFSET,
  maxRefcount,
  OFLAG_COMPRESSED_HI,
  OFLAG_COPIED_HI,
  OFLAG_ZERO_LO,
  REFTABLE_RESERVED_LO,
  refcountEntriesPerBlock,
  SECTOR_SIZE,
  setRefcount,
  viewOf,
  type HeaderExtensions,
  type Qcow2Header,
  type SnapshotEntry,
} from '../qcow2/format/index.js';

/* ------------------------------------------------------------------ */
/* Layout probing: field positions learnt from the codecs               */
/* ------------------------------------------------------------------ */

export interface FieldPos {
  offset: number;
  width: 1 | 2 | 4 | 8;
}

type NumericHeaderField = {
  [K in keyof Qcow2Header]: Qcow2Header[K] extends number | bigint ? K : never;
}[keyof Qcow2Header];

/** Header fields a mutation can set, in on-disk order. */
export const HEADER_FIELDS = [
  'version',
  'backingFileOffset',
  'backingFileSize',
  'clusterBits',
  'size',
  'cryptMethod',
  'l1Size',
  'l1TableOffset',
  'refcountTableOffset',
  'refcountTableClusters',
  'nbSnapshots',
  'snapshotsOffset',
  'incompatibleFeatures',
  'compatibleFeatures',
  'autoclearFeatures',
  'refcountOrder',
  'headerLength',
  'compressionType',
] as const satisfies readonly NumericHeaderField[];
export type HeaderField = (typeof HEADER_FIELDS)[number];

/** Indices where two equally long prefixes differ. */
function diffIndices(a: Uint8Array, b: Uint8Array): number[] {
  const out: number[] = [];
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

/** Fields are naturally aligned in every qcow2 structure; widen a diff span to the width it implies. */
function spanToField(idx: number[]): FieldPos {
  if (idx.length === 0) throw new Error('probe found no difference');
  const first = idx[0];
  const last = idx[idx.length - 1];
  const width = (last - first < 1 ? (first % 4 === 3 ? 4 : 1) : last - first < 2 ? 2 : last - first < 4 ? 4 : 8) as FieldPos['width'];
  return { offset: alignDown(first, width), width };
}

function baseHeader(version: 2 | 3): Qcow2Header {
  return {
    version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: 16,
    size: 0,
    cryptMethod: 0,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: 0,
    refcountTableClusters: 0,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 0,
    headerLength: 0,
    compressionType: 0,
    extraHeaderBytes: new Uint8Array(0),
  };
}

let headerPositions: Map<HeaderField, FieldPos> | undefined;

/** Where each header field lives, found by encoding sentinel values with encodeHeader. */
export function headerFieldPositions(): Map<HeaderField, FieldPos> {
  if (headerPositions) return headerPositions;
  const m = new Map<HeaderField, FieldPos>();
  const base = encodeHeader(baseHeader(3));
  for (const f of HEADER_FIELDS) {
    if (f === 'version') {
      // version is 2 or 3; the two encodings differ in the version field and in length.
      const v2 = encodeHeader(baseHeader(2));
      m.set(f, spanToField(diffIndices(v2, base).slice(0, 1)));
      continue;
    }
    if (f === 'headerLength') {
      const a = encodeHeader({ ...baseHeader(3), headerLength: base.length + 8 });
      m.set(f, spanToField(diffIndices(base, a)));
      continue;
    }
    const idx = new Set<number>();
    const probes: (number | bigint)[] =
      typeof baseHeader(3)[f] === 'bigint' ? [0xffff_ffff_ffff_ffffn] : [0xffffffff, 0xff000000 * 2 ** 32];
    for (const p of probes) {
      const enc = encodeHeader({ ...baseHeader(3), [f]: p });
      for (const i of diffIndices(base, enc)) idx.add(i);
    }
    const sorted = [...idx].sort((a, b) => a - b);
    // A u32 probed with 0xffffffff differs in all four bytes; the high probe only lands in u64s.
    m.set(f, spanToField(sorted));
  }
  headerPositions = m;
  return m;
}

function findU32(buf: Uint8Array, value: number): number {
  const v = viewOf(buf);
  for (let i = 0; i + 4 <= buf.length; i++) if (v.getUint32(i) === value) return i;
  throw new Error(`probe value ${value} not found`);
}

function findU16(buf: Uint8Array, value: number): number {
  const v = viewOf(buf);
  for (let i = 0; i + 2 <= buf.length; i++) if (v.getUint16(i) === value) return i;
  throw new Error(`probe value ${value} not found`);
}

interface ExtRecordLayout {
  typePos: number;
  lengthPos: number;
  dataPos: number;
}
let extLayout: ExtRecordLayout | undefined;

/** Position of type, length and data inside one header extension record. */
export function extensionRecordLayout(): ExtRecordLayout {
  if (extLayout) return extLayout;
  const type = 0x5a3c1e0f;
  const len = 0x1b;
  const enc = encodeExtensions({ unknown: [{ type, data: new Uint8Array(len).fill(0xee) }] });
  extLayout = { typePos: findU32(enc, type), lengthPos: findU32(enc, len), dataPos: enc.indexOf(0xee) };
  return extLayout;
}

interface SnapshotEntryLayout {
  l1TableOffset: FieldPos;
  l1Size: FieldPos;
  idSize: FieldPos;
  nameSize: FieldPos;
  extraSize: FieldPos;
  diskSize: FieldPos;
}
let snapLayout: SnapshotEntryLayout | undefined;

function probeSnapshot(): SnapshotEntry {
  return {
    l1TableOffset: 0,
    l1Size: 0,
    id: '',
    name: '',
    dateSec: 0,
    dateNsec: 0,
    vmClockNsec: 0,
    vmStateSize: 0,
    vmStateSizeLarge: 0,
    diskSize: 0,
    icount: 0n,
    extraUnknown: new Uint8Array(0),
  };
}

/** Positions of the snapshot table entry fields mutations touch. */
export function snapshotEntryLayout(): SnapshotEntryLayout {
  if (snapLayout) return snapLayout;
  const base = encodeSnapshotTable([probeSnapshot()]);
  const at = (e: Partial<SnapshotEntry>, field: 'u64' | 'u32'): FieldPos => {
    const enc = encodeSnapshotTable([{ ...probeSnapshot(), ...e }]);
    const d = diffIndices(base, enc);
    return field === 'u64' ? { offset: alignDown(d[0], 8), width: 8 } : { offset: alignDown(d[0], 4), width: 4 };
  };
  const idProbe = 'i'.repeat(0x0131);
  const nameProbe = 'n'.repeat(0x0257);
  const withStrings = encodeSnapshotTable([{ ...probeSnapshot(), id: idProbe, name: nameProbe }]);
  const extraProbe = encodeSnapshotTable([{ ...probeSnapshot(), extraUnknown: new Uint8Array(0x0345) }]);
  // extra_data_size = known extra fields + 0x345 unknown bytes; find the u32 that grew by 0x345.
  const grownAt = diffIndices(base, extraProbe).filter((i) => i < base.length);
  snapLayout = {
    l1TableOffset: at({ l1TableOffset: 0xff000000 * 2 ** 32 }, 'u64'),
    l1Size: at({ l1Size: 0xffffffff }, 'u32'),
    idSize: { offset: findU16(withStrings, 0x0131), width: 2 },
    nameSize: { offset: findU16(withStrings, 0x0257), width: 2 },
    extraSize: { offset: alignDown(grownAt[0], 4), width: 4 },
    diskSize: at({ diskSize: 0xff000000 * 2 ** 32 }, 'u64'),
  };
  return snapLayout;
}

/* ------------------------------------------------------------------ */
/* Image analysis                                                      */
/* ------------------------------------------------------------------ */

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

function readEntry(img: Uint8Array, pos: number): TableEntryRef {
  const v = viewOf(img);
  return { pos, hi: v.getUint32(pos), lo: v.getUint32(pos + 4) };
}

/** Parses a valid image's metadata; throws (any error) when the image is not one it can walk. */
export function analyzeImage(img: Uint8Array): ImageLayout {
  const header = decodeHeader(img);
  const cs = 2 ** header.clusterBits;
  const extensionsStart = header.version === 3 ? header.headerLength : HEADER_V2_LENGTH;
  const firstClusterEnd = Math.min(cs, img.length);
  const extensions = decodeExtensions(img.subarray(0, firstClusterEnd), extensionsStart);
  const ext = (header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  const l2EntrySize = ext ? L2_EXTENDED_ENTRY_SIZE : L2_ENTRY_SIZE;

  const l1Entries: TableEntryRef[] = [];
  const l2Tables: number[] = [];
  const dataClusters: DataClusterRef[] = [];
  const walkL1 = (l1Offset: number, l1Size: number, active: boolean): void => {
    for (let i = 0; i < l1Size; i++) {
      const e = readEntry(img, l1Offset + i * L1_ENTRY_SIZE);
      if (active) l1Entries.push(e);
      const l2 = entryOffset(e.hi, e.lo);
      if (!l2 || l2Tables.includes(l2)) continue;
      if (!active) continue;
      l2Tables.push(l2);
      for (let j = 0; j < cs / l2EntrySize; j++) {
        const pos = l2 + j * l2EntrySize;
        const le = readEntry(img, pos);
        if (le.hi & OFLAG_COMPRESSED_HI) {
          const c = decodeCompressed(le.hi, le.lo, header.clusterBits);
          dataClusters.push({ l2EntryPos: pos, hostOffset: c.offset, compressed: true, compressedSize: c.size });
        } else {
          const off = entryOffset(le.hi, le.lo);
          if (off) dataClusters.push({ l2EntryPos: pos, hostOffset: off, compressed: false });
        }
      }
    }
  };
  walkL1(header.l1TableOffset, header.l1Size, true);

  const reftableEntries: TableEntryRef[] = [];
  const refblocks: number[] = [];
  const rtEntries = (header.refcountTableClusters * cs) / L1_ENTRY_SIZE;
  for (let i = 0; i < rtEntries; i++) {
    const e = readEntry(img, header.refcountTableOffset + i * L1_ENTRY_SIZE);
    reftableEntries.push(e);
    const rb = entryOffset(e.hi, e.lo);
    if (rb) refblocks.push(rb);
  }

  const snapshots: SnapshotRef[] = [];
  const snapshotL1s: { offset: number; size: number }[] = [];
  if (header.nbSnapshots > 0) {
    const table = img.subarray(header.snapshotsOffset);
    const entries = decodeSnapshotTable(table, header.nbSnapshots);
    // Entry positions: walk the table again one entry at a time using each entry's encoded size.
    let pos = header.snapshotsOffset;
    const lay = snapshotEntryLayout();
    for (const entry of entries) {
      snapshots.push({ entryPos: pos, entry });
      snapshotL1s.push({ offset: entry.l1TableOffset, size: entry.l1Size });
      const v = viewOf(img);
      const idSize = v.getUint16(pos + lay.idSize.offset);
      const nameSize = v.getUint16(pos + lay.nameSize.offset);
      const extraSize = v.getUint32(pos + lay.extraSize.offset);
      // The fixed part ends where the extra data begins: right after the extra-size field.
      const fixed = lay.extraSize.offset + lay.extraSize.width;
      pos += alignUp(fixed + extraSize + idSize + nameSize, 8);
    }
  }

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
    l1Entries,
    l2Tables,
    dataClusters,
    reftableEntries,
    refblocks,
    snapshots,
    snapshotL1s,
    backingName,
  };
}

/** Refcount of host cluster `index` per the image's refcount structures, or undefined when no refblock covers it. */
export function refcountOf(img: Uint8Array, lay: ImageLayout, index: number): number | undefined {
  const epb = refcountEntriesPerBlock(lay.header.clusterBits, lay.header.refcountOrder);
  const rt = lay.reftableEntries[Math.floor(index / epb)];
  if (!rt) return undefined;
  const rb = entryOffset(rt.hi, rt.lo);
  if (!rb) return undefined;
  const block = img.subarray(rb, rb + lay.clusterSize);
  return getRefcount(block, viewOf(block), index % epb, lay.header.refcountOrder);
}

function setRefcountIn(img: Uint8Array, lay: ImageLayout, index: number, value: number): boolean {
  const epb = refcountEntriesPerBlock(lay.header.clusterBits, lay.header.refcountOrder);
  const rt = lay.reftableEntries[Math.floor(index / epb)];
  if (!rt) return false;
  const rb = entryOffset(rt.hi, rt.lo);
  if (!rb || rb + lay.clusterSize > img.length) return false;
  const block = img.subarray(rb, rb + lay.clusterSize);
  setRefcount(block, viewOf(block), index % epb, lay.header.refcountOrder, value);
  return true;
}

/* ------------------------------------------------------------------ */
/* Mutations                                                           */
/* ------------------------------------------------------------------ */

export type MutationKind =
  | 'header'
  | 'extension'
  | 'l1'
  | 'l2'
  | 'reftable'
  | 'refcount'
  | 'leak'
  | 'overlap'
  | 'truncate'
  | 'flip'
  | 'snapshot';

export interface Mutation {
  /** Stable, unique within one image: used as a test title and to replay one case. */
  name: string;
  kind: MutationKind;
  description: string;
  /** A fresh corrupted copy of the image. */
  apply(): Uint8Array;
}

export interface MutateOptions {
  /** Seed of the random byte flips. */
  seed?: number;
  /** How many random byte-flip mutations to add. */
  flips?: number;
}

/** mulberry32: small, fast, and identical on every platform. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Writes value (number or bigint, any 64-bit pattern) big-endian into a field. */
function putField(img: Uint8Array, pos: number, width: FieldPos['width'], value: number | bigint): void {
  const v = viewOf(img);
  const big = typeof value === 'bigint' ? value : BigInt(value);
  const mask = (1n << BigInt(width * 8)) - 1n;
  const x = big & mask;
  if (width === 1) v.setUint8(pos, Number(x));
  else if (width === 2) v.setUint16(pos, Number(x));
  else if (width === 4) v.setUint32(pos, Number(x));
  else v.setBigUint64(pos, x);
}

function putEntry(img: Uint8Array, pos: number, hi: number, lo: number): void {
  const v = viewOf(img);
  v.setUint32(pos, hi >>> 0);
  v.setUint32(pos + 4, lo >>> 0);
}

/** hi/lo halves of an entry with its host offset replaced and every flag bit kept. */
function withOffset(hi: number, lo: number, offset: number): [number, number] {
  const keepHi = hi & ~OFFSET_MASK_HI;
  const keepLo = lo & ~OFFSET_MASK_LO;
  const ohi = Math.floor(offset / 2 ** 32) & OFFSET_MASK_HI;
  const olo = (offset >>> 0) & OFFSET_MASK_LO;
  return [(keepHi | ohi) >>> 0, (keepLo | olo) >>> 0];
}

const U32_MAX = 0xffffffff;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/**
 * Every mutation this generator knows for the image, in a fixed order.
 * Mutations that do not apply to this image (no snapshots, no backing file…)
 * are left out rather than produced as no-ops.
 */
export function listMutations(input: Uint8Array, opts: MutateOptions = {}): Mutation[] {
  // A private plain Uint8Array: Buffer.slice would share memory and let one mutation leak into the next.
  const img = new Uint8Array(input);
  const lay = analyzeImage(img);
  const h = lay.header;
  const cs = lay.clusterSize;
  const out: Mutation[] = [];
  const names = new Set<string>();
  const add = (kind: MutationKind, name: string, description: string, fn: (m: Uint8Array) => Uint8Array | void): void => {
    if (names.has(name)) return;
    names.add(name);
    out.push({
      name: `${kind}:${name}`,
      kind,
      description,
      apply: () => {
        const copy = img.slice();
        return fn(copy) ?? copy;
      },
    });
  };
  const eofCluster = alignUp(lay.fileSize, cs);
  const far = 2 ** 55; // largest power of two a 56-bit host offset can name
  const pos = headerFieldPositions();

  // ---- header fields -------------------------------------------------
  const setHeader = (f: HeaderField, value: number | bigint, label: string, why: string): void => {
    const p = pos.get(f)!;
    if (f !== 'version' && h.version === 2 && p.offset >= HEADER_V2_LENGTH) return;
    if (BigInt(h[f]) === BigInt(value)) return; // not a mutation
    add('header', `${f}=${label}`, `${f} set to ${value} (${why})`, (m) => putField(m, p.offset, p.width, value));
  };
  const offsetValues = (f: HeaderField, cur: number): void => {
    setHeader(f, 0, 'zero', 'points at the header');
    setHeader(f, cur + SECTOR_SIZE, 'misaligned', 'not cluster aligned');
    setHeader(f, cur + 1, 'odd', 'not even sector aligned');
    setHeader(f, eofCluster, 'just-past-eof', 'first cluster after the end of the file');
    setHeader(f, far, 'far-past-eof', '2^55');
    setHeader(f, U64_MAX, 'u64-max', 'all bits set');
    setHeader(f, 1n << 63n, 'bit63', 'only the sign bit set');
  };
  const countValues = (f: HeaderField, cur: number): void => {
    setHeader(f, 0, 'zero', 'zero');
    setHeader(f, U32_MAX, 'u32-max', 'huge count');
    setHeader(f, 0x7fffffff, 'i32-max', 'huge count');
    setHeader(f, cur + 1, 'plus-one', 'one more than the real one');
    if (cur > 0) setHeader(f, cur - 1, 'minus-one', 'one less than the real one');
  };

  setHeader('version', 1, '1', 'qcow version 1');
  setHeader('version', 4, '4', 'future version');
  setHeader('version', U32_MAX, 'u32-max', 'nonsense version');

  for (const v of [0, 8, 22, 31, 63, U32_MAX]) setHeader('clusterBits', v, String(v), 'cluster size outside 512 B..2 MiB');
  setHeader('clusterBits', h.clusterBits + 1, 'plus-one', 'tables read with the wrong cluster size');
  setHeader('clusterBits', h.clusterBits - 1, 'minus-one', 'tables read with the wrong cluster size');

  setHeader('size', 0, 'zero', 'empty disk');
  setHeader('size', h.size + 1, 'unaligned', 'size not a multiple of 512');
  setHeader('size', U64_MAX, 'u64-max', 'all bits set');
  setHeader('size', 1n << 63n, 'bit63', 'negative as int64');
  setHeader('size', 2 ** 62, '2^62', 'beyond any L1 table');
  {
    // One guest cluster more than the L1 table can map.
    const perL1 = cs * (cs / lay.l2EntrySize);
    setHeader('size', h.l1Size * perL1 + cs, 'past-l1', 'larger than l1_size can map');
  }

  setHeader('cryptMethod', 1, 'aes', 'legacy AES encryption');
  setHeader('cryptMethod', 2, 'luks', 'LUKS encryption without its header extension');
  setHeader('cryptMethod', 3, '3', 'unknown encryption method');
  setHeader('cryptMethod', U32_MAX, 'u32-max', 'unknown encryption method');

  countValues('l1Size', h.l1Size);
  setHeader('l1Size', 0x00400001, 'above-32MiB', 'L1 table larger than QEMU allows');
  offsetValues('l1TableOffset', h.l1TableOffset);

  offsetValues('refcountTableOffset', h.refcountTableOffset);
  countValues('refcountTableClusters', h.refcountTableClusters);

  countValues('nbSnapshots', h.nbSnapshots);
  setHeader('nbSnapshots', 65537, 'above-65536', 'more snapshots than QEMU allows');
  if (h.nbSnapshots > 0) offsetValues('snapshotsOffset', h.snapshotsOffset);
  else {
    setHeader('nbSnapshots', 1, 'one-at-zero', 'one snapshot at offset 0 (the header)');
  }

  if (lay.backingName !== undefined) {
    offsetValues('backingFileOffset', h.backingFileOffset);
    setHeader('backingFileSize', 0, 'zero', 'empty backing file name');
    setHeader('backingFileSize', U32_MAX, 'u32-max', 'name longer than the file');
    setHeader('backingFileSize', 1024, '1024', 'name longer than QEMU allows');
    setHeader('backingFileSize', h.backingFileSize - 1, 'minus-one', 'name cut short');
  } else {
    add('header', 'backing=header-bytes', 'backing file name pointing at header bytes (binary garbage)', (m) => {
      putField(m, pos.get('backingFileOffset')!.offset, 8, 8);
      putField(m, pos.get('backingFileSize')!.offset, 4, 16);
    });
    add('header', 'backing=past-eof', 'backing file name past the end of the file', (m) => {
      putField(m, pos.get('backingFileOffset')!.offset, 8, eofCluster);
      putField(m, pos.get('backingFileSize')!.offset, 4, 16);
    });
  }

  if (h.version === 3) {
    setHeader('incompatibleFeatures', h.incompatibleFeatures | (1n << 5n), 'unknown-bit5', 'first unknown incompatible bit');
    setHeader('incompatibleFeatures', h.incompatibleFeatures | (1n << 63n), 'unknown-bit63', 'top unknown incompatible bit');
    setHeader('incompatibleFeatures', U64_MAX, 'all', 'every incompatible bit');
    setHeader('incompatibleFeatures', h.incompatibleFeatures | INCOMPAT_DIRTY, 'dirty', 'dirty bit without lazy refcounts');
    setHeader('incompatibleFeatures', h.incompatibleFeatures | INCOMPAT_CORRUPT, 'corrupt', 'corrupt bit');
    setHeader('incompatibleFeatures', h.incompatibleFeatures | INCOMPAT_DATA_FILE, 'data-file', 'external data file without its name');
    setHeader('incompatibleFeatures', h.incompatibleFeatures ^ INCOMPAT_EXTL2, 'extl2-flipped', 'L2 entries read at the wrong width');
    setHeader('incompatibleFeatures', h.incompatibleFeatures ^ INCOMPAT_COMPRESSION, 'compression-flipped', 'compression type bit flipped');
    setHeader('incompatibleFeatures', h.incompatibleFeatures & ~INCOMPAT_KNOWN, 'none', 'every known bit cleared');
    setHeader('compatibleFeatures', U64_MAX, 'all', 'every compatible bit (unknown ones must be ignored)');
    setHeader('autoclearFeatures', U64_MAX, 'all', 'every autoclear bit (unknown ones cleared on write)');
    setHeader('autoclearFeatures', h.autoclearFeatures | AUTOCLEAR_BITMAPS, 'bitmaps', 'bitmaps bit without the extension');
    for (const v of [0, 3, 5, 6, 7, 31, U32_MAX]) {
      if (v !== h.refcountOrder) setHeader('refcountOrder', v, String(v), 'refcount width changed under the refblocks');
    }
    for (const v of [0, 8, 100, 103, 105, 4096, cs, cs + 8, U32_MAX]) {
      if (v !== h.headerLength) setHeader('headerLength', v, String(v), 'header length nonsense');
    }
    for (const v of [1, 2, 255]) {
      if (v !== h.compressionType) setHeader('compressionType', v, String(v), 'compression type with or without its bit');
    }
    add('header', 'compressionType=zstd-without-bit', 'compression type zstd but the compression incompatible bit clear', (m) => {
      putField(m, pos.get('compressionType')!.offset, 1, 1);
      const f = pos.get('incompatibleFeatures')!;
      putField(m, f.offset, 8, h.incompatibleFeatures & ~INCOMPAT_COMPRESSION);
    });
  }

  // ---- header extensions --------------------------------------------
  const er = extensionRecordLayout();
  const firstExt = lay.extensionsStart;
  const extLenPos = firstExt + er.lengthPos;
  const hasExt = viewOf(img).getUint32(firstExt + er.typePos) !== 0;
  if (hasExt) {
    for (const [label, v] of [
      ['u32-max', U32_MAX],
      ['past-cluster', cs],
      ['odd', viewOf(img).getUint32(extLenPos) + 1],
    ] as const) {
      add('extension', `first-length=${label}`, `first header extension length set to ${v}`, (m) => putField(m, extLenPos, 4, v));
    }
  }
  add('extension', 'no-end-marker', 'extension list never ends: the rest of the first cluster filled with an unknown record pattern', (m) => {
    const fill = new Uint8Array(cs - firstExt);
    const v = viewOf(fill);
    for (let p = 0; p + 8 <= fill.length; p += 8) {
      v.setUint32(p + er.typePos, 0x11111111);
      v.setUint32(p + er.lengthPos, 0);
    }
    m.set(fill, firstExt);
    // The backing file name (if any) lived here; it is now garbage, which is the point.
  });
  const withExtensions = (name: string, description: string, change: (e: HeaderExtensions) => HeaderExtensions, hdr?: Partial<Qcow2Header>): void => {
    add('extension', name, description, (m) => rewriteHeaderCluster(m, lay, change(structuredClone(lay.extensions)), hdr));
  };
  withExtensions('unknown-ext', 'an unknown header extension (must be ignored and kept)', (e) => ({
    ...e,
    unknown: [...e.unknown, { type: 0x7a7a7a7a, data: new Uint8Array(13).fill(7) }],
  }));
  withExtensions('backing-format=vmdk', 'backing format extension naming an unsupported format', (e) => ({ ...e, backingFormat: 'vmdk' }));
  withExtensions('backing-format=garbage', 'backing format extension with binary garbage', (e) => ({ ...e, backingFormat: '\u0001\u00ff\u0000x' }));
  withExtensions('feature-table-odd', 'feature name table with a length not a multiple of an entry', (e) => ({
    ...e,
    featureNames: undefined,
    unknown: [...e.unknown, { type: EXT_FEATURE_TABLE, data: new Uint8Array(FEATURE_NAME_ENTRY_SIZE - 1).fill(0x41) }],
  }));
  withExtensions('duplicate-backing-format', 'the backing format extension twice', (e) => ({
    ...e,
    backingFormat: e.backingFormat ?? 'qcow2',
    unknown: [...e.unknown, { type: EXT_BACKING_FORMAT, data: new TextEncoder().encode('raw') }],
  }));
  withExtensions('bitmaps-short', 'bitmaps extension of 3 bytes', (e) => ({
    ...e,
    unknown: [...e.unknown, { type: EXT_BITMAPS, data: new Uint8Array(3) }],
  }), { autoclearFeatures: h.autoclearFeatures | AUTOCLEAR_BITMAPS });
  withExtensions('crypto-short', 'encryption header extension of 5 bytes', (e) => ({
    ...e,
    unknown: [...e.unknown, { type: EXT_CRYPTO_HEADER, data: new Uint8Array(5) }],
  }));
  if (h.version === 3) {
    withExtensions(
      'bitmaps-huge',
      'bitmaps extension with a huge bitmap count and directory past the end, autoclear bit set',
      (e) => ({ ...e, bitmaps: { nbBitmaps: 65535, reserved: 0, bitmapDirectorySize: 2 ** 40, bitmapDirectoryOffset: eofCluster } }),
      { autoclearFeatures: h.autoclearFeatures | AUTOCLEAR_BITMAPS },
    );
    withExtensions(
      'bitmaps-dir-in-header',
      'bitmaps extension whose directory is the header cluster',
      (e) => ({ ...e, bitmaps: { nbBitmaps: 1, reserved: 0, bitmapDirectorySize: 64, bitmapDirectoryOffset: 0 } }),
      { autoclearFeatures: h.autoclearFeatures | AUTOCLEAR_BITMAPS },
    );
    withExtensions(
      'data-file-name',
      'external data file extension and incompatible bit naming a file that does not exist',
      (e) => ({ ...e, dataFile: 'no-such-data-file.raw' }),
      { incompatibleFeatures: h.incompatibleFeatures | INCOMPAT_DATA_FILE },
    );
    withExtensions(
      'crypto-header-past-eof',
      'LUKS crypt method with an encryption header extension past the end of the file',
      (e) => ({ ...e, cryptoHeader: { offset: eofCluster, length: 2 ** 40 } }),
      { cryptMethod: 2 },
    );
  }
  // ---- L1 entries -----------------------------------------------------
  const l1Targets = tableTargets(lay, eofCluster, far);
  const usedL1 = lay.l1Entries.filter((e) => entryOffset(e.hi, e.lo) !== 0);
  const firstL1 = usedL1[0];
  if (firstL1) {
    for (const [label, target] of l1Targets) {
      if (target === entryOffset(firstL1.hi, firstL1.lo)) continue;
      add('l1', `first->${label}`, `first used L1 entry pointing ${label}`, (m) => {
        const [hi, lo] = withOffset(firstL1.hi, firstL1.lo, target);
        putEntry(m, firstL1.pos, hi, lo);
      });
    }
    add('l1', 'first-reserved-lo', 'reserved low bits of an L1 entry set', (m) => putEntry(m, firstL1.pos, firstL1.hi, firstL1.lo | L1_RESERVED_LO));
    add('l1', 'first-reserved-hi', 'reserved high bits of an L1 entry set', (m) => putEntry(m, firstL1.pos, firstL1.hi | L1_RESERVED_HI, firstL1.lo));
    add('l1', 'first-copied-flipped', 'OFLAG_COPIED flipped on an L1 entry', (m) => putEntry(m, firstL1.pos, firstL1.hi ^ OFLAG_COPIED_HI, firstL1.lo));
    add('l1', 'first-compressed-flag', 'compressed flag (reserved in L1) set', (m) => putEntry(m, firstL1.pos, firstL1.hi | OFLAG_COMPRESSED_HI, firstL1.lo));
    add('l1', 'first-all-ones', 'L1 entry all ones', (m) => putEntry(m, firstL1.pos, U32_MAX, U32_MAX));
    if (usedL1.length > 1) {
      const second = usedL1[1];
      add('l1', 'two-share-l2', 'two L1 entries pointing at the same L2 table (COPIED set on both)', (m) => putEntry(m, second.pos, firstL1.hi, firstL1.lo));
    }
  }
  const unusedL1 = lay.l1Entries.find((e) => entryOffset(e.hi, e.lo) === 0);
  if (unusedL1 && firstL1) {
    add('l1', 'unused->same-l2', 'an unused L1 entry pointing at an existing L2 table', (m) => putEntry(m, unusedL1.pos, firstL1.hi, firstL1.lo));
    add('l1', 'unused->past-eof', 'an unused L1 entry pointing past the end of the file', (m) => {
      const [hi, lo] = withOffset(OFLAG_COPIED_HI, 0, eofCluster);
      putEntry(m, unusedL1.pos, hi, lo);
    });
  }

  // ---- L2 entries -----------------------------------------------------
  const normal = lay.dataClusters.find((d) => !d.compressed);
  const compressed = lay.dataClusters.find((d) => d.compressed);
  if (normal) {
    const e = readEntry(img, normal.l2EntryPos);
    for (const [label, target] of l1Targets) {
      if (target === normal.hostOffset) continue;
      add('l2', `normal->${label}`, `a normal L2 entry pointing ${label}`, (m) => {
        const [hi, lo] = withOffset(e.hi, e.lo, target);
        putEntry(m, e.pos, hi, lo);
      });
    }
    add('l2', 'normal->own-l2', 'a normal L2 entry pointing at its own L2 table', (m) => {
      const [hi, lo] = withOffset(e.hi, e.lo, alignDown(e.pos, cs));
      putEntry(m, e.pos, hi, lo);
    });
    add('l2', 'normal-reserved-lo', 'reserved low bits of an L2 entry set', (m) => putEntry(m, e.pos, e.hi, e.lo | L2_RESERVED_LO));
    add('l2', 'normal-reserved-hi', 'reserved high bits of an L2 entry set', (m) => putEntry(m, e.pos, e.hi | L2_RESERVED_HI, e.lo));
    add('l2', 'normal-copied-flipped', 'OFLAG_COPIED flipped on a normal L2 entry', (m) => putEntry(m, e.pos, e.hi ^ OFLAG_COPIED_HI, e.lo));
    add('l2', 'normal-zero-flag', 'zero flag set on a normal entry (reserved in v2)', (m) => putEntry(m, e.pos, e.hi, e.lo | OFLAG_ZERO_LO));
    add('l2', 'normal-made-compressed', 'compressed flag set on a normal entry', (m) => putEntry(m, e.pos, e.hi | OFLAG_COMPRESSED_HI, e.lo));
    add('l2', 'normal-all-ones', 'L2 entry all ones', (m) => putEntry(m, e.pos, U32_MAX, U32_MAX));
    const other = lay.dataClusters.find((d) => !d.compressed && d.l2EntryPos !== normal.l2EntryPos);
    if (other) {
      add('l2', 'two-share-cluster', 'two L2 entries pointing at the same data cluster, both COPIED', (m) => putEntry(m, other.l2EntryPos, e.hi, e.lo));
    }
    if (lay.l2EntrySize === L2_EXTENDED_ENTRY_SIZE) {
      const bm = e.pos + L2_ENTRY_SIZE;
      add('l2', 'extl2-alloc-and-zero', 'subcluster bitmap with a subcluster both allocated and zero', (m) => putField(m, bm, 8, U64_MAX));
      add('l2', 'extl2-zero-only', 'subcluster bitmap all zero bits on an allocated cluster', (m) => {
        putField(m, bm, 8, 0xffff_ffff_0000_0000n);
      });
    }
  }
  const unallocL2 = findUnallocatedL2Entry(img, lay);
  if (unallocL2 !== undefined) {
    const e = readEntry(img, unallocL2);
    if (lay.l2EntrySize === L2_EXTENDED_ENTRY_SIZE) {
      add('l2', 'extl2-alloc-bits-on-unallocated', 'allocation bits set on an unallocated cluster', (m) => putField(m, unallocL2 + L2_ENTRY_SIZE, 8, 0xffff_ffffn));
    }
    add('l2', 'unallocated->past-eof', 'an unallocated L2 entry pointing past the end', (m) => {
      const [hi, lo] = withOffset(OFLAG_COPIED_HI, 0, eofCluster);
      putEntry(m, e.pos, hi, lo);
    });
    add('l2', 'unallocated->header', 'an unallocated L2 entry pointing at the header (COPIED)', (m) => putEntry(m, e.pos, OFLAG_COPIED_HI, 0));
    add('l2', 'zero-alloc->l1', 'an unallocated L2 entry made zero-allocated, pointing at the L1 table', (m) => {
      const [hi, lo] = withOffset(OFLAG_COPIED_HI, OFLAG_ZERO_LO, alignDown(h.l1TableOffset, cs));
      putEntry(m, e.pos, hi, lo);
    });
    add('l2', 'compressed->past-eof', 'a compressed descriptor pointing past the end', (m) => {
      const [hi, lo] = encodeCompressed(eofCluster, SECTOR_SIZE, h.clusterBits);
      putEntry(m, e.pos, hi, lo);
    });
    add('l2', 'compressed->header', 'a compressed descriptor naming the header as deflate data', (m) => putEntry(m, e.pos, OFLAG_COMPRESSED_HI, 0));
    add('l2', 'compressed-all-ones', 'a compressed descriptor with every offset and size bit set', (m) => putEntry(m, e.pos, (OFLAG_COMPRESSED_HI | 0x3fffffff) >>> 0, 0));
  }
  if (compressed) {
    const e = readEntry(img, compressed.l2EntryPos);
    add('l2', 'compressed-copied', 'OFLAG_COPIED set on a compressed entry', (m) => putEntry(m, e.pos, e.hi | OFLAG_COPIED_HI, e.lo));
    add('l2', 'compressed-offset+1', 'compressed data offset moved by one byte (bad deflate stream)', (m) => putEntry(m, e.pos, e.hi, (e.lo + 1) >>> 0));
    add('l2', 'compressed-size-max', 'compressed sector count field at its maximum', (m) => {
      const x = 62 - (h.clusterBits - 8);
      const countMask = ((2 ** (62 - x) - 1) * 2 ** (x - 32)) >>> 0;
      putEntry(m, e.pos, (e.hi | countMask) >>> 0, e.lo);
    });
    add('l2', 'compressed-data-garbage', 'the compressed payload overwritten with 0xA5', (m) => {
      const n = Math.min(compressed.compressedSize ?? SECTOR_SIZE, m.length - compressed.hostOffset);
      m.fill(0xa5, compressed.hostOffset, compressed.hostOffset + n);
    });
    add('l2', 'compressed-data-zeros', 'the compressed payload overwritten with zeros', (m) => {
      const n = Math.min(compressed.compressedSize ?? SECTOR_SIZE, m.length - compressed.hostOffset);
      m.fill(0, compressed.hostOffset, compressed.hostOffset + n);
    });
  }
  if (lay.l2Tables.length > 0) {
    const l2 = lay.l2Tables[0];
    add('l2', 'table-all-ones', 'an entire L2 table of 0xff', (m) => m.fill(0xff, l2, l2 + cs));
    add('l2', 'table-pattern', 'an entire L2 table of a repeating pattern', (m) => {
      for (let i = l2; i < l2 + cs; i++) m[i] = (i * 37) & 0xff;
    });
  }

  // ---- reftable -------------------------------------------------------
  const rt0 = lay.reftableEntries[0];
  if (rt0) {
    for (const [label, target] of l1Targets) {
      if (target === entryOffset(rt0.hi, rt0.lo)) continue;
      add('reftable', `first->${label}`, `first reftable entry pointing ${label}`, (m) => {
        const [hi, lo] = withOffset(rt0.hi, rt0.lo, target);
        putEntry(m, rt0.pos, hi, lo);
      });
    }
    add('reftable', 'first-zero', 'first reftable entry cleared (every refcount reads 0)', (m) => putEntry(m, rt0.pos, 0, 0));
    add('reftable', 'first-reserved', 'reserved low bits of a reftable entry set', (m) => putEntry(m, rt0.pos, rt0.hi, rt0.lo | REFTABLE_RESERVED_LO));
    add('reftable', 'first-all-ones', 'reftable entry all ones', (m) => putEntry(m, rt0.pos, U32_MAX, U32_MAX));
  }
  const rtUnused = lay.reftableEntries.find((e) => entryOffset(e.hi, e.lo) === 0);
  if (rtUnused) {
    add('reftable', 'unused->past-eof', 'an unused reftable entry pointing past the end', (m) => {
      const [hi, lo] = withOffset(0, 0, eofCluster);
      putEntry(m, rtUnused.pos, hi, lo);
    });
    if (normal) {
      add('reftable', 'unused->data', 'an unused reftable entry pointing at a data cluster', (m) => {
        const [hi, lo] = withOffset(0, 0, alignDown(normal.hostOffset, cs));
        putEntry(m, rtUnused.pos, hi, lo);
      });
    }
  }
  if (lay.refblocks.length > 0) {
    const rb = lay.refblocks[0];
    add('reftable', 'refblock-all-ones', 'the first refcount block filled with 0xff', (m) => m.fill(0xff, rb, rb + cs));
    add('reftable', 'refblock-zeros', 'the first refcount block zeroed', (m) => m.fill(0, rb, rb + cs));
  }

  // ---- refcounts ------------------------------------------------------
  const order = h.refcountOrder;
  const rmax = Math.min(maxRefcount(order), 2 ** 32);
  const clusterOf = (off: number): number => Math.floor(off / cs);
  const targets: [string, number][] = [['header', 0], ['l1', clusterOf(h.l1TableOffset)], ['reftable', clusterOf(h.refcountTableOffset)]];
  if (lay.refblocks[0] !== undefined) targets.push(['refblock', clusterOf(lay.refblocks[0])]);
  if (lay.l2Tables[0] !== undefined) targets.push(['l2', clusterOf(lay.l2Tables[0])]);
  if (normal) targets.push(['data', clusterOf(normal.hostOffset)]);
  if (compressed) targets.push(['compressed', clusterOf(compressed.hostOffset)]);
  if (h.nbSnapshots > 0) targets.push(['snapshot-table', clusterOf(h.snapshotsOffset)]);
  if (lay.snapshotL1s[0]) targets.push(['snapshot-l1', clusterOf(lay.snapshotL1s[0].offset)]);
  for (const [label, idx] of targets) {
    const cur = refcountOf(img, lay, idx);
    if (cur === undefined) continue;
    const values: [string, number][] = [['zero', 0], ['plus-one', cur + 1], ['max', rmax]];
    if (cur > 1) values.push(['minus-one', cur - 1]);
    for (const [vl, v] of values) {
      if (v > rmax || v === cur) continue;
      add('refcount', `${label}=${vl}`, `refcount of the ${label} cluster (${cur}) set to ${v}`, (m) => {
        setRefcountIn(m, lay, idx, v);
      });
    }
  }
  // A refcount for a cluster past the end of the file.
  {
    const idx = clusterOf(eofCluster) + 2;
    if (refcountOf(img, lay, idx) === 0) {
      add('refcount', 'past-eof=1', 'refcount 1 for a cluster past the end of the file', (m) => {
        setRefcountIn(m, lay, idx, 1);
      });
    }
  }

  // ---- leaks ----------------------------------------------------------
  for (const n of [1, 3]) {
    const first = clusterOf(eofCluster);
    if (refcountOf(img, lay, first + n - 1) !== 0) continue;
    add('leak', `append-${n}`, `${n} clusters appended with refcount 1 and no reference`, (m) => {
      const grown = new Uint8Array(eofCluster + n * cs);
      grown.set(m);
      grown.fill(0x5c, eofCluster);
      for (let i = 0; i < n; i++) setRefcountIn(grown, lay, first + i, 1);
      return grown;
    });
  }
  if (normal) {
    add('leak', 'unreferenced-data', 'a data cluster whose L2 entry is cleared (its refcount stays 1)', (m) => {
      putEntry(m, normal.l2EntryPos, 0, 0);
      if (lay.l2EntrySize === L2_EXTENDED_ENTRY_SIZE) putEntry(m, normal.l2EntryPos + L2_ENTRY_SIZE, 0, 0);
    });
  }

  // ---- overlapping tables --------------------------------------------
  const ovl = (name: string, description: string, f: HeaderField, value: number): void => {
    const p = pos.get(f)!;
    add('overlap', name, description, (m) => putField(m, p.offset, p.width, value));
  };
  ovl('l1=reftable', 'L1 table placed on the refcount table', 'l1TableOffset', h.refcountTableOffset);
  ovl('reftable=l1', 'refcount table placed on the L1 table', 'refcountTableOffset', alignDown(h.l1TableOffset, cs));
  if (lay.refblocks[0]) ovl('l1=refblock', 'L1 table placed on a refcount block', 'l1TableOffset', lay.refblocks[0]);
  if (lay.l2Tables[0]) ovl('reftable=l2', 'refcount table placed on an L2 table', 'refcountTableOffset', lay.l2Tables[0]);
  if (h.nbSnapshots > 0) {
    ovl('snapshots=l1', 'snapshot table placed on the L1 table', 'snapshotsOffset', alignDown(h.l1TableOffset, cs));
    ovl('snapshots=header', 'snapshot table placed on the header', 'snapshotsOffset', 0);
  }
  if (firstL1 && lay.refblocks[0]) {
    add('overlap', 'l1-entry=refblock', 'an L1 entry pointing at a refcount block (refblock read as L2)', (m) => {
      const [hi, lo] = withOffset(firstL1.hi, firstL1.lo, lay.refblocks[0]);
      putEntry(m, firstL1.pos, hi, lo);
    });
  }
  if (normal && lay.refblocks[0]) {
    add('overlap', 'data=refblock', 'a data cluster mapped onto the refcount block', (m) => {
      const [hi, lo] = withOffset(readEntry(m, normal.l2EntryPos).hi, readEntry(m, normal.l2EntryPos).lo, lay.refblocks[0]);
      putEntry(m, normal.l2EntryPos, hi, lo);
    });
  }
  if (h.backingFileOffset && lay.l2Tables[0]) {
    ovl('backing-name=l2', 'backing file name read from an L2 table', 'backingFileOffset', lay.l2Tables[0]);
  }

  // ---- snapshots ------------------------------------------------------
  if (lay.snapshots.length > 0) {
    const sl = snapshotEntryLayout();
    const s0 = lay.snapshots[0];
    const put = (f: FieldPos, v: number | bigint) => (m: Uint8Array) => putField(m, s0.entryPos + f.offset, f.width, v);
    add('snapshot', 'l1-offset=past-eof', 'snapshot L1 table past the end of the file', put(sl.l1TableOffset, eofCluster));
    add('snapshot', 'l1-offset=misaligned', 'snapshot L1 table not cluster aligned', put(sl.l1TableOffset, s0.entry.l1TableOffset + 1));
    add('snapshot', 'l1-offset=header', 'snapshot L1 table on the header', put(sl.l1TableOffset, 0));
    add('snapshot', 'l1-offset=far', 'snapshot L1 table at 2^55', put(sl.l1TableOffset, far));
    add('snapshot', 'l1-size=u32-max', 'snapshot L1 size huge', put(sl.l1Size, U32_MAX));
    add('snapshot', 'l1-size=above-32MiB', 'snapshot L1 size above the QEMU limit', put(sl.l1Size, 0x00400001));
    add('snapshot', 'l1-size=zero', 'snapshot L1 size zero', put(sl.l1Size, 0));
    add('snapshot', 'id-size=max', 'snapshot id string length 65535', put(sl.idSize, 0xffff));
    add('snapshot', 'name-size=max', 'snapshot name length 65535', put(sl.nameSize, 0xffff));
    add('snapshot', 'extra-size=huge', 'snapshot extra data size 2^32-1', put(sl.extraSize, U32_MAX));
    add('snapshot', 'extra-size=1025', 'snapshot extra data size just above the QEMU limit', put(sl.extraSize, 1025));
    add('snapshot', 'disk-size=u64-max', 'snapshot virtual disk size all ones', put(sl.diskSize, U64_MAX));
    const snapL1 = s0.entry.l1TableOffset;
    add('snapshot', 'l1-entry->past-eof', 'first snapshot L1 entry pointing past the end', (m) => {
      const e = readEntry(m, snapL1);
      const [hi, lo] = withOffset(e.hi, e.lo, eofCluster);
      putEntry(m, snapL1, hi, lo);
    });
    add('snapshot', 'l1-entry->reftable', 'first snapshot L1 entry pointing at the refcount table', (m) => {
      const e = readEntry(m, snapL1);
      const [hi, lo] = withOffset(e.hi, e.lo, h.refcountTableOffset);
      putEntry(m, snapL1, hi, lo);
    });
    add('snapshot', 'l1-entry-copied-flipped', 'OFLAG_COPIED flipped on a snapshot L1 entry (QEMU ignores it there)', (m) => {
      const e = readEntry(m, snapL1);
      putEntry(m, snapL1, e.hi ^ OFLAG_COPIED_HI, e.lo);
    });
    add('snapshot', 'table-all-ones', 'the snapshot table overwritten with 0xff', (m) => {
      m.fill(0xff, h.snapshotsOffset, Math.min(m.length, h.snapshotsOffset + SECTOR_SIZE));
    });
  }

  // ---- truncations ----------------------------------------------------
  const cuts = new Map<string, number>([
    ['empty', 0],
    ['1', 1],
    ['mid-v2-header', HEADER_V2_LENGTH / 2],
    ['v2-header-minus-1', HEADER_V2_LENGTH - 1],
    ['header', lay.extensionsStart],
    ['first-cluster-minus-1', cs - 1],
    ['at-l1', h.l1TableOffset],
    ['mid-l1', h.l1TableOffset + L1_ENTRY_SIZE],
    ['at-reftable', h.refcountTableOffset],
    ['mid-reftable', h.refcountTableOffset + L1_ENTRY_SIZE],
  ]);
  if (lay.refblocks[0]) cuts.set('at-refblock', lay.refblocks[0]);
  if (lay.refblocks[0]) cuts.set('mid-refblock', lay.refblocks[0] + cs / 2);
  if (lay.l2Tables[0]) cuts.set('at-l2', lay.l2Tables[0]);
  if (lay.l2Tables[0]) cuts.set('mid-l2', lay.l2Tables[0] + cs / 2);
  if (h.nbSnapshots > 0) cuts.set('at-snapshot-table', h.snapshotsOffset);
  if (normal) cuts.set('mid-data', normal.hostOffset + SECTOR_SIZE);
  if (compressed) cuts.set('mid-compressed', compressed.hostOffset + 1);
  cuts.set('half', Math.floor(lay.fileSize / 2));
  cuts.set('minus-cluster', lay.fileSize - cs);
  cuts.set('minus-sector', lay.fileSize - SECTOR_SIZE);
  cuts.set('minus-1', lay.fileSize - 1);
  const seenCuts = new Set<number>();
  for (const [label, at] of cuts) {
    if (at < 0 || at >= lay.fileSize || seenCuts.has(at)) continue;
    seenCuts.add(at);
    add('truncate', `${label}@${at}`, `file cut to ${at} bytes`, (m) => m.slice(0, at));
  }

  // ---- seeded byte flips ---------------------------------------------
  const seed = opts.seed ?? 1;
  const flips = opts.flips ?? 16;
  const rand = prng(seed);
  const metaRanges = metadataRanges(lay);
  for (let k = 0; k < flips; k++) {
    const inMeta = k % 4 !== 3; // three in four flips land in metadata, where they matter most
    const count = 1 + Math.floor(rand() * 8);
    const spots: [number, number][] = [];
    for (let i = 0; i < count; i++) {
      let at: number;
      if (inMeta) {
        const [s, e] = metaRanges[Math.floor(rand() * metaRanges.length)];
        at = s + Math.floor(rand() * (e - s));
      } else {
        at = Math.floor(rand() * lay.fileSize);
      }
      spots.push([at, 1 + Math.floor(rand() * 255)]);
    }
    add('flip', `seed${seed}-${k}`, `${count} random byte xors (${inMeta ? 'metadata' : 'anywhere'}): ${spots.map(([a, x]) => `${a}^${x}`).join(' ')}`, (m) => {
      for (const [a, x] of spots) if (a < m.length) m[a] ^= x;
    });
  }
  return out;
}

/** Places that entries can be pointed at, named for test titles. */
function tableTargets(lay: ImageLayout, eofCluster: number, far: number): [string, number][] {
  const h = lay.header;
  const cs = lay.clusterSize;
  const t: [string, number][] = [
    ['past-eof', eofCluster],
    ['far-past-eof', far],
    ['beyond-56-bits', MAX_HOST_OFFSET - cs],
    ['header', 0],
    ['l1', alignDown(h.l1TableOffset, cs)],
    ['reftable', h.refcountTableOffset],
  ];
  if (lay.refblocks[0]) t.push(['refblock', lay.refblocks[0]]);
  if (lay.l2Tables.length > 0) t.push(['l2', lay.l2Tables[lay.l2Tables.length - 1]]);
  if (h.nbSnapshots > 0) t.push(['snapshot-table', alignDown(h.snapshotsOffset, cs)]);
  if (cs > SECTOR_SIZE) {
    const base = lay.l2Tables[0] ?? h.l1TableOffset;
    t.push(['misaligned', alignDown(base, cs) + SECTOR_SIZE]);
  }
  return t;
}

function findUnallocatedL2Entry(img: Uint8Array, lay: ImageLayout): number | undefined {
  for (const l2 of lay.l2Tables) {
    for (let p = l2; p < l2 + lay.clusterSize; p += lay.l2EntrySize) {
      const e = readEntry(img, p);
      if (e.hi === 0 && e.lo === 0) {
        if (lay.l2EntrySize === L2_EXTENDED_ENTRY_SIZE) {
          const b = readEntry(img, p + L2_ENTRY_SIZE);
          if (b.hi !== 0 || b.lo !== 0) continue;
        }
        return p;
      }
    }
  }
  return undefined;
}

/** Byte ranges holding metadata: header cluster, L1, L2s, reftable, refblocks, snapshot table. */
export function metadataRanges(lay: ImageLayout): [number, number][] {
  const h = lay.header;
  const cs = lay.clusterSize;
  const r: [number, number][] = [[0, Math.min(cs, lay.fileSize)]];
  if (h.l1Size) r.push([h.l1TableOffset, h.l1TableOffset + h.l1Size * L1_ENTRY_SIZE]);
  r.push([h.refcountTableOffset, h.refcountTableOffset + Math.max(1, lay.reftableEntries.filter((e) => entryOffset(e.hi, e.lo)).length) * L1_ENTRY_SIZE]);
  for (const l2 of lay.l2Tables) r.push([l2, l2 + cs]);
  for (const rb of lay.refblocks) r.push([rb, rb + cs]);
  if (h.nbSnapshots) r.push([h.snapshotsOffset, h.snapshotsOffset + SECTOR_SIZE]);
  return r.filter(([s, e]) => e > s && e <= lay.fileSize);
}

/**
 * Rewrites the header cluster with new extensions (and header field
 * overrides), moving the backing file name after the new extension list.
 * Leaves the image unchanged when the result would not fit in one cluster.
 */
function rewriteHeaderCluster(m: Uint8Array, lay: ImageLayout, ext: HeaderExtensions, hdr: Partial<Qcow2Header> = {}): void {
  const cs = lay.clusterSize;
  const h: Qcow2Header = { ...lay.header, ...hdr };
  const extBytes = encodeExtensions(ext);
  const name = lay.backingName !== undefined ? new TextEncoder().encode(lay.backingName) : undefined;
  const start = lay.extensionsStart;
  const nameAt = start + extBytes.length;
  if (name) {
    h.backingFileOffset = nameAt;
    h.backingFileSize = name.length;
  }
  const end = nameAt + (name?.length ?? 0);
  if (end > cs) return;
  const hb = encodeHeader(h);
  m.fill(0, 0, cs);
  m.set(hb.subarray(0, start), 0);
  m.set(extBytes, start);
  if (name) m.set(name, nameAt);
}
