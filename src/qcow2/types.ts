/** Public option and result types of the qcow2 engine. */
import type { BlockStorage } from './storage/types.js';

export type CompatLevel = '0.10' | '1.1';
export type CompressionType = 'zlib' | 'zstd';
export type BackingFormat = 'qcow2' | 'raw';

export interface CreateOptions {
  /** Virtual size in bytes (rounded up to 512 like qemu-img). */
  size: number;
  clusterSize?: number; // default 65536
  refcountBits?: number; // default 16
  compat?: CompatLevel; // default '1.1'
  lazyRefcounts?: boolean;
  extendedL2?: boolean;
  compressionType?: CompressionType; // default zlib
  backingFile?: string;
  backingFormat?: BackingFormat;
  preallocation?: 'off' | 'metadata';
  /** data_file: name of the external data file, recorded in the header extension (opened through OpenOptions.openDataFile). */
  dataFile?: string;
  /** data_file_raw: keep the data file a raw image of the guest (forces preallocation=metadata, as QEMU). */
  dataFileRaw?: boolean;
}

export interface OpenOptions {
  readOnly?: boolean;
  /** Resolves and opens the backing file named in the header; null means "no backing file". */
  openBacking?: (name: string, format: BackingFormat | undefined) => GuestDevice | null;
  /** L2 cache budget in bytes (like qemu's l2-cache-size). */
  l2CacheSize?: number;
  /** Refcount block cache budget in bytes (like qemu's refcount-cache-size). */
  refcountCacheSize?: number;
  /** Snapshot to expose read-only instead of the active layer (id or name). */
  snapshot?: string;
  /** Repair a dirty image on a read-write open (default true, as QEMU does). */
  repairDirty?: boolean;
  /**
   * Opened by check (QEMU's BDRV_O_CHECK): a corrupt image may be opened
   * read-write to be repaired, a missing refcount table is tolerated, and a
   * dirty image is not repaired on open (check does it).
   */
  forCheck?: boolean;
  /**
   * Opens the external data file of an image that has one (the name is the
   * header extension's, undefined when the image names none); null means
   * "not available". Without it such an image is opened for metadata only.
   */
  openDataFile?: (name: string | undefined) => BlockStorage | null;
  /** The user named a data file (data-file=): refused for an image without one, as QEMU refuses it. */
  dataFileExplicit?: boolean;
  /**
   * Passphrase of an encrypted image (the secret encrypt.key-secret names). A
   * wrong one fails the open before anything is written; without one an
   * encrypted image opens only read-only or for check, and refuses data I/O.
   */
  passphrase?: string | Uint8Array;
}

/** Anything a guest can read: a qcow2 image, or a raw file used as a backing file. */
export interface GuestDevice {
  readonly virtualSize: number;
  read(offset: number, length: number): Uint8Array;
  /** Reads into dst (dst.length bytes) from guest offset. */
  readInto(offset: number, dst: Uint8Array): void;
  close(): void;
}

export interface SnapshotInfo {
  id: string;
  name: string;
  vmStateSize: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  icount: number | null;
  virtualSize: number;
}

export interface ImageInfo {
  virtualSize: number;
  clusterSize: number;
  version: 2 | 3;
  compat: CompatLevel;
  refcountBits: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: CompressionType;
  corrupt: boolean;
  dirty: boolean;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  /** Present when the image has an external data file (autoclear bit data_file_raw). */
  dataFileRaw?: boolean;
  encrypted: boolean;
  actualSize: number;
  snapshots: SnapshotInfo[];
  bitmaps: { name: string; granularity: number; flags: string[] }[];
}

export interface CheckResult {
  /** qemu-img check JSON fields */
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  /** Human-readable lines in qemu-img's wording (ERROR ..., Leaked cluster ...). */
  messages: string[];
}

export type RepairMode = 'none' | 'leaks' | 'all';
