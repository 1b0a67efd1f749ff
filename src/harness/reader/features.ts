/**
 * Configuration features, by name: what a refusal is counted against, and
 * what a campaign steers away from once an implementation has declined it.
 * The names are qemu-img's creation option spellings, so an adapter can name
 * the feature it lacks the way its users know it.
 */
import type { TraceConfig } from '../config.js';

/** Features a configuration uses beyond the plainest image (qcow2 v3, 64K clusters, 16-bit refcounts, no backing file). */
export function configFeatures(c: TraceConfig): string[] {
  const f: string[] = [];
  if (c.compat === '0.10') f.push('compat=0.10');
  if (c.extendedL2) f.push('extended_l2');
  if (c.compressionType === 'zstd') f.push('compression_type=zstd');
  if (c.lazyRefcounts) f.push('lazy_refcounts');
  if (c.refcountBits !== 16) f.push(`refcount_bits=${c.refcountBits}`);
  if (c.clusterSize !== 65536) f.push(`cluster_size=${c.clusterSize}`);
  if (c.backing) f.push(`backing=${c.backing.format}`);
  if (c.backing?.backing) f.push('backing-chain');
  if (c.preallocation) f.push(`preallocation=${c.preallocation}`);
  if (c.dirty) f.push('dirty');
  if (c.dataFile) f.push(c.dataFile.raw ? 'data_file_raw' : 'data_file');
  if (c.encrypt) f.push(`encrypt.format=${c.encrypt.format}`);
  return f;
}

/**
 * Features the harness cannot hand to a cmd program or a reader (the protocol
 * carries neither a secret nor a data file): such a target declines them
 * itself, before the program sees the configuration.
 */
export function protocolLacks(c: TraceConfig): string[] {
  return configFeatures(c).filter((f) => (PROTOCOL_LACKS as readonly string[]).includes(f));
}

/** Every feature protocolLacks can name: campaigns on cmd programs and readers steer away from them from the start. */
export const PROTOCOL_LACKS = ['data_file', 'data_file_raw', 'encrypt.format=luks', 'encrypt.format=aes'] as const;

/** Features `steer` knows how to turn off; others are only counted. */
export const STEERABLE = [
  'extended_l2',
  'compression_type=zstd',
  'compat=0.10',
  'lazy_refcounts',
  'backing=raw',
  'backing=qcow2',
  'backing-chain',
  'preallocation=metadata',
  'dirty',
  'data_file',
  'data_file_raw',
  'encrypt.format=luks',
  'encrypt.format=aes',
] as const;

/**
 * The configuration with every declined feature turned off (a refcount width
 * declined is replaced by 16, a cluster size by 64K): generation keeps its
 * shape, so shrinking and the op seeds work unchanged, but never again asks
 * for what was declined.
 */
export function steer(c: TraceConfig, declined: ReadonlySet<string>): TraceConfig {
  if (declined.size === 0) return c;
  let out: TraceConfig = { ...c };
  if (declined.has('extended_l2')) out.extendedL2 = false;
  if (declined.has('compression_type=zstd')) out.compressionType = 'zlib';
  if (declined.has('lazy_refcounts')) out.lazyRefcounts = false;
  if (out.dirty && (declined.has('dirty') || !out.lazyRefcounts)) {
    const { dirty: _d, ...rest } = out;
    out = rest;
  }
  if (declined.has(`refcount_bits=${out.refcountBits}`)) out.refcountBits = 16;
  if (declined.has(`cluster_size=${out.clusterSize}`)) out.clusterSize = 65536;
  if (out.compat === '0.10' && declined.has('compat=0.10')) out.compat = '1.1';
  if (out.compat === '0.10') {
    const { dirty: _d, ...rest } = out;
    out = { ...rest, refcountBits: 16, lazyRefcounts: false, extendedL2: false, compressionType: 'zlib' };
  }
  if (out.extendedL2 && out.clusterSize < 16384) out.extendedL2 = false;
  // QEMU refuses preallocation over a backing file without extended L2.
  if (out.preallocation && out.backing && !out.extendedL2) {
    const { preallocation: _p, ...rest } = out;
    out = rest;
  }
  if (out.preallocation && declined.has(`preallocation=${out.preallocation}`)) {
    const { preallocation: _p, ...rest } = out;
    out = rest;
  }
  if (out.backing?.backing && declined.has('backing-chain')) out = { ...out, backing: { ...out.backing, backing: undefined } };
  if (out.backing && declined.has(`backing=${out.backing.format}`)) {
    const { backing: _drop, ...rest } = out;
    out = rest;
  }
  if (out.dataFile && (declined.has(out.dataFile.raw ? 'data_file_raw' : 'data_file') || (out.dataFile.raw && out.backing))) {
    const { dataFile: _df, ...rest } = out;
    out = rest;
  }
  if (out.encrypt && declined.has(`encrypt.format=${out.encrypt.format}`)) {
    const { encrypt: _e, ...rest } = out;
    out = rest;
  }
  return out;
}
