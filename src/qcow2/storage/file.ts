import * as fs from 'node:fs';
import * as os from 'node:os';
import { getSystemErrorMap } from 'node:util';
import { InvalidArgumentError, NotRegularFileError, ReadOnlyError, StorageIoError } from '../errors.js';
import { ImageLock, LOCKS, type LockRequest } from './lock.js';
import { nativeAddon } from './native.js';
import type { Allocation, BlockStorage } from './types.js';

export interface FileOpenOptions {
  readOnly?: boolean;
  /**
   * The QEMU image locks to hold while open (see lock.ts); false for none.
   * Defaults to what QEMU takes for a raw file: consistent read, plus write
   * when writable, everything shared.
   */
  lock?: LockRequest | false;
  /** The file's name as the user gave it, for lock messages (default: path). */
  name?: string;
}

/**
 * Reads at least this long, each starting where the previous one ended, are
 * a stream (convert's copy loop reads contiguous host runs of up to 2 MiB)
 * worth queueing reads ahead for; shorter ones (tables, headers) neither
 * start nor break a stream.
 */
export const STREAM_READ_MIN = 1 << 20;
/**
 * How far ahead of a stream reads are kept queued: 16 MiB, what qemu-img
 * convert keeps in flight with its default 8 coroutines of 2 MiB (-m,
 * convert_co_do_copy). Synchronous reads alone leave the disk idle while a
 * chunk is written; measured on a cold 1 GiB copy, queueing them ahead
 * roughly halves the time.
 */
export const READ_AHEAD = 16 << 20;

/** Where a file's stream of long reads stands. */
export interface ReadAheadState {
  /** The end of the last long read, or -1. */
  streamEnd: number;
  /** Everything below this offset (and past streamEnd) was already hinted. */
  advisedTo: number;
}

/**
 * The range to hint (POSIX_FADV_WILLNEED) before reading [offset,
 * offset+length) of a file of fileSize bytes, or undefined; updates st.
 * Hints are issued READ_AHEAD at a time once less than READ_AHEAD is left
 * queued, so a stream costs one extra call per 16 MiB, not per read.
 */
export function planReadAhead(st: ReadAheadState, offset: number, length: number, fileSize: number): [number, number] | undefined {
  if (length < STREAM_READ_MIN) return undefined;
  const streaming = offset === st.streamEnd;
  const end = offset + length;
  st.streamEnd = end;
  if (!streaming) {
    st.advisedTo = end;
    return undefined;
  }
  if (st.advisedTo < end || st.advisedTo > end + 2 * READ_AHEAD) st.advisedTo = end;
  if (st.advisedTo - end >= READ_AHEAD) return undefined;
  const from = st.advisedTo;
  const to = Math.min(fileSize, end + 2 * READ_AHEAD);
  if (to <= from) return undefined;
  st.advisedTo = to;
  return [from, to - from];
}

/**
 * open(2) of an image file that never blocks, refusing what QEMU's file
 * driver refuses: raw_open_common checks S_ISREG after its open ("'file'
 * driver requires 'X' to be a regular file"). O_NONBLOCK, because an O_RDONLY
 * open of a FIFO otherwise waits for a writer forever (qemu-img 7.2 info does
 * hang there; qemu-io's O_RDWR open does not, and gets the refusal); it
 * changes nothing for a regular file or a block device. A character device,
 * which QEMU opens with its host_device driver (hdev_probe_device), is opened
 * again without it. A read-write open of a directory fails with EISDIR before
 * any check, as QEMU's does. `directories: true` hands a read-only directory
 * descriptor back (format probing reads it and gets EISDIR, as before).
 * name is the file as the user gave it, as QEMU words it.
 */
export function openImageFd(path: string, flags: number, name = path, directories = false): number {
  const fd = fs.openSync(path, flags | fs.constants.O_NONBLOCK);
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  if (st.isFile() || st.isBlockDevice() || (directories && st.isDirectory())) return fd;
  fs.closeSync(fd);
  if (st.isCharacterDevice()) return fs.openSync(path, flags);
  throw new NotRegularFileError(`'file' driver requires '${name}' to be a regular file`);
}

