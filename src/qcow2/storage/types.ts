/**
 * The byte store a qcow2 image lives in. Synchronous on purpose: the engine
 * does small, dependent metadata I/O, and sync calls keep both the code and
 * the in-process fuzzing loop simple and fast.
 */
export interface BlockStorage {
  readonly readOnly: boolean;
  /** Current length in bytes. */
  size(): number;
  /** Reads length bytes; bytes past the end read as zeros. */
  read(offset: number, length: number): Uint8Array;
  /** Fills dst from offset; bytes past the end read as zeros. */
  readInto(offset: number, dst: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
  /**
   * Makes [offset, offset+length) read as zeros without a buffer being written,
   * growing the file when the range ends past it (QEMU: bdrv_co_pwrite_zeroes
   * with BDRV_REQ_NO_FALLBACK). false when this storage cannot do that cheaply;
   * nothing changed then, and the caller writes zeros itself. Optional: a
   * storage without it is one that always declines.
   */
  writeZeroes?(offset: number, length: number): boolean;
  truncate(length: number): void;
  /** A write barrier: everything written before is durable after. */
  flush(): void;
  close(): void;
}
