/**
 * Compressed cluster codecs (qcow2.txt "Compressed Clusters", header field
 * compression_type): zlib as raw deflate (window 2^12, as QEMU writes it) and
 * zstd frames. Decompression stops once a whole cluster is produced, because
 * the stored range is rounded up to a sector and may carry trailing bytes.
 */
import { createRequire } from 'node:module';
import zlib from 'node:zlib';
import { CorruptImageError } from './errors.js';
import type { CompressionType } from './types.js';

interface ZstdBinding {
  CCtx: new () => { compress(dst: Uint8Array, src: Uint8Array, level: number): number };
  DCtx: new () => { decompressStream(dst: Uint8Array, src: Uint8Array): [number, number, number]; reset(directive: number): void };
}

const require = createRequire(import.meta.url);
let zstd: { binding: ZstdBinding; cctx: InstanceType<ZstdBinding['CCtx']> } | undefined;

function zstdBinding() {
  if (!zstd) {
    const binding = require('zstd-napi/binding.js') as ZstdBinding;
    zstd = { binding, cctx: new binding.CCtx() };
  }
  return zstd;
}

/**
 * Compresses one cluster; returns undefined when the result would not be
 * smaller than the cluster (QEMU then writes the cluster uncompressed).
 */
export function compressCluster(type: CompressionType, data: Uint8Array, clusterSize: number): Uint8Array | undefined {
  let out: Uint8Array;
  if (type === 'zlib') {
    out = zlib.deflateRawSync(data, { windowBits: 12, memLevel: 9, level: zlib.constants.Z_DEFAULT_COMPRESSION });
  } else {
    const z = zstdBinding();
    const dst = new Uint8Array(clusterSize + 1024);
    const n = z.cctx.compress(dst, data, 3);
    out = dst.subarray(0, n);
  }
  return out.length < clusterSize ? out : undefined;
}

/** Decompresses exactly clusterSize bytes from src (which may carry trailing bytes). */
export function decompressCluster(type: CompressionType, src: Uint8Array, clusterSize: number): Uint8Array {
  try {
    if (type === 'zlib') return inflateCluster(src, clusterSize);
    return unzstdCluster(src, clusterSize);
  } catch (e) {
    if (e instanceof CorruptImageError) throw e;
    throw new CorruptImageError(`compressed cluster does not decompress (${type}): ${(e as Error).message}`);
  }
}

function inflateCluster(src: Uint8Array, clusterSize: number): Uint8Array {
  // Z_SYNC_FLUSH accepts a stream that fills the cluster without an end marker, as QEMU does.
  const out = zlib.inflateRawSync(src, {
    finishFlush: zlib.constants.Z_SYNC_FLUSH,
    maxOutputLength: Math.max(clusterSize, 64),
  });
  if (out.length < clusterSize) {
    throw new CorruptImageError(`compressed cluster inflates to ${out.length} bytes, expected ${clusterSize}`);
  }
  return new Uint8Array(out.buffer, out.byteOffset, clusterSize);
}

function unzstdCluster(src: Uint8Array, clusterSize: number): Uint8Array {
  const z = zstdBinding();
  const dctx = new z.binding.DCtx();
  const out = new Uint8Array(clusterSize);
  let produced = 0;
  let consumed = 0;
  // Frames follow one another until the cluster is full (QEMU's qcow2_zstd_decompress).
  while (produced < clusterSize) {
    if (consumed >= src.length) break;
    const [, dst, used] = dctx.decompressStream(out.subarray(produced), src.subarray(consumed));
    if (dst === 0 && used === 0) break;
    produced += dst;
    consumed += used;
  }
  if (produced < clusterSize) {
    throw new CorruptImageError(`compressed cluster decompresses to ${produced} bytes, expected ${clusterSize}`);
  }
  return out;
}
