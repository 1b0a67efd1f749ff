/**
 * Header extension mutations (qcow2.txt "Header extensions"): bad record
 * lengths, a list with no end marker, and whole extension lists re-encoded
 * with unknown, duplicate, short or dangling extensions.
 */
import {
  AUTOCLEAR_BITMAPS,
  encodeExtensions,
  encodeHeader,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO_HEADER,
  EXT_FEATURE_TABLE,
  FEATURE_NAME_ENTRY_SIZE,
  INCOMPAT_DATA_FILE,
  viewOf,
  type HeaderExtensions,
  type Qcow2Header,
} from '../../qcow2/format/index.js';
import type { ImageLayout } from './analyze.js';
import { putField, U32_MAX, type MutationContext } from './common.js';
import { extensionRecordLayout } from './record-layout.js';

/**
 * Rewrites the header cluster with new extensions (and header field
 * overrides), moving the backing file name after the new extension list.
 * Leaves the image unchanged when the result would not fit in one cluster.
 */
export function rewriteHeaderCluster(m: Uint8Array, lay: ImageLayout, ext: HeaderExtensions, hdr: Partial<Qcow2Header> = {}): void {
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

/** Byte-level damage to the extension list as it stands. */
function recordMutations(ctx: MutationContext): void {
  const { img, lay } = ctx;
  const cs = lay.clusterSize;
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
      ctx.add('extension', `first-length=${label}`, `first header extension length set to ${v}`, (m) => putField(m, extLenPos, 4, v));
    }
  }
  ctx.add('extension', 'no-end-marker', 'extension list never ends: the rest of the first cluster filled with an unknown record pattern', (m) => {
    const fill = new Uint8Array(cs - firstExt);
    const v = viewOf(fill);
    for (let p = 0; p + 8 <= fill.length; p += 8) {
      v.setUint32(p + er.typePos, 0x11111111);
      v.setUint32(p + er.lengthPos, 0);
    }
    m.set(fill, firstExt);
    // The backing file name (if any) lived here; it is now garbage, which is the point.
  });
}

/** Well-formed records with contents a reader must refuse or ignore. */
function reencodedMutations(ctx: MutationContext): void {
  const { lay, eofCluster } = ctx;
  const h = lay.header;
  const withExtensions = (name: string, description: string, change: (e: HeaderExtensions) => HeaderExtensions, hdr?: Partial<Qcow2Header>): void => {
    ctx.add('extension', name, description, (m) => rewriteHeaderCluster(m, lay, change(structuredClone(lay.extensions)), hdr));
  };
  const bitmapsBit = { autoclearFeatures: h.autoclearFeatures | AUTOCLEAR_BITMAPS };
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
  }), bitmapsBit);
  withExtensions('crypto-short', 'encryption header extension of 5 bytes', (e) => ({
    ...e,
    unknown: [...e.unknown, { type: EXT_CRYPTO_HEADER, data: new Uint8Array(5) }],
  }));
  if (h.version !== 3) return;
  withExtensions(
    'bitmaps-huge',
    'bitmaps extension with a huge bitmap count and directory past the end, autoclear bit set',
    (e) => ({ ...e, bitmaps: { nbBitmaps: 65535, reserved: 0, bitmapDirectorySize: 2 ** 40, bitmapDirectoryOffset: eofCluster } }),
    bitmapsBit,
  );
  withExtensions(
    'bitmaps-dir-in-header',
    'bitmaps extension whose directory is the header cluster',
    (e) => ({ ...e, bitmaps: { nbBitmaps: 1, reserved: 0, bitmapDirectorySize: 64, bitmapDirectoryOffset: 0 } }),
    bitmapsBit,
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

export function extensionMutations(ctx: MutationContext): void {
  recordMutations(ctx);
  reencodedMutations(ctx);
}