/** A BlockStorage over a host file, with synchronous positional I/O. */
export class FileStorage implements BlockStorage {
  private fd: number;
  private length: number;
  readonly readOnly: boolean;
  readonly path: string;

  private constructor(path: string, fd: number, readOnly: boolean) {
    this.path = path;
    this.fd = fd;
    this.readOnly = readOnly;
    this.length = fs.fstatSync(fd).size;
  }

  private lock: ImageLock | undefined;

  static open(path: string, opts: FileOpenOptions = {}): FileStorage {
    const readOnly = opts.readOnly ?? false;
    let fd: number;
    try {
      fd = openImageFd(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR, opts.name);
    } catch (e) {
      if (e instanceof NotRegularFileError) throw e;
      throw ioError(`cannot open '${path}'`, e);
    }
    const lock = opts.lock ?? (readOnly ? LOCKS.rawReadOnly : LOCKS.rawReadWrite);
    return FileStorage.locked(path, fd, readOnly, lock, opts.name);
  }

  /**
   * Creates (or empties) a file. As QEMU's raw_co_create, the file is
   * emptied only once the creation locks are held, so an image another
   * process has open is refused, never truncated under it; then the locks
   * become opts.lock (default: raw read-write).
   */
  static create(path: string, opts: Omit<FileOpenOptions, 'readOnly'> = {}): FileStorage {
    let fd: number;
    try {
      // Not 'w+': O_TRUNC would empty the file before its locks are checked.
      fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o666);
    } catch (e) {
      throw ioError(`cannot create '${path}'`, e);
    }
    const final = opts.lock ?? LOCKS.rawReadWrite;
    const storage = FileStorage.locked(path, fd, false, final && LOCKS.create, opts.name);
    try {
      fs.ftruncateSync(fd, 0);
      storage.length = 0;
      if (final) storage.lock!.change(final);
    } catch (e) {
      storage.close();
      throw e instanceof Error && 'code' in e ? ioError(`cannot create '${path}'`, e) : e;
    }
    return storage;
  }

  /** Wraps fd, holding lock on it; on a lock conflict the fd is closed and the error thrown. */
  private static locked(path: string, fd: number, readOnly: boolean, lock: LockRequest | false, name?: string): FileStorage {
    try {
      const storage = new FileStorage(path, fd, readOnly);
      if (lock) storage.lock = ImageLock.take(fd, name ?? path, lock);
      return storage;
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  size(): number {
    return this.length;
  }

  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.readInto(offset, out);
    return out;
  }

  readInto(offset: number, dst: Uint8Array): void {
    if (offset >= this.length) {
      // Past the end (even far past, as a hostile pointer may be): zeros, like a sparse read.
      dst.fill(0);
      return;
    }
    checkOffset(offset);
    this.hintReadAhead(offset, dst.length);
    let done = 0;
    const want = Math.min(dst.length, Math.max(0, this.length - offset));
    try {
      while (done < want) {
        const n = fs.readSync(this.fd, dst, done, want - done, offset + done);
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      throw ioError(`read of ${dst.length} bytes at ${offset} failed in '${this.path}'`, e);
    }
    if (done < dst.length) dst.fill(0, done);
  }

  private readAhead: ReadAheadState = { streamEnd: -1, advisedTo: 0 };
  /** Cleared when the addon is absent or the hint is refused: it only ever saves time, so reads go on without it. */
  private willNeedWorks = true;

  private hintReadAhead(offset: number, length: number): void {
    if (!this.willNeedWorks) return;
    const range = planReadAhead(this.readAhead, offset, length, this.length);
    if (!range) return;
    const addon = nativeAddon();
    if (addon instanceof Error || !addon.willNeed || addon.willNeed(this.fd, range[0], range[1]) !== 0) this.willNeedWorks = false;
  }

  write(offset: number, data: Uint8Array): void {
    if (this.readOnly) throw new ReadOnlyError(`'${this.path}' is open read-only`);
    checkOffset(offset);
    let done = 0;
    try {
      while (done < data.length) {
        done += fs.writeSync(this.fd, data, done, data.length - done, offset + done);
      }
    } catch (e) {
      throw ioError(`write of ${data.length} bytes at ${offset} failed in '${this.path}'`, e);
    }
    if (offset + data.length > this.length) this.length = offset + data.length;
  }

  /** Cleared by the first EOPNOTSUPP/ENOSYS (QEMU's has_write_zeroes): the file system cannot zero ranges. */
  private zeroRangeWorks = true;

  /** fallocate(FALLOC_FL_ZERO_RANGE), as file-posix's handle_aiocb_write_zeroes tries first. */
  writeZeroes(offset: number, length: number): boolean {
    if (this.readOnly) throw new ReadOnlyError(`'${this.path}' is open read-only`);
    checkOffset(offset);
    checkOffset(offset + length);
    if (!this.zeroRangeWorks || length <= 0) return false;
    const addon = nativeAddon();
    if (addon instanceof Error || !addon.zeroRange) {
      this.zeroRangeWorks = false;
      return false;
    }
    const r = addon.zeroRange(this.fd, offset, length);
    if (r === 0) {
      if (offset + length > this.length) this.length = offset + length;
      return true;
    }
    if (r === -os.constants.errno.EOPNOTSUPP || r === -os.constants.errno.ENOSYS) this.zeroRangeWorks = false;
    // EINVAL (a range the file system will not zero) falls back as QEMU does; the rest are I/O errors.
    if (r === -os.constants.errno.EOPNOTSUPP || r === -os.constants.errno.ENOSYS || r === -os.constants.errno.EINVAL) return false;
    const code = Object.entries(os.constants.errno).find(([, v]) => v === -r)?.[0];
    throw new StorageIoError(`zeroing ${length} bytes at ${offset} failed in '${this.path}': ${getSystemErrorMap().get(r)?.[1] ?? `errno ${-r}`}`, code);
  }

  /** file-posix's find_allocation (block/file-posix.c): SEEK_DATA, then SEEK_HOLE when offset is in data. */
  allocation(offset: number): Allocation | 'trailing-hole' | undefined {
    const addon = nativeAddon();
    if (addon instanceof Error || !addon.seekData) return undefined;
    const data = addon.seekData(this.fd, offset, false);
    if (data === -os.constants.errno.ENXIO) return 'trailing-hole';
    if (data < offset) return undefined;
    if (data > offset) return { data, hole: offset };
    const hole = addon.seekData(this.fd, offset, true);
    // A hole at offset right after data at offset: the file changed under us (QEMU's -EBUSY); no information.
    if (hole <= offset) return undefined;
    return { data: offset, hole };
  }

  allocatedBytes(): number {
    return fs.fstatSync(this.fd).blocks * 512;
  }

  truncate(length: number): void {
    if (this.readOnly) throw new ReadOnlyError(`'${this.path}' is open read-only`);
    checkOffset(length);
    try {
      fs.ftruncateSync(this.fd, length);
    } catch (e) {
      throw ioError(`truncate to ${length} failed in '${this.path}'`, e);
    }
    this.length = length;
  }

  flush(): void {
    if (this.readOnly) return;
    try {
      fs.fdatasyncSync(this.fd);
    } catch (e) {
      throw ioError(`flush failed in '${this.path}'`, e);
    }
  }

  close(): void {
    if (this.fd < 0) return;
    // Closing the only descriptor of the open file description drops its OFD locks.
    this.lock = undefined;
    try {
      fs.closeSync(this.fd);
    } finally {
      this.fd = -1;
    }
  }
}

function checkOffset(offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new InvalidArgumentError(`file offset ${offset} is out of range`);
  }
}

function ioError(what: string, e: unknown): StorageIoError {
  const err = e as NodeJS.ErrnoException;
  return new StorageIoError(`${what}: ${err?.message ?? String(e)}`, err?.code);
}
