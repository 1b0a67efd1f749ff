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
  /**
   * Where data and holes lie from offset on, as file-posix's find_allocation
   * learns it with lseek(SEEK_DATA/SEEK_HOLE): the data extent or hole that
   * holds offset; 'trailing-hole' at or past the last data (ENXIO); undefined
   * when the storage cannot tell (then all of it counts as data). Optional.
   */
  allocation?(offset: number): Allocation | 'trailing-hole' | undefined;
  /** Bytes the storage really occupies (st_blocks * 512, bdrv_get_allocated_file_size); optional. */
  allocatedBytes?(): number;
  truncate(length: number): void;
  /** A write barrier: everything written before is durable after. */
  flush(): void;
  close(): void;
}

/** One extent around an offset: [data, hole) is data when data === offset, else [hole, data) is a hole. */
export interface Allocation {
  data: number;
  hole: number;
}
