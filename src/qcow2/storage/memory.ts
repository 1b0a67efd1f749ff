import { InvalidArgumentError, ReadOnlyError, StorageIoError } from '../errors.js';

/** Capacity of an in-memory image. */
export const MEMORY_STORAGE_LIMIT = 512 * 1024 * 1024;
import type { BlockStorage } from './types.js';

/** A growable in-memory byte store; the fuzzing target runs on it. */
export class MemoryStorage implements BlockStorage {
  private buf: Uint8Array;
  private len: number;
  readonly readOnly: boolean;

  constructor(initial?: Uint8Array, opts: { readOnly?: boolean } = {}) {
    this.buf = initial ? initial.slice() : new Uint8Array(0);
    this.len = this.buf.length;
    this.readOnly = opts.readOnly ?? false;
  }

  size(): number {
    return this.len;
  }

  /** An independent storage holding a copy of the current contents. */
  clone(): MemoryStorage {
    return new MemoryStorage(this.buf.subarray(0, this.len), { readOnly: this.readOnly });
  }

  /** The current contents without a copy, valid until the next write or truncate (for writing them out). */
  view(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }

  /** A copy of the current contents. */
  bytes(): Uint8Array {
    return this.buf.slice(0, this.len);
  }

  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.readInto(offset, out);
    return out;
  }

  readInto(offset: number, dst: Uint8Array): void {
    if (offset >= this.len) {
      // Past the end, however far (a hostile pointer may be): zeros, like a sparse file.
      dst.fill(0);
      return;
    }
    checkRange(offset, dst.length);
    const end = Math.min(this.len, offset + dst.length);
    if (end > offset) dst.set(this.buf.subarray(offset, end), 0);
    if (end - offset < dst.length) dst.fill(0, Math.max(0, end - offset));
  }

  write(offset: number, data: Uint8Array): void {
    if (this.readOnly) throw new ReadOnlyError('storage is read-only');
    checkRange(offset, data.length);
    this.ensureCapacity(offset + data.length);
    this.buf.set(data, offset);
    if (offset + data.length > this.len) this.len = offset + data.length;
  }

  truncate(length: number): void {
    if (this.readOnly) throw new ReadOnlyError('storage is read-only');
    checkRange(length, 0);
    if (length > this.len) {
      this.ensureCapacity(length);
    } else {
      this.buf.fill(0, length, this.len);
    }
    this.len = length;
  }

  flush(): void {}
  close(): void {}

  private ensureCapacity(n: number): void {
    if (n <= this.buf.length) return;
    let cap = Math.max(4096, this.buf.length);
    while (cap < n) cap *= 2;
    const nb = new Uint8Array(cap);
    nb.set(this.buf.subarray(0, this.len));
    this.buf = nb;
  }
}

function checkRange(offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(offset + length)) {
    throw new InvalidArgumentError(`storage offset ${offset} is out of range`);
  }
  // Memory storage backs in-process fuzzing: it is a small disk, and a full disk is an
  // I/O error (ENOSPC) the engine must survive, not an allocation failure.
  if (offset + length > MEMORY_STORAGE_LIMIT) {
    throw new StorageIoError(`no space left in memory storage (${offset + length} bytes needed, limit ${MEMORY_STORAGE_LIMIT})`, 'ENOSPC');
  }
}
