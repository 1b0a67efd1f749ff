/**
 * `convert -O raw`: the source's non-zero granules written into a new
 * sparse file through the page cache, made durable once at the end. The
 * bytes and the holes are what qemu-img convert -O raw gives (its default
 * -S 4k); two things differ from its -t writeback, because its way
 * measured slow here:
 *
 * - qemu-img leaves every dirty page to its final fdatasync, so the device
 *   starts writing only once the copy is over and the whole write-out is
 *   added to the copy's time (0.5-0.6 s of a 1 GiB convert here). Here
 *   writeback of what was written is started every WRITEBACK_STEP bytes
 *   (sync_file_range WRITE: no durability promise, the final fsync still
 *   gives that): the device writes while the copy goes on, and the fsync
 *   finds almost nothing left (measured 2-10 ms instead of 0.6 s).
 * - Writes are cut to BUFFERED_WRITE_MAX bytes (see there).
 */
import * as fs from 'node:fs';
import { nativeAddon } from '../qcow2/storage/native.js';
import { dataChunks, forEachNonZeroRun } from './convert-scan.js';
import type { ReadableImage } from './open.js';

/** Bytes read per step, as qemu-img convert's default buffer (2 MiB). */
const CHUNK = 2 * 1024 * 1024;
/** The zero-detection granule: qemu-img convert's default -S 4k. */
const GRANULE = 4096;
/**
 * Bytes of output between two writeback starts: small enough that the
 * device never idles long behind the copy, large enough that the call
 * costs nothing next to the copying.
 */
const WRITEBACK_STEP = 4 * 1024 * 1024;
/**
 * Page-cache writes are cut to this length: a 2 MiB write at a 2 MiB
 * boundary makes Linux 6.x (ext4 large folios) back it with one fresh
 * 2 MiB folio, and copying into those measured 2-5 times the CPU of 1 MiB
 * writes on this machine (a C copy loop of 1 GiB, task-clock median 1.5 s
 * against 0.45 s, and erratic), where 1 MiB and smaller were steady.
 */
const WRITE_MAX = 1024 * 1024;

/** Writes src's guest content into path (created, or truncated) as a sparse raw file and fsyncs it. */
export function convertToRaw(src: ReadableImage, path: string): void {
  const out = new RawOutput(path, src.device.virtualSize);
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (const [off, len] of dataChunks(src, CHUNK)) {
      src.device.readInto(off, buf.subarray(0, len));
      // Data ranges may still hold zeros; those granules stay holes.
      forEachNonZeroRun(buf, len, off, GRANULE, (start, end) => out.write(off + start, buf.subarray(start, end)));
    }
    out.finish();
  } finally {
    out.close();
  }
}

class RawOutput {
  private readonly fd: number;
  private startWriteback: ((fd: number, offset: number, len: number) => number) | undefined;
  /** Everything below this offset has had its writeback started. */
  private kickedTo = 0;
  private writtenTo = 0;

  constructor(path: string, size: number) {
    this.fd = fs.openSync(path, 'w');
    try {
      fs.ftruncateSync(this.fd, size);
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
    const addon = nativeAddon();
    this.startWriteback = addon instanceof Error ? undefined : addon.startWriteback;
  }

  /** Writes data at offset; offsets only grow (convert copies in order). */
  write(offset: number, data: Uint8Array): void {
    for (let done = 0; done < data.length; ) {
      done += fs.writeSync(this.fd, data, done, Math.min(data.length - done, WRITE_MAX), offset + done);
    }
    this.writtenTo = offset + data.length;
    if (this.writtenTo - this.kickedTo >= WRITEBACK_STEP) this.kick();
  }

  private kick(): void {
    // A refusal (an old addon, a file system without the call) only costs the overlap: the fsync still writes everything.
    if (this.startWriteback && this.startWriteback(this.fd, this.kickedTo, this.writtenTo - this.kickedTo) !== 0) this.startWriteback = undefined;
    this.kickedTo = this.writtenTo;
  }

  /** Makes the whole file durable. */
  finish(): void {
    fs.fsyncSync(this.fd);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
