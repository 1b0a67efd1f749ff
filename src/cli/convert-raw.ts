/**
 * `convert -O raw`: the source's non-zero granules written into a new
 * sparse file, made durable once at the end. The bytes and the holes are
 * what qemu-img convert -O raw gives (its default -S 4k).
 *
 * - By default the output goes through the page cache, at most WRITE_MAX
 *   bytes a call, with writeback started behind it every WRITEBACK_STEP
 *   bytes (sync_file_range WRITE; no durability promise, the final fsync
 *   gives that): the device writes while the copy goes on, and the fsync at
 *   the end has little left. qemu-img convert -t writeback leaves all of it
 *   to its final flush instead.
 * - With { direct: true } the output is written O_DIRECT from a ring of
 *   aligned buffers, several writes in flight on libuv's pool while the next
 *   chunks are read (no CPU goes to copying into page-cache memory). It was
 *   the default until measured on a second machine (virtio disk, ext4), six
 *   interleaved rounds of a warm 1 GiB image: page cache 1.72-1.96 s, O_DIRECT
 *   1.96-2.83 s, qemu-img convert -t writeback 2.49-3.45 s; on the first one
 *   O_DIRECT had been the faster. Where O_DIRECT is refused (a file system
 *   without it, an old addon, a write it will not take) and for pieces off a
 *   4 KiB boundary, writes go through the page cache as above.
 */
import * as fs from 'node:fs';
import { nativeAddon } from '../qcow2/storage/native.js';
import { dataChunks, forEachNonZeroRun } from './convert-scan.js';
import type { ReadableImage } from './open.js';

/** Bytes read per step, as qemu-img convert's default buffer (2 MiB). */
const CHUNK = 2 * 1024 * 1024;
/** Chunks in flight: 16 MiB, what qemu-img convert keeps in flight with its 8 coroutines (-m 8). */
const RING = 8;
/** The zero-detection granule: qemu-img convert's default -S 4k. */
const GRANULE = 4096;
/** O_DIRECT offsets, lengths and buffer addresses are multiples of this (a page: any logical block size up to it). */
const DIRECT_ALIGN = 4096;
/** Bytes of page-cache output between two writeback starts. */
const WRITEBACK_STEP = 4 * 1024 * 1024;
/**
 * Page-cache writes are cut to this length: a 2 MiB write at a 2 MiB
 * boundary makes Linux 6.x (ext4 large folios) back it with one fresh
 * 2 MiB folio, and copying into those measured 2-5 times the CPU of 1 MiB
 * writes here (our convert, task-clock median 1.51 s against 0.81 s).
 */
const WRITE_MAX = 1024 * 1024;

export interface RawOutputOptions {
  /** true: O_DIRECT from a ring of buffers where the file system takes it (the tests compare both); default false. */
  direct?: boolean;
}

/** Writes src's guest content into path (created, or truncated) as a sparse raw file and fsyncs it. */
export async function convertToRaw(src: ReadableImage, path: string, o: RawOutputOptions = {}): Promise<void> {
  const out = new RawOutput(path, src.device.virtualSize, o.direct ?? false);
  try {
    await out.copyFrom(src);
    out.finish();
  } finally {
    await out.close();
  }
}

class RawOutput {
  private readonly fd: number;
  /** The O_DIRECT descriptor of the same file, or -1. */
  private directFd = -1;
  /** Whether writes still go through directFd (an EINVAL stops them). */
  private direct = false;
  private readonly ring: Uint8Array[] = [];
  /** Writes in flight, by the ring slot whose bytes they write. */
  private readonly inFlight: Promise<void>[][] = [];
  private failure: { error: unknown } | undefined;
  private startWriteback: ((fd: number, offset: number, len: number) => number) | undefined;
  /** Page-cache output below this offset has had its writeback started. */
  private kickedTo = 0;
  private writtenTo = 0;

