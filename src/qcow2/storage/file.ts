import * as fs from 'node:fs';
import { InvalidArgumentError, ReadOnlyError, StorageIoError } from '../errors.js';
import type { BlockStorage } from './types.js';

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

  static open(path: string, opts: { readOnly?: boolean } = {}): FileStorage {
    const readOnly = opts.readOnly ?? false;
    try {
      return new FileStorage(path, fs.openSync(path, readOnly ? 'r' : 'r+'), readOnly);
    } catch (e) {
      throw ioError(`cannot open '${path}'`, e);
    }
  }

  /** Creates (or truncates) a file. */
  static create(path: string): FileStorage {
    try {
      return new FileStorage(path, fs.openSync(path, 'w+'), false);
    } catch (e) {
      throw ioError(`cannot create '${path}'`, e);
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
