/**
 * Sector-unique guest data: every 512-byte sector written by op N at guest
 * sector S carries N and S, so a cluster that lands in the wrong place, or a
 * stale copy of the right place, can never pass for the right data.
 *
 * Layout of a sector: "Q2HS" magic, u32 stamp, u32 sector (low), u32 sector
 * (high), then a byte ramp seeded by stamp and sector (compressible on
 * purpose, so compressed writes produce real compressed clusters).
 */
import { SECTOR } from '../model/layer.js';

const MAGIC = [0x51, 0x32, 0x48, 0x53]; // "Q2HS"
const HEADER = 16;

/** 0..255 repeated: every window of SECTOR - HEADER bytes starting below 256 is a ramp of the sector layout. */
const RAMP = Uint8Array.from({ length: 256 + SECTOR }, (_, i) => i & 0xff);

/** Stamps for backing-file content start here, far above any op number. */
export const BACKING_STAMP_BASE = 1_000_000;
/**
 * Stamps PATTERN_STAMP_BASE + b (b = 1..255) stand for a sector filled with
 * byte b: the data of aio group writes, which qemu-io can only fill with a
 * pattern (aio_write has -P but no -s source file).
 */
export const PATTERN_STAMP_BASE = 2_000_000;

export function patternStamp(byte: number): number {
  return PATTERN_STAMP_BASE + (byte & 0xff);
}

const patternOfStamp = (stamp: number): number | undefined =>
  stamp > PATTERN_STAMP_BASE && stamp < PATTERN_STAMP_BASE + 256 ? stamp - PATTERN_STAMP_BASE : undefined;

export function fillSector(dst: Uint8Array, at: number, stamp: number, sector: number): void {
  const pattern = patternOfStamp(stamp);
  if (pattern !== undefined) {
    dst.fill(pattern, at, at + SECTOR);
    return;
  }
  dst[at] = MAGIC[0]!;
  dst[at + 1] = MAGIC[1]!;
  dst[at + 2] = MAGIC[2]!;
  dst[at + 3] = MAGIC[3]!;
  const v = new DataView(dst.buffer, dst.byteOffset + at, HEADER);
  v.setUint32(4, stamp >>> 0, true);
  v.setUint32(8, sector >>> 0, true);
  v.setUint32(12, Math.floor(sector / 2 ** 32), true);
  // The ramp x, x+1, ... (mod 256) is a window of RAMP, copied natively: this runs for every sector written or verified.
  const x = (stamp * 131 + sector * 31) & 0xff;
  dst.set(RAMP.subarray(x, x + SECTOR - HEADER), at + HEADER);
}

/** Data for a write of `len` bytes at guest offset `off` (both sector aligned) by op `stamp`. */
export function makeData(stamp: number, off: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  const first = off / SECTOR;
  for (let i = 0; i < len / SECTOR; i++) fillSector(out, i * SECTOR, stamp, first + i);
  return out;
}

/** True when `buf[at..at+512)` is exactly what the model says (stamp 0 = zeros). */
export function sectorMatches(buf: Uint8Array, at: number, stamp: number, sector: number, scratch: Uint8Array): boolean {
  if (stamp === 0) {
    for (let i = 0; i < SECTOR; i++) if (buf[at + i] !== 0) return false;
    return true;
  }
  fillSector(scratch, 0, stamp, sector);
  for (let i = 0; i < SECTOR; i++) if (buf[at + i] !== scratch[i]) return false;
  return true;
}

/** Describes what a sector actually holds, for failure messages. */
export function describeSector(buf: Uint8Array, at: number): string {
  let zero = true;
  for (let i = 0; i < SECTOR; i++) if (buf[at + i] !== 0) zero = false;
  if (zero) return 'zeros';
  if (buf[at] === MAGIC[0] && buf[at + 1] === MAGIC[1] && buf[at + 2] === MAGIC[2] && buf[at + 3] === MAGIC[3]) {
    const v = new DataView(buf.buffer, buf.byteOffset + at, HEADER);
    const stamp = v.getUint32(4, true);
    const sector = v.getUint32(8, true) + v.getUint32(12, true) * 2 ** 32;
    return `${describeStamp(stamp)} data of sector ${sector}`;
  }
  return 'foreign bytes';
}

export function describeStamp(stamp: number): string {
  if (stamp === 0) return 'zeros';
  if (stamp < 0) return 'anything';
  const pattern = patternOfStamp(stamp);
  if (pattern !== undefined) return `pattern 0x${pattern.toString(16).padStart(2, '0')}`;
  if (stamp >= BACKING_STAMP_BASE) return `backing write #${stamp - BACKING_STAMP_BASE}`;
  return `op #${stamp}`;
}
