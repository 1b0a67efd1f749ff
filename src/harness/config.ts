/**
 * A run's image configuration as saved in traces: the qcow2 creation options
 * and, optionally, a backing file described by the writes that fill it.
 */
import { SECTOR } from '../model/layer.js';
import type { ImageConfig } from '../model/types.js';
import { BACKING_STAMP_BASE } from './data.js';

export interface BackingConfig {
  format: 'raw' | 'qcow2';
  size: number;
  /** Cluster size of a qcow2 backing file. */
  clusterSize?: number;
  /** Ranges [off, len] written in order; write i carries stamp BACKING_STAMP_BASE + i. */
  writes: [number, number][];
}

/** An external data file (qcow2 data_file), kept beside the image as DATA_FILE_NAME. */
export interface DataFileConfig {
  /** data_file_raw=on: the data file is always the guest view. */
  raw: boolean;
}

/** Where a trace's data file lives, beside image.qcow2 (named by absolute path in the header). */
export const DATA_FILE_NAME = 'image.data';

export interface TraceConfig {
  size: number;
  clusterSize: number;
  refcountBits: number;
  compat: '0.10' | '1.1';
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: 'zlib' | 'zstd';
  backing?: BackingConfig;
  dataFile?: DataFileConfig;
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
    ...(c.dataFile && dataFilePath !== undefined ? { dataFile: dataFilePath, dataFileRaw: c.dataFile.raw } : {}),
  };
}

export function backingStamp(i: number): number {
  return BACKING_STAMP_BASE + i;
}

export function backingFileName(b: BackingConfig): string {
  return b.format === 'raw' ? 'backing.raw' : 'backing.qcow2';
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
  if (c.dataFile) cfg.dataFile = { raw: c.dataFile.raw };
  if (c.backing) {
    const sectors = new Map<number, number>();
    c.backing.writes.forEach(([off, len], i) => {
      for (let s = off / SECTOR; s < (off + len) / SECTOR; s++) sectors.set(s, backingStamp(i));
    });
    cfg.backing = { format: c.backing.format, size: c.backing.size, sectors };
  }
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
  if (c.backing) parts.push(`backing=${c.backing.format}:${c.backing.size}`);
  if (c.dataFile) parts.push(c.dataFile.raw ? 'data_file_raw=on' : 'data_file=on');
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
  if (c.dataFile && c.compat === '0.10') p.push('external data files need compat=1.1');
  if (c.dataFile?.raw && c.backing) p.push('data_file_raw cannot be used with a backing file');
  return p;
}
