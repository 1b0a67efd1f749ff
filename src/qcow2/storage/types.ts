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
  truncate(length: number): void;
  /** A write barrier: everything written before is durable after. */
  flush(): void;
  close(): void;
}
