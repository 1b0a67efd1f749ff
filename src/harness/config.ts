/**
 * A run's image configuration as saved in traces: the qcow2 creation options
 * and, optionally, a backing file described by the writes that fill it.
 */
import { SECTOR } from '../model/layer.js';
import type { ImageConfig } from '../model/types.js';
import type { ImageAccess, QemuSecret } from '../qemu/access.js';
import { BACKING_STAMP_BASE } from './data.js';

export interface BackingConfig {
  format: 'raw' | 'qcow2';
  size: number;
  /** Cluster size of a qcow2 backing file. */
  clusterSize?: number;
  /** Ranges [off, len] written in order; write i carries stamp backingStamp(i, level). */
  writes: [number, number][];
  /**
   * This qcow2 backing file's own backing file (a chain: image over qcow2 over
   * ... over raw). Its writes are guest writes through qemu-io over that file.
   */
  backing?: BackingConfig;
}

/** An external data file (qcow2 data_file), kept beside the image as DATA_FILE_NAME. */
export interface DataFileConfig {
  /** data_file_raw=on: the data file is always the guest view. */
  raw: boolean;
}

/** Where a trace's data file lives, beside image.qcow2 (named by absolute path in the header). */
export const DATA_FILE_NAME = 'image.data';

/** An encrypted image (qcow2 crypt_method 2, LUKS, or 1, legacy AES), keyed with HARNESS_SECRET. */
export interface EncryptConfig {
  format: 'luks' | 'aes';
}

/**
 * The secret every encrypted trace image is keyed with, as QEMU's tools are
 * given it (--object secret,id=...,data=...): a fixed one, so a saved trace
 * and its repro.sh open the image without anything else.
 */
export const HARNESS_SECRET: QemuSecret = { id: 'sec0', data: 'qcow2-harness' };

/**
 * LUKS key-derivation cost. qemu-img measures PBKDF2 speed and takes
 * iter-time ms of it per open (default 2000: two seconds for every qemu-io);
 * 10 ms keeps campaigns fast. Our engine is given counts instead of a time
 * (measuring costs it a second of CPU per image): LUKS1's minimum, 1000.
 */
export const LUKS_ITER_TIME_MS = 10;
const LUKS_HARNESS_ITERATIONS = 1000;

export interface TraceConfig {
  size: number;
  clusterSize: number;
  refcountBits: number;
  compat: '0.10' | '1.1';
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: 'zlib' | 'zstd';
  /** qemu-img create -o preallocation=metadata (absent: off). */
  preallocation?: 'metadata';
  /**
   * The producer never closes the image cleanly (QEMU: every qemu-io process
   * ends with `flush` then `abort`; ours: flush, then drop the image), so
   * with lazy refcounts the image keeps the dirty bit and stale refcounts,
   * and the next read-write open repairs it (docs/cmd-protocol.md, readers).
   */
  dirty?: true;
  backing?: BackingConfig;
  dataFile?: DataFileConfig;
  encrypt?: EncryptConfig;
}

/** How QEMU's tools must open a trace's image: with the secret when it is encrypted (the data file is in the header). */
export function accessOf(c: { encrypt?: EncryptConfig }): ImageAccess | undefined {
  return c.encrypt ? { secret: HARNESS_SECRET } : undefined;
}

/** The passphrase our engine opens a trace's image with (undefined: not encrypted). */
export function passphraseOf(c: { encrypt?: EncryptConfig }): string | undefined {
  return c.encrypt ? HARNESS_SECRET.data : undefined;
}

/**
 * The image-creation options a trace config names, the same for every
 * target; dataFilePath is the absolute path the header names (the targets
 * put it in their run directory).
 */
export function creationOptions(c: TraceConfig, backingFile: string | undefined, dataFilePath?: string) {
  return {
    size: c.size,
    clusterSize: c.clusterSize,
    refcountBits: c.refcountBits,
    compat: c.compat,
    lazyRefcounts: c.lazyRefcounts,
    extendedL2: c.extendedL2,
    compressionType: c.compressionType,
    backingFile,
    backingFormat: c.backing?.format,
    ...(c.preallocation ? { preallocation: c.preallocation } : {}),
    ...(c.dataFile && dataFilePath !== undefined ? { dataFile: dataFilePath, dataFileRaw: c.dataFile.raw } : {}),
    ...(c.encrypt ? { encrypt: encryptCreation(c.encrypt) } : {}),
  };
}

/** The encryption of a new image, in the shape both qemu-img create (secret, iter-time) and our engine (passphrase, counts) take. */
function encryptCreation(e: EncryptConfig) {
  return {
    format: e.format,
    secret: HARNESS_SECRET,
    passphrase: HARNESS_SECRET.data,
    iterTimeMs: LUKS_ITER_TIME_MS,
    ...(e.format === 'luks' ? { luks: { slotIterations: LUKS_HARNESS_ITERATIONS, masterKeyIterations: LUKS_HARNESS_ITERATIONS } } : {}),
  };
}

/** Stamps per chain level are far apart, so data served from the wrong level never passes. */
const LEVEL_STAMP_STRIDE = 1000;

export function backingStamp(i: number, level = 0): number {
  return BACKING_STAMP_BASE + level * LEVEL_STAMP_STRIDE + i;
}

/** The file name of the backing file at `level` of the chain (0: the image's own backing file). */
export function backingFileName(b: BackingConfig, level = 0): string {
  const base = level === 0 ? 'backing' : `backing${level + 1}`;
  return `${base}.${b.format}`;
}

export interface ChainLink {
  config: BackingConfig;
  level: number;
  /** File name in the run directory, as the file above it names it. */
  file: string;
}

