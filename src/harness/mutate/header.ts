/**
 * Header field mutations: offsets pointed at the header, past the end or
 * misaligned; counts off by one or huge; versions, cluster sizes, feature
 * bits and refcount widths a reader must refuse or ignore (qcow2.txt
 * "Header"). Field positions come from format/header.ts's HEADER_FIELDS.
 */
import {
  AUTOCLEAR_BITMAPS,
  HEADER_FIELDS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN,
  SECTOR_SIZE,
  type HeaderFieldName,
} from '../../qcow2/format/index.js';
import { putField, U32_MAX, U64_MAX, type MutationContext } from './common.js';

/** Header fields a mutation may set: every fixed field but the magic. */
export type MutableHeaderField = Exclude<HeaderFieldName, 'magic'>;

type SetHeader = (f: MutableHeaderField, value: number | bigint, label: string, why: string) => void;

/** Writes `value` into header field `f` at the position and width HEADER_FIELDS gives. */
export function putHeaderField(m: Uint8Array, f: HeaderFieldName, value: number | bigint): void {
  const p = HEADER_FIELDS[f];
  putField(m, p.offset, p.width, value);
}

/** An `add` for one header field, skipping values the field already has and v3 fields of a v2 image. */
function headerSetter(ctx: MutationContext): SetHeader {
  const h = ctx.lay.header;
  return (f, value, label, why) => {
    if (h.version === 2 && HEADER_FIELDS[f].sinceVersion === 3) return;
    if (BigInt(h[f]) === BigInt(value)) return; // not a mutation
    ctx.add('header', `${f}=${label}`, `${f} set to ${value} (${why})`, (m) => putHeaderField(m, f, value));
  };
}

/** Version, cluster size, disk size, encryption, table offsets and counts: fields both versions have. */
function commonFields(ctx: MutationContext, setHeader: SetHeader): void {
  const { lay, eofCluster, far } = ctx;
  const h = lay.header;
  const cs = lay.clusterSize;
  const offsetValues = (f: MutableHeaderField, cur: number): void => {
    setHeader(f, 0, 'zero', 'points at the header');
    setHeader(f, cur + SECTOR_SIZE, 'misaligned', 'not cluster aligned');
    setHeader(f, cur + 1, 'odd', 'not even sector aligned');
    setHeader(f, eofCluster, 'just-past-eof', 'first cluster after the end of the file');
    setHeader(f, far, 'far-past-eof', '2^55');
    setHeader(f, U64_MAX, 'u64-max', 'all bits set');
    setHeader(f, 1n << 63n, 'bit63', 'only the sign bit set');
  };
  const countValues = (f: MutableHeaderField, cur: number): void => {
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
  // One guest cluster more than the L1 table can map.
  const perL1 = cs * (cs / lay.l2EntrySize);
  setHeader('size', h.l1Size * perL1 + cs, 'past-l1', 'larger than l1_size can map');

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
  else setHeader('nbSnapshots', 1, 'one-at-zero', 'one snapshot at offset 0 (the header)');

  if (lay.backingName !== undefined) {
    offsetValues('backingFileOffset', h.backingFileOffset);
    setHeader('backingFileSize', 0, 'zero', 'empty backing file name');
    setHeader('backingFileSize', U32_MAX, 'u32-max', 'name longer than the file');
    setHeader('backingFileSize', 1024, '1024', 'name longer than QEMU allows');
    setHeader('backingFileSize', h.backingFileSize - 1, 'minus-one', 'name cut short');
  } else {
    ctx.add('header', 'backing=header-bytes', 'backing file name pointing at header bytes (binary garbage)', (m) => {
      putHeaderField(m, 'backingFileOffset', 8);
      putHeaderField(m, 'backingFileSize', 16);
    });
    ctx.add('header', 'backing=past-eof', 'backing file name past the end of the file', (m) => {
      putHeaderField(m, 'backingFileOffset', eofCluster);
      putHeaderField(m, 'backingFileSize', 16);
    });
  }
}

/** Feature bits, refcount order, header length and compression type: the v3 fields. */
function v3Fields(ctx: MutationContext, setHeader: SetHeader): void {
  const h = ctx.lay.header;
  const cs = ctx.lay.clusterSize;
  const incompat = (value: bigint, label: string, why: string): void => setHeader('incompatibleFeatures', value, label, why);
  incompat(h.incompatibleFeatures | (1n << 5n), 'unknown-bit5', 'first unknown incompatible bit');
  incompat(h.incompatibleFeatures | (1n << 63n), 'unknown-bit63', 'top unknown incompatible bit');
  incompat(U64_MAX, 'all', 'every incompatible bit');
  incompat(h.incompatibleFeatures | INCOMPAT_DIRTY, 'dirty', 'dirty bit without lazy refcounts');
  incompat(h.incompatibleFeatures | INCOMPAT_CORRUPT, 'corrupt', 'corrupt bit');
  incompat(h.incompatibleFeatures | INCOMPAT_DATA_FILE, 'data-file', 'external data file without its name');
  incompat(h.incompatibleFeatures ^ INCOMPAT_EXTL2, 'extl2-flipped', 'L2 entries read at the wrong width');
  incompat(h.incompatibleFeatures ^ INCOMPAT_COMPRESSION, 'compression-flipped', 'compression type bit flipped');
  incompat(h.incompatibleFeatures & ~INCOMPAT_KNOWN, 'none', 'every known bit cleared');
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
  ctx.add('header', 'compressionType=zstd-without-bit', 'compression type zstd but the compression incompatible bit clear', (m) => {
    putHeaderField(m, 'compressionType', 1);
    putHeaderField(m, 'incompatibleFeatures', h.incompatibleFeatures & ~INCOMPAT_COMPRESSION);
  });
}

export function headerMutations(ctx: MutationContext): void {
  const setHeader = headerSetter(ctx);
  commonFields(ctx, setHeader);
  if (ctx.lay.header.version === 3) v3Fields(ctx, setHeader);
}
