/**
 * What convert copies: the source's ranges that may hold data, and within
 * what was read, the runs that are not zero, as qemu-img convert's default
 * -S 4k sparse detection decides them (is_allocated_sectors in qemu-img.c,
 * on whole granules aligned to the guest offset).
 */
import type { ReadableImage } from './open.js';

/**
 * Yields [offset, length] for every piece of the source that may hold
 * data, in order, at most chunk bytes each and never crossing a multiple
 * of chunk. Ranges the qcow2 layer reports as zero are skipped whole,
 * however long, so a sparse image of petabytes converts in time
 * proportional to its data.
 */
export function* dataChunks(src: ReadableImage, chunk: number): Generator<[number, number]> {
  const size = src.device.virtualSize;
  let off = 0;
  while (off < size) {
    let dataEnd = size;
    if (src.qcow2) {
      const st = src.qcow2.blockStatus(off, size - off);
      if (st.length <= 0) throw new Error(`block status made no progress at offset ${off}`);
      if (st.zero) {
        off += st.length;
        continue;
      }
      dataEnd = off + st.length;
    }
    while (off < dataEnd) {
      const len = Math.min(chunk - (off % chunk), dataEnd - off);
      yield [off, len];
      off += len;
    }
  }
}

/** All-zero bytes to compare granules against; memcmp in native code, no allocation per granule. */
let zeros = Buffer.alloc(64 * 1024);

/** Whether buf[start, end) is all zeros. */
function isZero(buf: Uint8Array, start: number, end: number): boolean {
  // Data granules almost always fail on their first or last byte: decide those without a native call.
  if (buf[start] !== 0 || buf[end - 1] !== 0) return false;
  if (zeros.length < end - start) zeros = Buffer.alloc(end - start);
  return zeros.compare(buf, start, end, 0, end - start) === 0;
}

/**
 * Calls emit(start, end) for every maximal run of non-zero granules in
 * buf[0, len), which holds the guest bytes from off on; granules are
 * aligned to guest offsets, so the first and last may be partial.
 */
export function forEachNonZeroRun(buf: Uint8Array, len: number, off: number, granularity: number, emit: (start: number, end: number) => void): void {
  let pos = 0;
  while (pos < len) {
    const firstEnd = pos + Math.min(granularity - ((off + pos) % granularity), len - pos);
    const zero = isZero(buf, pos, firstEnd);
    let end = firstEnd;
    while (end < len) {
      const g = Math.min(granularity, len - end);
      if (isZero(buf, end, end + g) !== zero) break;
      end += g;
    }
    if (!zero) emit(pos, end);
    pos = end;
  }
}