/** The backing chain from the image's own backing file down to the bottom one. */
export function backingChain(c: { backing?: BackingConfig }): ChainLink[] {
  const out: ChainLink[] = [];
  for (let b = c.backing, level = 0; b; b = b.backing, level++) out.push({ config: b, level, file: backingFileName(b, level) });
  return out;
}

/**
 * What the image's backing file shows the guest, flattened over the chain:
 * a level's writes, else the level below within that level's size, else zeros.
 */
function chainSectors(b: BackingConfig, level: number): Map<number, number> {
  const sectors = new Map<number, number>();
  if (b.backing) {
    const end = Math.min(b.size, b.backing.size) / SECTOR;
    for (const [s, v] of chainSectors(b.backing, level + 1)) if (s < end) sectors.set(s, v);
  }
  b.writes.forEach(([off, len], i) => {
    for (let s = off / SECTOR; s < (off + len) / SECTOR; s++) sectors.set(s, backingStamp(i, level));
  });
  return sectors;
}

export function toModelConfig(c: TraceConfig): ImageConfig {
  const cfg: ImageConfig = {
    size: c.size,
    clusterSize: c.clusterSize,
    refcountBits: c.refcountBits,
    compat: c.compat,
    lazyRefcounts: c.lazyRefcounts,
    extendedL2: c.extendedL2,
    compressionType: c.compressionType,
  };
  if (c.preallocation) cfg.preallocation = c.preallocation;
  if (c.dirty) cfg.dirty = true;
  if (c.backing) cfg.backing = { format: c.backing.format, size: c.backing.size, sectors: chainSectors(c.backing, 0) };
  if (c.dataFile) cfg.dataFile = { raw: c.dataFile.raw };
  if (c.encrypt) cfg.encrypted = true;
  return cfg;
}

/** Short human description, for progress and failure messages. */
export function describeConfig(c: TraceConfig): string {
  const parts = [
    `size=${c.size}`,
    `cluster_size=${c.clusterSize}`,
    `refcount_bits=${c.refcountBits}`,
    `compat=${c.compat}`,
  ];
  if (c.lazyRefcounts) parts.push('lazy_refcounts=on');
  if (c.extendedL2) parts.push('extended_l2=on');
  if (c.compressionType !== 'zlib') parts.push(`compression_type=${c.compressionType}`);
  if (c.preallocation) parts.push(`preallocation=${c.preallocation}`);
  if (c.dirty) parts.push('dirty');
  if (c.backing) parts.push(`backing=${backingChain(c).map((l) => `${l.config.format}:${l.config.size}`).join('>')}`);
  if (c.dataFile) parts.push(c.dataFile.raw ? 'data_file_raw=on' : 'data_file=on');
  if (c.encrypt) parts.push(`encrypt.format=${c.encrypt.format}`);
  return parts.join(',');
}

/** Validity rules qemu-img create enforces; arbitraries only produce valid configs. */
export function configProblems(c: TraceConfig): string[] {
  const p: string[] = [];
  if (c.size <= 0 || c.size % SECTOR) p.push('size must be a positive multiple of 512');
  if (c.clusterSize < 512 || c.clusterSize > 2 * 1024 * 1024 || (c.clusterSize & (c.clusterSize - 1))) {
    p.push('cluster size must be a power of two in 512..2M');
  }
  if (c.compat === '0.10') {
    if (c.refcountBits !== 16) p.push('compat=0.10 needs refcount_bits=16');
    if (c.lazyRefcounts) p.push('compat=0.10 has no lazy refcounts');
    if (c.extendedL2) p.push('compat=0.10 has no extended L2');
    if (c.compressionType !== 'zlib') p.push('compat=0.10 has only zlib');
  }
  if (c.extendedL2 && c.clusterSize < 16384) p.push('extended L2 needs cluster_size >= 16K');
  if (c.dirty !== undefined && (c.dirty !== true || !c.lazyRefcounts)) p.push('dirty needs lazy_refcounts (only lazy refcounts leave an image dirty)');
  if (c.preallocation !== undefined && c.preallocation !== 'metadata') p.push('preallocation must be metadata when given');
  // qcow2_co_create: preallocated clusters would hide the backing file unless subclusters can stay unallocated.
  if (c.preallocation && c.backing && !c.extendedL2) p.push('preallocation with a backing file needs extended L2');
  for (const l of backingChain(c)) {
    if (l.config.backing && l.config.format !== 'qcow2') p.push(`backing file ${l.file} is raw and cannot have a backing file`);
  }
  if (c.dataFile && c.compat === '0.10') p.push('external data files need compat=1.1');
  if (c.dataFile?.raw && c.backing) p.push('data_file_raw cannot be used with a backing file');
  if (c.encrypt !== undefined) {
    if (c.encrypt.format !== 'luks' && c.encrypt.format !== 'aes') p.push('encrypt.format must be luks or aes');
    // Our choice, not QEMU's (7.2 puts a LUKS header in a v2 image too): LUKS is a v3-era feature.
    if (c.encrypt.format === 'luks' && c.compat === '0.10') p.push('encrypt.format=luks is generated with compat=1.1 only');
    // QEMU 7.2 (preallocate_co maps clusters whose file bytes are zeros, never encrypted) and our engine
    // both leave preallocated clusters of an encrypted image reading decrypted zeros, i.e. garbage:
    // the model has no such view, so the pair is not generated (checked: qemu-io read -P 0 fails).
    if (c.preallocation) p.push('preallocation=metadata on an encrypted image reads garbage');
    // data_file_raw promises the data file is the guest view, which ciphertext is not.
    if (c.dataFile?.raw) p.push('data_file_raw cannot be used with encryption');
  }
  return p;
}
