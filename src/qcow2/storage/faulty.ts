/**
 * A storage that fails on demand, for I/O error injection: the n-th write
 * (or flush, or read) throws StorageIoError with EIO, as a failing disk would.
 * After a failure the engine must leave an image that opens and checks
 * without corruption (leaks are allowed).
 */
import { StorageIoError } from '../errors.js';
import type { BlockStorage } from './types.js';

export type FaultKind = 'read' | 'write' | 'flush';

export class FaultyStorage implements BlockStorage {
  private counts: Record<FaultKind, number> = { read: 0, write: 0, flush: 0 };
  /** Fail the operation with this ordinal (1-based) of each kind; undefined = never. */
  failAt: Partial<Record<FaultKind, number>> = {};
  /** Once one fault fired, fail every later operation of any kind (a dead disk). */
  sticky = false;
  private dead = false;

  constructor(private readonly inner: BlockStorage) {}

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  private maybeFail(kind: FaultKind): void {
    this.counts[kind]++;
    if (this.dead || this.counts[kind] === this.failAt[kind]) {
      if (this.sticky) this.dead = true;
      throw new StorageIoError(`injected ${kind} error (EIO)`, 'EIO');
    }
  }

  size(): number {
    return this.inner.size();
  }
  read(offset: number, length: number): Uint8Array {
    this.maybeFail('read');
    return this.inner.read(offset, length);
  }
  readInto(offset: number, dst: Uint8Array): void {
    this.maybeFail('read');
    this.inner.readInto(offset, dst);
  }
  write(offset: number, data: Uint8Array): void {
    this.maybeFail('write');
    this.inner.write(offset, data);
  }
  truncate(length: number): void {
    this.maybeFail('write');
    this.inner.truncate(length);
  }
  flush(): void {
    this.maybeFail('flush');
    this.inner.flush();
  }
  close(): void {
    this.inner.close();
  }

  operations(kind: FaultKind): number {
    return this.counts[kind];
  }
}
