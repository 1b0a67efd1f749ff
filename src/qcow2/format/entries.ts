/**
 * L1, L2 and refcount-table entries (qcow2.txt "Cluster mapping").
 * Entries are handled as two u32 halves (hi, lo) so the hot path never
 * allocates a BigInt; host offsets are bits 9..55.
 */
import {
  L1_RESERVED_HI,
  L1_RESERVED_LO,
  L2_RESERVED_HI,
  L2_RESERVED_LO,
  OFFSET_MASK_HI,
  OFFSET_MASK_LO,
  OFLAG_COMPRESSED_HI,
  OFLAG_COPIED_HI,
  OFLAG_ZERO_LO,
  REFTABLE_RESERVED_LO,
  SECTOR_SIZE,
} from './constants.js';

export const enum ClusterType {
  Unallocated = 0,
  ZeroPlain = 1,
  ZeroAlloc = 2,
  Normal = 3,
  Compressed = 4,
}

export const enum SubclusterType {
  Unallocated = 0,
  Zero = 1,
  Normal = 2,
  Compressed = 3,
  /** A bitmap bit combination the spec forbids. */
  Invalid = 4,
}

/** Host offset of an L1/L2/reftable entry (bits 9..55). */
export function entryOffset(hi: number, lo: number): number {
  return (hi & OFFSET_MASK_HI) * 2 ** 32 + ((lo & OFFSET_MASK_LO) >>> 0);
}

export function isCopied(hi: number): boolean {
  return (hi & OFLAG_COPIED_HI) !== 0;
}

export function isCompressedEntry(hi: number): boolean {
  return (hi & OFLAG_COMPRESSED_HI) !== 0;
}

/** Splits an offset into (hi, lo) halves with the given flags. */
export function makeEntry(offset: number, copied: boolean, zero = false): [number, number] {
  const hi = (Math.floor(offset / 2 ** 32) & OFFSET_MASK_HI) | (copied ? OFLAG_COPIED_HI : 0);
  const lo = ((offset >>> 0) & OFFSET_MASK_LO) | (zero ? OFLAG_ZERO_LO : 0);
  return [hi >>> 0, lo >>> 0];
}

/** Type of a standard L2 entry; v2 images have no zero flag (the bit is reserved there). */
export function l2ClusterType(hi: number, lo: number, version: number): ClusterType {
  return clusterTypeOf(hi, lo, version >= 3);
}

/**
 * Type of an L2 entry; `zeroFlag` says whether bit 0 means "reads as zeros"
 * (standard entries; with extended L2 the subcluster bitmap says it instead).
 */
export function clusterTypeOf(hi: number, lo: number, zeroFlag: boolean): ClusterType {
  if (hi & OFLAG_COMPRESSED_HI) return ClusterType.Compressed;
  const off = entryOffset(hi, lo);
  if (zeroFlag && lo & OFLAG_ZERO_LO) return off ? ClusterType.ZeroAlloc : ClusterType.ZeroPlain;
  return off ? ClusterType.Normal : ClusterType.Unallocated;
}

export function l2ReservedBits(hi: number, lo: number): boolean {
  if (hi & OFLAG_COMPRESSED_HI) return false; // compressed entries use every bit below 62
  return (lo & L2_RESERVED_LO) !== 0 || (hi & L2_RESERVED_HI) !== 0;
}

export function l1ReservedBits(hi: number, lo: number): boolean {
  return (lo & L1_RESERVED_LO) !== 0 || (hi & L1_RESERVED_HI) !== 0;
}

export function reftableReservedBits(lo: number): boolean {
  return (lo & REFTABLE_RESERVED_LO) !== 0;
}

/**
 * Compressed cluster descriptor: x = 62 - (cluster_bits - 8) bits of host
 * byte offset, then the count of additional 512-byte sectors up to bit 61.
 */
export interface CompressedLocation {
  offset: number;
  /** Bytes from offset to the end of the last sector the entry names. */
  size: number;
  sectors: number;
}

export function decodeCompressed(hi: number, lo: number, clusterBits: number): CompressedLocation {
  const x = 62 - (clusterBits - 8);
  const hiOffsetBits = x - 32;
  const offset = (hi & ((1 << hiOffsetBits) - 1)) * 2 ** 32 + (lo >>> 0);
  const countBits = 62 - x;
  const sectors = ((hi >>> hiOffsetBits) & ((1 << countBits) - 1)) + 1;
  return { offset, sectors, size: sectors * SECTOR_SIZE - (offset % SECTOR_SIZE) };
}

/** Entry for compressed data of `size` bytes at host byte `offset`. */
export function encodeCompressed(offset: number, size: number, clusterBits: number): [number, number] {
  const x = 62 - (clusterBits - 8);
  const hiOffsetBits = x - 32;
  const additional = Math.floor((offset + size - 1) / SECTOR_SIZE) - Math.floor(offset / SECTOR_SIZE);
  const hi = OFLAG_COMPRESSED_HI | (additional << hiOffsetBits) | Math.floor(offset / 2 ** 32);
  return [hi >>> 0, offset >>> 0];
}

/** Largest compressed payload the sector-count field can describe for this cluster size. */
export function maxCompressedSectors(clusterBits: number): number {
  return 2 ** (clusterBits - 8);
}

/**
 * Extended L2 subcluster state from the 64-bit bitmap (alloc in the low 32
 * bits, zero in the high 32 bits) — qcow2.txt "Extended L2 Entries".
 */
export function subclusterType(
  clusterType: ClusterType,
  allocBits: number,
  zeroBits: number,
  sc: number,
): SubclusterType {
  const a = (allocBits >>> sc) & 1;
  const z = (zeroBits >>> sc) & 1;
  if (clusterType === ClusterType.Compressed) return SubclusterType.Compressed;
  if (a && z) return SubclusterType.Invalid;
  if (a) return clusterType === ClusterType.Unallocated ? SubclusterType.Invalid : SubclusterType.Normal;
  if (z) return SubclusterType.Zero;
  return SubclusterType.Unallocated;
}

/** The high word with OFLAG_COPIED set or cleared: set exactly where the refcount is 1. */
export function withCopied(hi: number, copied: boolean): number {
  return copied ? (hi | OFLAG_COPIED_HI) >>> 0 : (hi & ~OFLAG_COPIED_HI) >>> 0;
}