  constructor(path: string, size: number, direct: boolean) {
    this.fd = fs.openSync(path, 'w');
    try {
      fs.ftruncateSync(this.fd, size);
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
    const addon = nativeAddon();
    const mod = addon instanceof Error ? undefined : addon.addressMod;
    this.startWriteback = addon instanceof Error ? undefined : addon.startWriteback;
    const whole = Buffer.allocUnsafeSlow(RING * CHUNK + DIRECT_ALIGN);
    const shift = mod ? (DIRECT_ALIGN - mod(whole, DIRECT_ALIGN)) % DIRECT_ALIGN : 0;
    for (let i = 0; i < RING; i++) this.ring.push(whole.subarray(shift + i * CHUNK, shift + (i + 1) * CHUNK));
    if (mod && direct) this.directFd = openDirect(path);
    this.direct = this.directFd >= 0;
  }

  async copyFrom(src: ReadableImage): Promise<void> {
    let slot = 0;
    for (const [off, len] of dataChunks(src, CHUNK)) {
      // The slot's bytes are read anew: its earlier writes must have landed.
      await this.settle(slot);
      // Placed so guest offset and address agree modulo DIRECT_ALIGN: an aligned run is then aligned in memory too.
      const pad = off % DIRECT_ALIGN;
      const buf = this.ring[slot]!.subarray(pad, pad + len);
      src.device.readInto(off, buf);
      const writes: Promise<void>[] = [];
      // Data ranges may still hold zeros; those granules stay holes.
      forEachNonZeroRun(buf, len, off, GRANULE, (start, end) => {
        const w = this.write(off + start, buf.subarray(start, end));
        if (w) writes.push(w);
      });
      this.inFlight[slot] = writes;
      slot = (slot + 1) % RING;
    }
    for (let i = 0; i < RING; i++) await this.settle(i);
  }

  /** Waits for slot's writes; throws the first failure of any write. */
  private async settle(slot: number): Promise<void> {
    const w = this.inFlight[slot];
    if (w?.length) {
      this.inFlight[slot] = [];
      await Promise.all(w);
    }
    if (this.failure) throw this.failure.error;
  }

  /** Writes data at offset: in flight when O_DIRECT takes it, else through the page cache now. */
  private write(offset: number, data: Uint8Array): Promise<void> | undefined {
    if (!this.direct || offset % DIRECT_ALIGN !== 0 || data.length % DIRECT_ALIGN !== 0) {
      this.writeBuffered(offset, data);
      return undefined;
    }
    return writeAll(this.directFd, data, offset).catch((e: NodeJS.ErrnoException) => {
      try {
        // EINVAL: the file system wants another alignment after all; the page cache takes any, from now on.
        if (e.code !== 'EINVAL') throw e;
        this.direct = false;
        this.writeBuffered(offset, data);
      } catch (e2) {
        this.failure ??= { error: e2 };
      }
    });
  }

  private writeBuffered(offset: number, data: Uint8Array): void {
    for (let done = 0; done < data.length; ) {
      done += fs.writeSync(this.fd, data, done, Math.min(data.length - done, WRITE_MAX), offset + done);
    }
    this.writtenTo = Math.max(this.writtenTo, offset + data.length);
    if (this.writtenTo - this.kickedTo >= WRITEBACK_STEP) this.kick();
  }

  private kick(): void {
    // A refusal (an old addon, a file system without the call) only costs the overlap: the fsync still writes everything.
    if (this.startWriteback && this.startWriteback(this.fd, this.kickedTo, this.writtenTo - this.kickedTo) !== 0) this.startWriteback = undefined;
    this.kickedTo = this.writtenTo;
  }

  /** Makes the file durable: fsync is per file, so it covers what both descriptors wrote. */
  finish(): void {
    fs.fsyncSync(this.fd);
  }

  /** Waits for whatever is still in flight (after a failure), then closes both descriptors. */
  async close(): Promise<void> {
    await Promise.allSettled(this.inFlight.flat());
    if (this.directFd >= 0) fs.closeSync(this.directFd);
    fs.closeSync(this.fd);
  }
}

/** A second descriptor of path opened O_DIRECT, or -1 where that is refused. */
function openDirect(path: string): number {
  const flag = fs.constants.O_DIRECT;
  if (!flag) return -1;
  try {
    return fs.openSync(path, fs.constants.O_WRONLY | flag);
  } catch {
    return -1;
  }
}

/** fs.write until every byte is written (a short write goes on where it stopped). */
async function writeAll(fd: number, data: Uint8Array, offset: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const n = await new Promise<number>((resolve, reject) => {
      fs.write(fd, data, done, data.length - done, offset + done, (err, written) => (err ? reject(err) : resolve(written)));
    });
    if (n === 0) throw Object.assign(new Error(`write of ${data.length} bytes at ${offset} made no progress`), { code: 'EIO' });
    done += n;
  }
}
