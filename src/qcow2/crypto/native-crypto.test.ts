/**
 * The addon's sector cipher and AF diffusion (native/crypto.c) against the
 * node:crypto code they stand in for: the same bytes for every AES mode, key
 * size and IV generator on random keys, sectors and data (fixed seeds), the
 * same errors, and the node:crypto path taken whenever the addon refuses.
 */
import { createCipheriv, createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { afMerge, afSplit, nativeAf, type AfNative } from './afsplit.js';
import { checkHashName, makeSectorCipher, nativeSectorCipher, parseCipherSpec, type SectorCipherNative } from './cipher.js';

function required<T>(v: T | null | undefined, what: string): T {
  if (v === null || v === undefined) throw new Error(
      `${what} is missing from native/build/Release/ofd_lock.node: run npm run build:native ` +
        "(it is defined only where the process exports OpenSSL's EVP functions, as Node's own builds do)",
    );
  return v;
}
const cipherNative = required(nativeSectorCipher(), 'the native sector cipher');
const afNative = required(nativeAf(), 'the native AF diffusion');

/** [mode string, master key bytes] for every AES combination the engine accepts. */
const COMBOS: [string, number][] = [];
for (const [mode, sizes] of [
  ['xts', [32, 64]],
  ['cbc', [16, 24, 32]],
] as const) {
  // ESSIV needs a digest of an AES key size: md5 (16) and sha256 (32) of the allowed hashes.
  for (const ivgen of ['plain', 'plain64', 'essiv:md5', 'essiv:sha256']) {
    for (const n of sizes) COMBOS.push([`${mode}-${ivgen}`, n]);
  }
}

const SECTOR = 512;
const sectorArb = fc.oneof(
  fc.integer({ min: 0, max: 1000 }),
  fc.integer({ min: 2 ** 32 - 20, max: 2 ** 32 + 20 }), // plain's 32-bit wrap
  fc.integer({ min: 2 ** 53 - 40, max: 2 ** 53 - 20 }),
);

describe('native sector cipher', () => {
  it.each(COMBOS)('aes %s with a %i-byte key gives node:crypto bytes both ways', (modeString, keyBytes) => {
    const spec = parseCipherSpec('aes', modeString, keyBytes);
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: keyBytes, maxLength: keyBytes }),
        sectorArb,
        fc.integer({ min: 0, max: 9 }),
        fc.integer({ min: 0, max: 2 ** 31 }),
        (key, first, sectors, fill) => {
          const data = Uint8Array.from({ length: sectors * SECTOR }, (_, i) => (i * 131 + fill + (i >> 9)) & 0xff);
          const js = makeSectorCipher(spec, key, null);
          const nat = makeSectorCipher(spec, key, cipherNative);
          let halvesEqual = false;
          if (spec.mode === 'xts') halvesEqual = Buffer.compare(key.subarray(0, keyBytes / 2), key.subarray(keyBytes / 2)) === 0;
          // Decrypting arbitrary bytes is the other direction's key schedule.
          expect(Buffer.from(nat.decrypt(first, data)).equals(js.decrypt(first, data))).toBe(true);
          if (halvesEqual) return; // OpenSSL refuses to encrypt so: the test below
          const enc = js.encrypt(first, data);
          expect(Buffer.from(nat.encrypt(first, data)).equals(enc)).toBe(true);
          expect(nat.decrypt(first, enc)).toEqual(data);
        },
      ),
      { seed: 0x5ec7, numRuns: 40 },
    );
  });

  it('pins one sector per mode to OpenSSL run directly (IV, ESSIV and key halves in the right order)', () => {
    const key = Uint8Array.from({ length: 32 }, (_, i) => i * 7 + 3);
    const data = Uint8Array.from({ length: 2 * SECTOR }, (_, i) => i & 0xff);
    const salt = createHash('sha256').update(key).digest();
    const ivOf = (s: number) => {
      const iv = Buffer.alloc(16);
      iv.writeBigUInt64LE(BigInt(s));
      return createCipheriv('aes-256-ecb', salt, null).setAutoPadding(false).update(iv);
    };
    const out = makeSectorCipher(parseCipherSpec('aes', 'cbc-essiv:sha256', 32), key, cipherNative).encrypt(9, data);
    for (const k of [0, 1]) {
      const ref = createCipheriv('aes-256-cbc', key, ivOf(9 + k)).setAutoPadding(false).update(data.subarray(k * SECTOR, (k + 1) * SECTOR));
      expect(Buffer.from(out.subarray(k * SECTOR, (k + 1) * SECTOR)).equals(ref)).toBe(true);
    }
  });

  it('XTS with equal key halves: encryption fails with OpenSSL error as before, decryption works', () => {
    const key = new Uint8Array(64).fill(0x42);
    const spec = parseCipherSpec('aes', 'xts-plain64', 64);
    const data = new Uint8Array(SECTOR).fill(1);
    const jsErr = (() => {
      try {
        makeSectorCipher(spec, key, null).encrypt(0, data);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(jsErr).toBeInstanceOf(Error);
    expect(() => makeSectorCipher(spec, key, cipherNative).encrypt(0, data)).toThrow((jsErr as Error).message);
    expect(makeSectorCipher(spec, key, cipherNative).decrypt(3, data)).toEqual(makeSectorCipher(spec, key, null).decrypt(3, data));
  });

  it('falls back to node:crypto when the addon refuses or cannot key the cipher', () => {
    const spec = parseCipherSpec('aes', 'xts-plain', 32);
    const key = Uint8Array.from({ length: 32 }, (_, i) => i);
    const data = Uint8Array.from({ length: 3 * SECTOR }, (_, i) => (i * 3) & 0xff);
    const want = makeSectorCipher(spec, key, null).encrypt(77, data);
    let nativeRuns = 0;
    const counting: SectorCipherNative = {
      sectorCipherNew: cipherNative.sectorCipherNew,
      sectorCipherRun: (...args) => {
        nativeRuns++;
        return cipherNative.sectorCipherRun(...args);
      },
    };
    expect(makeSectorCipher(spec, key, counting).encrypt(77, data)).toEqual(want);
    expect(nativeRuns).toBe(1); // one call for all three sectors, and it did the work
    let runs = 0;
    const refusing: SectorCipherNative = {
      sectorCipherNew: cipherNative.sectorCipherNew,
      sectorCipherRun: (...args) => {
        runs++;
        args[4].fill(0xee); // a refusal after writing part of the output must not leak it
        return -4;
      },
    };
    expect(makeSectorCipher(spec, key, refusing).encrypt(77, data)).toEqual(want);
    expect(runs).toBe(1);
    const noHandle: SectorCipherNative = { ...cipherNative, sectorCipherNew: () => undefined };
    expect(makeSectorCipher(spec, key, noHandle).encrypt(77, data)).toEqual(want);
    // The native call checks its own arguments: a negative sector or ragged length is refused, not guessed.
    const handle = required(cipherNative.sectorCipherNew(128, 0, key, 0), 'a handle');
    expect(cipherNative.sectorCipherRun(handle, true, -1, data, new Uint8Array(data.length))).toBeLessThan(0);
    expect(cipherNative.sectorCipherRun(handle, true, 0, data, new Uint8Array(SECTOR))).toBeLessThan(0);
    expect(cipherNative.sectorCipherNew(192, 0, new Uint8Array(48), 0)).toBeUndefined(); // no aes-192-xts in OpenSSL
  });
});

describe('native AF diffusion', () => {
  const HASHES = ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'].map(checkHashName);

  it.each(HASHES)('afSplit and afMerge with %s give the node:crypto bytes', (hash) => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 80 }),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 0, max: 2 ** 31 }),
        (n, stripes, seed) => {
          const key = Uint8Array.from({ length: n }, (_, i) => (i * 29 + seed) & 0xff);
          const random = (len: number) => Uint8Array.from({ length: len }, (_, i) => (i * 211 + (seed >> 3) + (i >> 7)) & 0xff);
          const js = afSplit(hash, key, stripes, random, null);
          const nat = afSplit(hash, key, stripes, random, afNative);
          expect(Buffer.from(nat).equals(Buffer.from(js))).toBe(true);
          expect(afMerge(hash, js, n, stripes, afNative)).toEqual(key);
          const damaged = js.slice();
          damaged[(seed % stripes) * n]! ^= 0x80;
          expect(Buffer.from(afMerge(hash, damaged, n, stripes, afNative)).equals(Buffer.from(afMerge(hash, damaged, n, stripes, null)))).toBe(true);
        },
      ),
      { seed: 0xaf5, numRuns: 30 },
    );
  });

  it('a LUKS-sized merge (4000 stripes) agrees', () => {
    const material = Uint8Array.from({ length: 64 * 4000 }, (_, i) => (i * 7919) >>> 5);
    for (const hash of ['sha1', 'sha256', 'sha512']) {
      expect(afMerge(hash, material, 64, 4000, afNative)).toEqual(afMerge(hash, material, 64, 4000, null));
    }
  });

  it('falls back to node:crypto when the addon refuses, even after writing', () => {
    const key = Uint8Array.from({ length: 32 }, (_, i) => 255 - i);
    const random = (len: number) => new Uint8Array(len).fill(9);
    const want = afSplit('sha256', key, 5, random, null);
    const refusing: AfNative = {
      afDiffuse: (...args) => {
        args[5].fill(0x55);
        return -2;
      },
    };
    expect(afSplit('sha256', key, 5, random, refusing)).toEqual(want);
    expect(afMerge('sha256', want, 32, 5, refusing)).toEqual(key);
    // Unknown hashes and short material are refused by the addon itself.
    expect(afNative.afDiffuse('whirlpool', 64, new Uint8Array(64), 32, 2, new Uint8Array(32))).toBeLessThan(0);
    expect(afNative.afDiffuse('sha256', 32, new Uint8Array(63), 32, 2, new Uint8Array(32))).toBeLessThan(0);
  });
});
