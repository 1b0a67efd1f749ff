/** Shapes shared by the model and the harness. */

export type Compat = '0.10' | '1.1';

export interface BackingModel {
  format: 'raw' | 'qcow2';
  /** Backing virtual size in bytes (multiple of 512). */
  size: number;
  /** Sparse content: sector -> stamp (no entry = zeros). */
  sectors: Map<number, number>;
}

export interface ImageConfig {
  size: number;
  clusterSize: number;
  refcountBits: number;
  compat: Compat;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: 'zlib' | 'zstd';
  /** preallocation=metadata: every cluster starts allocated, reading zeros (or the backing file, extended L2). */
  preallocation?: 'metadata';
  /** The image is never closed cleanly: the end may find the dirty bit either way. */
  dirty?: boolean;
  backing?: BackingModel;
  /** An external data file: QEMU refuses compressed writes, internal snapshots and downgrades there. */
  dataFile?: { raw: boolean };
  /** Encrypted: compressed writes and downgrades are refused (QEMU 7.2 would get both wrong). */
  encrypted?: boolean;
}

/**
 * What the model expects of an op:
 *  - ok:     the implementation must accept it and then match the model;
 *  - refuse: it must fail cleanly and leave the image as it was;
 *  - either: both are correct (QEMU's choice depends on allocation details
 *            the guest cannot see); the model follows what the target did.
 */
export type Verdict = 'ok' | 'refuse' | 'either';

export interface Expectation {
  verdict: Verdict;
  /** Why it is refused or uncertain, for messages. */
  reason?: string;
}

export interface SnapshotModel {
  id: string;
  name: string;
}

/** Image metadata the model tracks for the `qemu-img info` oracle. */
export interface MetaModel {
  compat: Compat;
  refcountBits: number;
  lazyRefcounts: boolean;
  compressionType: 'zlib' | 'zstd';
  extendedL2: boolean;
  clusterSize: number;
}
