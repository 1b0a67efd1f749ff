/**
 * L1/L2/reftable entries and compressed cluster descriptors. Expected values
 * are built with BigInt straight from qcow2.txt's bit tables, so a wrong
 * shift or mask in the (hi, lo) codec shows up; compressed descriptors are
 * also decoded from images qemu-img wrote, for cluster_bits 9 to 21.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { Lcg } from '../../../tests/support/bytes.js';
import {
  ClusterType,
  SubclusterType,
  decodeCompressed,
  encodeCompressed,
  entryOffset,
  isCompressedEntry,
  isCopied,
  l1ReservedBits,
  l2ClusterType,
  l2ReservedBits,
  makeEntry,
  maxCompressedSectors,
  reftableReservedBits,
  subclusterType,
} from './entries.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-entries-test-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const join = (hi: number, lo: number) => (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
const split = (e: bigint): [number, number] => [Number(e >> 32n), Number(e & 0xffffffffn)];
const bit = (n: number) => split(1n << BigInt(n));

describe('standard entries', () => {
  const offsets = [512, 0x1_0000, 2 ** 32 - 512, 2 ** 32, 2 ** 32 + 512, 2 ** 40 + 2 ** 31, 2 ** 53 - 512];
  it('makeEntry puts the offset at bits 9..55, COPIED at 63 and ZERO at 0', () => {
    for (const off of offsets) {
      for (const copied of [false, true]) {
        for (const zero of [false, true]) {
          const [hi, lo] = makeEntry(off, copied, zero);
          const expected = BigInt(off) | (copied ? 1n << 63n : 0n) | (zero ? 1n : 0n);
          expect(join(hi, lo), `${off} ${copied} ${zero}`).toBe(expected);
          expect(entryOffset(hi, lo)).toBe(off);
          expect(isCopied(hi)).toBe(copied);
          expect(isCompressedEntry(hi)).toBe(false);
        }
      }
    }
  });

  it('entryOffset ignores every bit outside 9..55', () => {
    const [hi, lo] = split(0xffff_ffff_ffff_ffffn);
    expect(entryOffset(hi, lo)).toBe(2 ** 56 - 512);
    for (let b = 0; b < 64; b++) {
      const [h, l] = bit(b);
      expect(entryOffset(h, l), `bit ${b}`).toBe(b >= 9 && b <= 55 ? 2 ** b : 0);
    }
  });

  it('reserved bits: L2 1..8 and 56..61, L1 0..8 and 56..62, refcount table 0..8', () => {
    for (let b = 0; b < 64; b++) {
      const [hi, lo] = bit(b);
      expect(l2ReservedBits(hi, lo), `L2 bit ${b}`).toBe((b >= 1 && b <= 8) || (b >= 56 && b <= 61));
      expect(l1ReservedBits(hi, lo), `L1 bit ${b}`).toBe(b <= 8 || (b >= 56 && b <= 62));
      if (b < 32) expect(reftableReservedBits(lo), `reftable bit ${b}`).toBe(b <= 8);
    }
    // A compressed entry uses all of bits 0..61 for its descriptor.
    const [hi, lo] = split((1n << 62n) | 0x3fff_ffff_ffff_ffffn);
    expect(l2ReservedBits(hi, lo)).toBe(false);
  });

  it('cluster types of v3 standard entries', () => {
    const t = (e: bigint, version = 3) => l2ClusterType(...split(e), version);
    expect(t(0n)).toBe(ClusterType.Unallocated);
    expect(t(1n)).toBe(ClusterType.ZeroPlain);
    expect(t(0x50000n | 1n)).toBe(ClusterType.ZeroAlloc);
    expect(t((1n << 63n) | 0x50000n | 1n)).toBe(ClusterType.ZeroAlloc);
    expect(t(0x50000n)).toBe(ClusterType.Normal);
    expect(t((1n << 63n) | 0x50000n)).toBe(ClusterType.Normal);
    expect(t(1n << 62n)).toBe(ClusterType.Compressed);
    // The compressed flag wins over bit 0, which is part of a compressed descriptor's offset.
    expect(t((1n << 62n) | 1n)).toBe(ClusterType.Compressed);
    // Offset bits above 2^32 alone still make an allocated entry.
    expect(t(1n << 40n)).toBe(ClusterType.Normal);
    // Version 2 (and extended L2, which the engine passes as 2): bit 0 carries no zero meaning.
    expect(t(1n, 2)).toBe(ClusterType.Unallocated);
    expect(t(0x50000n | 1n, 2)).toBe(ClusterType.Normal);
  });
});

describe('compressed cluster descriptors, cluster_bits 9..21', () => {
  const SECTOR = 512;
  for (let cb = 9; cb <= 21; cb++) {
    const x = 62 - (cb - 8);
    const maxSectors = 2 ** (cb - 8);
    // Offsets plus sizes stay below 2^53 so the expected values themselves are exact.
    const maxOffset = Math.min(2 ** x, 2 ** 52) - 1;
    const offsets = [SECTOR * 3, SECTOR * 3 + 1, SECTOR * 4 - 1, 2 ** 32 - 1, 2 ** 32 + 7, maxOffset - SECTOR * maxSectors, maxOffset];
    it(`cluster_bits ${cb}: offset in bits 0..${x - 1}, additional sectors in ${x}..61`, () => {
      expect(maxCompressedSectors(cb)).toBe(maxSectors);
      for (const off of offsets) {
        const inSector = off % SECTOR;
        const sizes = [1, SECTOR - inSector, SECTOR - inSector + 1, maxSectors * SECTOR - inSector];
        for (const size of sizes) {
          const additional = Math.floor((off + size - 1) / SECTOR) - Math.floor(off / SECTOR);
          expect(additional).toBeLessThan(maxSectors);
          const [hi, lo] = encodeCompressed(off, size, cb);
          const expected = (1n << 62n) | (BigInt(additional) << BigInt(x)) | BigInt(off);
          expect(join(hi, lo), `off ${off} size ${size}`).toBe(expected);
          expect(isCompressedEntry(hi)).toBe(true);
          expect(isCopied(hi)).toBe(false);
          const d = decodeCompressed(hi, lo, cb);
          expect(d.offset).toBe(off);
          expect(d.sectors).toBe(additional + 1);
          // The decoded size covers the payload and ends at a sector boundary.
          expect(d.size).toBeGreaterThanOrEqual(size);
          expect((off + d.size) % SECTOR).toBe(0);
          expect(d.size - size).toBeLessThan(SECTOR);
        }
      }
    });
    it(`cluster_bits ${cb}: decoding an all-ones descriptor stays inside its fields`, () => {
      const [hi, lo] = split((1n << 62n) | ((1n << 62n) - 1n));
      const d = decodeCompressed(hi, lo, cb);
      expect(d.sectors).toBe(maxSectors);
      // Offset field of x bits, all ones (beyond 2^53 it is approximate, the engine validates ranges).
      if (x <= 53) expect(d.offset).toBe(2 ** x - 1);
      else expect(d.offset).toBeCloseTo(2 ** x - 1, -Math.ceil(Math.log10(2 ** (x - 52))));
    });
  }
});

describe('compressed descriptors in images qemu-img wrote', () => {
  /** Half random, half zero clusters: compressed to about half a cluster, so descriptors span many sectors. */
  function rawData(cs: number, clusters: number, seed: number): Uint8Array {
    const d = new Uint8Array(cs * clusters);
    const rnd = new Lcg(seed);
    for (let c = 0; c < clusters; c++) {
      const randomBytes = Math.floor(cs * (0.2 + 0.6 * (c % 3) / 2));
      for (let i = 0; i < randomBytes; i++) d[c * cs + i] = rnd.byte();
    }
    return d;
  }

  function walkL2(file: Uint8Array, cb: number): { vc: number; hi: number; lo: number }[] {
    const v = new DataView(file.buffer, file.byteOffset, file.byteLength);
    const l1Size = v.getUint32(36);
    const l1Off = Number(v.getBigUint64(40));
    const cs = 2 ** cb;
    const perL2 = cs / 8;
    const out: { vc: number; hi: number; lo: number }[] = [];
    for (let i = 0; i < l1Size; i++) {
      const l2 = Number(v.getBigUint64(l1Off + i * 8) & 0x00ff_ffff_ffff_fe00n);
      if (!l2) continue;
      for (let j = 0; j < perL2; j++) out.push({ vc: i * perL2 + j, hi: v.getUint32(l2 + j * 8), lo: v.getUint32(l2 + j * 8 + 4) });
    }
    return out;
  }

  for (const cb of [9, 10, 12, 16, 21]) {
    it(`cluster_bits ${cb}: every descriptor decodes to the bytes that inflate to the guest cluster`, () => {
      const cs = 2 ** cb;
      const clusters = cb === 21 ? 3 : 12;
      const raw = rawData(cs, clusters, cb);
      const rawPath = path.join(dir, `in-${cb}.raw`);
      const imgPath = path.join(dir, `c-${cb}.qcow2`);
      fs.writeFileSync(rawPath, raw);
      execFileSync('qemu-img', ['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${cs}`, rawPath, imgPath]);
      const file = new Uint8Array(fs.readFileSync(imgPath));
      const entries = walkL2(file, cb).filter((e) => e.vc < clusters);
      let compressed = 0;
      let multiSector = 0;
      let unaligned = 0;
      for (const e of entries) {
        if (!isCompressedEntry(e.hi)) continue;
        compressed++;
        const d = decodeCompressed(e.hi, e.lo, cb);
        if (d.sectors > 1) multiSector++;
        if (d.offset % 512 !== 0) unaligned++;
        expect(d.offset + d.size).toBeLessThanOrEqual(alignUp512(file.length));
        const out = zlib.inflateRawSync(file.subarray(d.offset, d.offset + d.size), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
        expect(Buffer.compare(out.subarray(0, cs), Buffer.from(raw.subarray(e.vc * cs, (e.vc + 1) * cs))), `guest cluster ${e.vc}`).toBe(0);
        // Re-encoding the decoded location reproduces QEMU's descriptor exactly.
        expect(encodeCompressed(d.offset, d.size, cb)).toEqual([e.hi, e.lo]);
      }
      expect(compressed).toBe(clusters);
      expect(multiSector).toBeGreaterThan(0);
      // QEMU packs compressed clusters back to back, so some start mid-sector.
      if (cb > 9) expect(unaligned).toBeGreaterThan(0);
    });
  }
});

function alignUp512(n: number): number {
  return Math.ceil(n / 512) * 512;
}

describe('subcluster types from the extended L2 bitmap', () => {
  it('one bit per subcluster, allocation in the low word, zero in the high word', () => {
    for (const sc of [0, 1, 15, 16, 30, 31]) {
      const m = (1 << sc) >>> 0;
      for (const other of [0, 31 - sc]) {
        if (other === sc) continue;
        const st = (type: ClusterType, a: number, z: number, at: number) => subclusterType(type, a, z, at);
        expect(st(ClusterType.Normal, m, 0, sc)).toBe(SubclusterType.Normal);
        expect(st(ClusterType.Normal, m, 0, other)).toBe(SubclusterType.Unallocated);
        expect(st(ClusterType.Normal, 0, m, sc)).toBe(SubclusterType.Zero);
        expect(st(ClusterType.Normal, 0, m, other)).toBe(SubclusterType.Unallocated);
        expect(st(ClusterType.Unallocated, 0, m, sc)).toBe(SubclusterType.Zero);
        expect(st(ClusterType.Unallocated, 0, 0, sc)).toBe(SubclusterType.Unallocated);
        // Both bits set is forbidden; an allocation bit without a host cluster is too.
        expect(st(ClusterType.Normal, m, m, sc)).toBe(SubclusterType.Invalid);
        expect(st(ClusterType.Unallocated, m, 0, sc)).toBe(SubclusterType.Invalid);
        expect(st(ClusterType.Compressed, 0, 0, sc)).toBe(SubclusterType.Compressed);
      }
    }
  });
  it('an all-ones bitmap word is read as unsigned at subcluster 31', () => {
    expect(subclusterType(ClusterType.Normal, 0xffffffff, 0, 31)).toBe(SubclusterType.Normal);
    expect(subclusterType(ClusterType.Normal, 0x7fffffff, 0x80000000, 31)).toBe(SubclusterType.Zero);
    expect(subclusterType(ClusterType.Normal, 0x7fffffff, 0x80000000, 30)).toBe(SubclusterType.Normal);
  });
});
