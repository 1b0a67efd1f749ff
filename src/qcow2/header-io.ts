/**
 * Reading and rewriting the first cluster: header, header extensions and the
 * backing file name, laid out as QEMU lays them out (qcow2_update_header):
 * header, extensions, end marker, then the backing file name.
 */
import { InvalidImageError, LimitError, NotQcow2Error, UnsupportedFeatureError } from './errors.js';
import { alignUp, decodeCString, decodeString, encodeString, viewOf } from './format/bytes.js';
import { HEADER_PROBE_SIZE, decodeHeader, encodeHeader, type Qcow2Header } from './format/header.js';
import { decodeExtensions, encodeExtensions, type HeaderExtensions } from './format/extensions.js';
import { HEADER_V2_LENGTH, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, QCOW2_MAGIC } from './format/constants.js';
import type { BlockStorage } from './storage/types.js';

export interface FirstCluster {
  header: Qcow2Header;
  ext: HeaderExtensions;
  backingFile: string | undefined;
}

export function readFirstCluster(storage: BlockStorage): FirstCluster {
  const fileSize = storage.size();
  if (fileSize < HEADER_V2_LENGTH) throw new InvalidImageError(`file too short for a qcow2 header (${fileSize} bytes)`);
  const probe = storage.read(0, HEADER_PROBE_SIZE);
  const clusterBits = viewOf(probe).getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    // A bad magic or version is the clearer message; check those first.
    const v = viewOf(probe);
    if (v.getUint32(0) !== QCOW2_MAGIC) throw new NotQcow2Error('Image is not in qcow2 format');
    const version = v.getUint32(4);
    if (version !== 2 && version !== 3) throw new UnsupportedFeatureError(`unsupported qcow2 version ${version}`);
    throw new InvalidImageError(`unsupported cluster size: 2^${clusterBits} (must be 2^9 to 2^21)`);
  }
  const cs = 2 ** clusterBits;
  const first = storage.read(0, cs);
  const header = decodeHeader(first);
  const extEnd = header.backingFileOffset !== 0 && header.backingFileOffset <= cs ? header.backingFileOffset : cs;
  // Extensions live between the header and the backing file name (none if the name comes first).
  const ext = header.headerLength < extEnd ? decodeExtensions(first.subarray(0, extEnd), header.headerLength) : { unknown: [] };
  let backingFile: string | undefined;
  if (header.backingFileOffset !== 0) {
    const end = header.backingFileOffset + header.backingFileSize;
    if (end > cs) throw new InvalidImageError('backing file name lies outside the first cluster');
    backingFile = decodeCString(first.subarray(header.backingFileOffset, end));
  }
  return { header, ext, backingFile };
}

/** Encodes the first cluster's used bytes; header.backingFile* are set to where the name lands. */
export function encodeFirstCluster(fc: FirstCluster, clusterSize: number): Uint8Array {
  const h = { ...fc.header };
  const name = fc.backingFile !== undefined ? encodeString(fc.backingFile) : new Uint8Array(0);
  // A v3 header is written at its full QEMU length; extensions follow it.
  const headLen = encodeHeader({ ...h, backingFileOffset: 0, backingFileSize: 0 }).length;
  h.headerLength = h.version === 3 ? headLen : HEADER_V2_LENGTH;
  const exts = encodeExtensions(fc.ext);
  const nameOffset = alignUp(headLen + exts.length, 8);
  h.backingFileOffset = fc.backingFile !== undefined ? nameOffset : 0;
  h.backingFileSize = name.length;
  const total = nameOffset + name.length;
  if (total > clusterSize) {
    throw new LimitError(`header, extensions and backing file name (${total} bytes) do not fit in one ${clusterSize}-byte cluster`);
  }
  const out = new Uint8Array(total);
  out.set(encodeHeader(h), 0);
  out.set(exts, headLen);
  out.set(name, nameOffset);
  fc.header.backingFileOffset = h.backingFileOffset;
  fc.header.backingFileSize = h.backingFileSize;
  fc.header.headerLength = h.headerLength;
  return out;
}

