/**
 * A storage that fails on demand, for I/O error injection: the n-th write
 * (or flush, or read) throws StorageIoError with EIO (or the errno given to
 * arm()), as a failing disk would. After a failure the engine must leave an
 * image that opens and checks without corruption (leaks are allowed).
 *
 * arm() scopes one fault to one operation of the engine, the way SQLite's
 * fault loops and QEMU's blkdebug `once=on` rules do: counting starts at the
 * arm, the fault fires once, and disarm() returns where the engine wrote
 * while armed (for checks that it wrote nowhere it should not).
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
  private errno = 'EIO';
  private once = false;
  private log: [number, number][] | undefined;

  constructor(private readonly inner: BlockStorage) {}

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /** Fails the n-th request of `kind` from now on, once, with `errno`; logs writes until disarm(). */
  arm(kind: FaultKind, n: number, errno = 'EIO'): void {
    this.counts = { read: 0, write: 0, flush: 0 };
    this.failAt = { [kind]: n };
    this.errno = errno;
    this.once = true;
    this.log = [];
  }

  /** Logs writes until disarm() without failing any request (a storage whose writes are checked, not failed). */
  watch(): void {
    this.failAt = {};
    this.once = false;
    this.log = [];
  }

  /** Ends an arm() or watch(): no more faults; returns the [offset, length] of every write (and truncate) since. */
  disarm(): [number, number][] {
    const log = this.log ?? [];
    this.failAt = {};
    this.once = false;
    this.log = undefined;
    return log;
  }

  private maybeFail(kind: FaultKind): void {
    this.counts[kind]++;
    if (this.dead || this.counts[kind] === this.failAt[kind]) {
      if (this.sticky) this.dead = true;
      if (this.once) this.failAt = {};
      throw new StorageIoError(`injected ${kind} error (${this.errno})`, this.errno);
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
    this.log?.push([offset, data.length]);
    this.inner.write(offset, data);
  }
  truncate(length: number): void {
    this.maybeFail('write');
    const old = this.inner.size();
    // Growing writes zeros past the old end; shrinking destroys what was there.
    if (length !== old) this.log?.push([Math.min(old, length), Math.abs(length - old)]);
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
