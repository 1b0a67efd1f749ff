/**
 * Refcount block entries for every order 0..6: packing against an independent
 * bit-level layout (sub-byte widths from the least significant bit, wider
 * ones big-endian), maximum values, neighbours untouched, and the refcount
 * blocks qemu-img itself writes.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { getRefcount, maxRefcount, refcountEntriesPerBlock, setRefcount } from './refcount-block.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-refblock-test-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Reads entry i of width 2^order straight from the bit layout QEMU uses. */
function referenceGet(block: Uint8Array, i: number, order: number): bigint {
  const width = 1 << order;
  if (width < 8) {
    const bitPos = i * width;
    const byte = block[bitPos >>> 3];
    return BigInt((byte >>> (bitPos & 7)) & ((1 << width) - 1));
  }
  let v = 0n;
  const bytes = width / 8;
  for (let k = 0; k < bytes; k++) v = (v << 8n) | BigInt(block[i * bytes + k]);
  return v;
}

describe('refcount blocks, every order', () => {
  for (let order = 0; order <= 6; order++) {
    const width = 1 << order;
    const max = order === 6 ? Number.MAX_SAFE_INTEGER : 2 ** width - 1;

    it(`order ${order}: geometry and maximum`, () => {
      expect(maxRefcount(order)).toBe(max);
      for (const cb of [9, 16, 21]) expect(refcountEntriesPerBlock(cb, order)).toBe((2 ** cb * 8) / width);
    });

    it(`order ${order}: set/get agree with the reference layout, neighbours untouched`, () => {
      const cs = 512;
      const n = refcountEntriesPerBlock(9, order);
      const block = new Uint8Array(cs);
      const v = view(block);
      const values: number[] = [];
      // Every index gets a value derived from it, including 0, 1 and the maximum.
      for (let i = 0; i < n; i++) {
        const val = i % 7 === 0 ? max : i % 5 === 0 ? 0 : order === 6 ? (i * 0x1_0000_0001) % max : (i * 2654435761) % (max + 1);
        values.push(val);
        setRefcount(block, v, i, order, val);
      }
      for (let i = 0; i < n; i++) {
        expect(getRefcount(block, v, i, order), `entry ${i}`).toBe(values[i]);
        expect(referenceGet(block, i, order), `entry ${i} layout`).toBe(BigInt(values[i]));
      }
      // Rewrite every other entry and check the neighbours kept their values.
      for (let i = 0; i < n; i += 2) setRefcount(block, v, i, order, 1);
      for (let i = 0; i < n; i++) expect(getRefcount(block, v, i, order)).toBe(i % 2 === 0 ? 1 : values[i]);
    });

    it(`order ${order}: a single entry lands on the documented bits`, () => {
      const block = new Uint8Array(64);
      const v = view(block);
      const idx = order < 3 ? 9 : 3;
      setRefcount(block, v, idx, order, 1);
      const bitPos = idx * width;
      if (width < 8) {
        // Sub-byte widths fill each byte from bit 0 upward.
        expect(block[bitPos >>> 3]).toBe(1 << (bitPos & 7));
      } else {
        // Big-endian: the value 1 is the last byte of the entry.
        expect(block[(idx + 1) * (width / 8) - 1]).toBe(1);
      }
      // Exactly one bit set in the whole block.
      const ones = block.reduce((a, b) => a + b.toString(2).split('').filter((c) => c === '1').length, 0);
      expect(ones).toBe(1);
    });
  }

  it('order 5 maximum reads back unsigned, order 6 above 2^53 reads saturated', () => {
    const b = new Uint8Array(16);
    setRefcount(b, view(b), 1, 5, 0xffffffff);
    expect(getRefcount(b, view(b), 1, 5)).toBe(4294967295);
    const c = new Uint8Array(16);
    c.fill(0xff, 8);
    expect(getRefcount(c, view(c), 1, 6)).toBe(Number.MAX_SAFE_INTEGER);
    setRefcount(c, view(c), 0, 6, 2 ** 40 + 3);
    expect(Array.from(c.subarray(0, 8))).toEqual([0, 0, 1, 0, 0, 0, 0, 3]);
    expect(getRefcount(c, view(c), 0, 6)).toBe(2 ** 40 + 3);
  });

  it('unknown orders are refused', () => {
    const b = new Uint8Array(8);
    expect(() => getRefcount(b, view(b), 0, 7)).toThrow(RangeError);
    expect(() => setRefcount(b, view(b), 0, 7, 1)).toThrow(RangeError);
  });
});

describe('refcount blocks qemu-img wrote', () => {
  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    it(`refcount_bits=${bits}: every cluster of the file has refcount 1, the rest 0`, () => {
      const order = Math.log2(bits);
      const file = path.join(dir, `rc${bits}.qcow2`);
      const cs = 4096;
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `refcount_bits=${bits},cluster_size=${cs}`, file, '4M']);
      // Data in a few clusters so that more than the create-time clusters are counted.
      execFileSync('qemu-io', ['-c', 'write -P 0x11 0 12k', '-c', 'write -P 0x22 2M 4k', file], { stdio: 'ignore' });
      const img = new Uint8Array(fs.readFileSync(file));
      const v = view(img);
      const reftable = Number(v.getBigUint64(48));
      const blockOff = Number(v.getBigUint64(reftable) & ~0x1ffn);
      const block = img.subarray(blockOff, blockOff + cs);
      const used = Math.ceil(img.length / cs);
      const n = refcountEntriesPerBlock(12, order);
      for (let i = 0; i < n; i++) {
        expect(getRefcount(block, view(block), i, order), `cluster ${i}`).toBe(i < used ? 1 : 0);
      }
    });
  }

  it('refcount_bits=1 with a set bit we write: qemu-img check agrees with our packing', () => {
    const file = path.join(dir, 'rc1-leak.qcow2');
    const cs = 4096;
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `refcount_bits=1,cluster_size=${cs}`, file, '4M']);
    const img = new Uint8Array(fs.readFileSync(file));
    const v = view(img);
    const blockOff = Number(v.getBigUint64(Number(v.getBigUint64(48))) & ~0x1ffn);
    const block = img.subarray(blockOff, blockOff + cs);
    // Mark cluster 13 as used although nothing refers to it: exactly one leak if the bit is where QEMU looks.
    setRefcount(block, view(block), 13, 0, 1);
    const grown = new Uint8Array(16 * cs);
    grown.set(img);
    fs.writeFileSync(file, grown);
    let out: string;
    try {
      out = execFileSync('qemu-img', ['check', '--output=json', file], { encoding: 'utf8' });
    } catch (e) {
      out = (e as { stdout: string }).stdout;
    }
    const r = JSON.parse(out);
    expect(r.leaks).toBe(1);
    expect(r['check-errors'] ?? 0).toBe(0);
    expect(r.corruptions ?? 0).toBe(0);
  });
});
