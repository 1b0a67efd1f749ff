/**
 * The LUKS building blocks on their own (AF split, header codec, sector
 * ciphers) and hostile LUKS headers: each corruption gets a clear
 * Qcow2Error before any unbounded work, and where QEMU also refuses the
 * header, qemu-io is run on the same bytes to show it does.
 */
import { spawnSync } from 'node:child_process';
import { createCipheriv } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../errors.js';
import { decodeExtensions } from '../format/extensions.js';
import { decodeHeader } from '../format/header.js';
import { afMerge, afSplit } from './afsplit.js';
import { makeSectorCipher, parseCipherSpec } from './cipher.js';
import { luksArea, openImageCrypto } from './image-crypto.js';
import { createLuks, unlockLuks, WrongPassphraseError } from './luks.js';
import {
  decodeLuksHeader,
  encodeLuksHeader,
  LUKS_FIELDS,
  LUKS_HEADER_SIZE,
  LUKS_SLOT_FIELDS,
  LUKS_SLOT_SIZE,
  type LuksHeader,
} from './luks-header.js';
import { runSync } from '../../../tests/support/run-sync.js';

/** qemu-img create of a LUKS image (its PBKDF2 calibration retried: tests/support/run-sync.ts). */
function qemuCreateLuks(file: string, secret: string, opts: string): void {
  const r = runSync('qemu-img', ['create', '-q', '-f', 'qcow2', '--object', secret, '-o', opts, file, '4M']);
  if (r.rc !== 0) throw new Error(`qemu-img create failed: ${r.out}`);
}

const FAST = { slotIterations: 1000, masterKeyIterations: 1000 };

describe('AF split and merge', () => {
  it('round-trips keys of every LUKS size with every hash, including partial digest blocks', () => {
    for (const hash of ['sha1', 'sha256', 'sha512', 'ripemd160']) {
      for (const n of [16, 20, 24, 32, 48, 64]) {
        const key = Uint8Array.from({ length: n }, (_, i) => (i * 37 + n) & 0xff);
        const split = afSplit(hash, key, 7);
        expect(split.length).toBe(n * 7);
        expect(afMerge(hash, split, n, 7)).toEqual(key);
        // Every stripe matters: flipping one bit anywhere changes the key.
        split[3 * n + 1]! ^= 1;
        expect(afMerge(hash, split, n, 7)).not.toEqual(key);
      }
    }
  });

  it('one stripe is the key itself (H is never applied)', () => {
    const key = Uint8Array.from({ length: 32 }, (_, i) => i);
    expect(afSplit('sha256', key, 1)).toEqual(key);
  });
});

describe('sector ciphers', () => {
  it('plain64 XTS is OpenSSL XTS with the little-endian sector number as tweak, re-keyed every 512 bytes', () => {
    const key = Uint8Array.from({ length: 64 }, (_, i) => i + 1);
    const c = makeSectorCipher(parseCipherSpec('aes', 'xts-plain64', 64), key);
    const data = Uint8Array.from({ length: 1024 }, (_, i) => i & 0xff);
    const sector = 2 ** 33 + 5; // above 32 bits: plain64 keeps the high word
    const out = c.encrypt(sector, data);
    for (let k = 0; k < 2; k++) {
      const iv = Buffer.alloc(16);
      iv.writeBigUInt64LE(BigInt(sector + k));
      const ref = createCipheriv('aes-256-xts', key, iv).update(data.subarray(k * 512, (k + 1) * 512));
      expect(Buffer.from(out.subarray(k * 512, (k + 1) * 512)).equals(ref)).toBe(true);
    }
    expect(c.decrypt(sector, out)).toEqual(data);
    // plain truncates the sector number to 32 bits.
    const plain = makeSectorCipher(parseCipherSpec('aes', 'xts-plain', 64), key);
    expect(plain.encrypt(sector, data)).toEqual(c.encrypt(5, data));
  });

  it('refuses what node:crypto cannot do with UnsupportedFeatureError', () => {
    expect(() => parseCipherSpec('serpent', 'xts-plain64', 64)).toThrow(/cipher 'serpent' is not supported/);
    expect(() => parseCipherSpec('aes', 'xts-plain64', 48)).toThrow(/48-byte key is not supported/);
    expect(() => parseCipherSpec('aes', 'ecb', 32)).toThrow(/Unexpected cipher mode string format ecb/);
    expect(() => parseCipherSpec('aes', 'cbc-essiv', 32)).toThrow(/Missing IV generator hash/);
    expect(() => parseCipherSpec('aes', 'cbc-essiv:whirlpool', 32)).toThrow(/hash algorithm 'whirlpool'/);
    expect(() => parseCipherSpec('aes', 'ctr-plain64', 32)).toThrow(/cipher mode 'ctr'/);
  });
});

describe('LUKS header codec', () => {
  it('decode(encode(h)) is h, and a created volume unlocks only with its passphrase', () => {
    const made = createLuks('pw', FAST);
    expect(decodeLuksHeader(encodeLuksHeader(made.header))).toEqual(made.header);
    const read = (o: number, l: number) => made.area.slice(o, o + l);
    const u = unlockLuks(read, made.area.length, 'pw');
    expect(u.masterKey).toEqual(made.masterKey);
    expect(() => unlockLuks(read, made.area.length, 'pw ')).toThrow(WrongPassphraseError);
    // Bytes after a NUL are ignored, as QEMU passes the secret as a C string.
    expect(unlockLuks(read, made.area.length, 'pw\0tail').slot).toBe(0);
  });

  it('a second unlock of the same bytes gives the same key, and the cache never opens what changed', () => {
    const made = createLuks('pw', FAST);
    const area = made.area.slice();
    const read = (o: number, l: number) => area.slice(o, o + l);
    expect(unlockLuks(read, area.length, 'pw').masterKey).toEqual(made.masterKey);
    // Remembered now: the answers must still be those of a fresh derivation.
    const again = unlockLuks(read, area.length, 'pw');
    expect(again.masterKey).toEqual(made.masterKey);
    again.masterKey.fill(0); // a caller scribbling on its key does not reach the cache
    expect(unlockLuks(read, area.length, 'pw').masterKey).toEqual(made.masterKey);
    expect(() => unlockLuks(read, area.length, 'pw2')).toThrow(WrongPassphraseError);
    // One flipped bit of slot 0's stripes: the merge gives another key, whose digest does not match.
    const slot = made.header.slots[0]!;
    area[slot.keyMaterialOffsetSector * 512 + 100]! ^= 1;
    expect(() => unlockLuks(read, area.length, 'pw')).toThrow(WrongPassphraseError);
  });

  it('measures iterations from iter-time as QEMU does when no count is given', () => {
    const made = createLuks('pw', { iterTimeMs: 20, cipherAlg: 'aes-128', cipherMode: 'cbc' });
    // QEMU's floors: at least 1000 each; the digest count is divided by 8.
    expect(made.header.slots[0]!.iterations).toBeGreaterThanOrEqual(1000);
    expect(made.header.mkDigestIterations).toBeGreaterThanOrEqual(1000);
  });
});

/** A valid area (fast iterations) that a mutation then breaks. */
function hostile(mutate: (h: LuksHeader) => void, raw?: (area: Uint8Array) => void): Uint8Array {
  const made = createLuks('pw', FAST);
  const h = decodeLuksHeader(made.area);
  const area = made.area.slice();
  mutate(h);
  area.set(encodeLuksHeader(h), 0);
  raw?.(area);
  return area;
}

function slotField(i: number, f: keyof typeof LUKS_SLOT_FIELDS): number {
  return LUKS_FIELDS.keySlots + i * LUKS_SLOT_SIZE + LUKS_SLOT_FIELDS[f];
}

interface Case {
  name: string;
  /** QEMU refuses the header itself (not just the passphrase); qemu-io is run on it. */
  qemuRefuses: boolean;
  error: RegExp;
  mutate: (h: LuksHeader) => void;
  raw?: (area: Uint8Array) => void;
}

const CASES: Case[] = [
  { name: 'bad magic', qemuRefuses: true, error: /not in LUKS format/, mutate: () => undefined, raw: (a) => (a[0] = 0x4d) },
  {
    name: 'cipher name without NUL',
    qemuRefuses: false,
    error: /cipher name is not NUL-terminated/,
    mutate: () => undefined,
    raw: (a) => a.fill(0x61, LUKS_FIELDS.cipherName, LUKS_FIELDS.cipherName + 32),
  },
  { name: 'version 2', qemuRefuses: true, error: /LUKS version 2 is not supported/, mutate: (h) => (h.version = 2) },
  { name: 'stripes 0', qemuRefuses: true, error: /Keyslot 3 is corrupted \(stripes == 0\)/, mutate: (h) => (h.slots[3]!.stripes = 0) },
  { name: 'garbled active word', qemuRefuses: true, error: /Keyslot 1 state/, mutate: (h) => (h.slots[1]!.active = 0x12345678) },
  {
    name: 'overlapping slots',
    qemuRefuses: true,
    error: /Keyslots 0 and 1 are overlapping/,
    mutate: (h) => (h.slots[1]!.keyMaterialOffsetSector = h.slots[0]!.keyMaterialOffsetSector + 8),
  },
  {
    name: 'key material past the payload offset',
    qemuRefuses: true,
    error: /Keyslot 7 is overlapping with the encrypted payload/,
    mutate: (h) => (h.payloadOffsetSector -= 8),
  },
  {
    name: 'key material outside the header area',
    qemuRefuses: true,
    error: /Keyslot 0 key material lies outside the encryption header area|Keyslot 0 is overlapping with the encrypted payload/,
    mutate: (h) => {
      h.slots[0]!.keyMaterialOffsetSector = 0xfffff000;
      h.payloadOffsetSector = 0xffffffff;
    },
  },
  {
    name: 'key material over the partition header',
    qemuRefuses: false,
    error: /Keyslot 0 key material overlaps the LUKS partition header/,
    mutate: (h) => {
      h.slots[0]!.keyMaterialOffsetSector = 0;
      for (let i = 1; i < 8; i++) h.slots[i]!.keyMaterialOffsetSector += 1000 * i; // keep the others apart
      h.payloadOffsetSector = 0xffffffff;
    },
  },
  {
    name: 'absurd slot iterations',
    qemuRefuses: false,
    error: /Keyslot 0 iterations 4294967295 exceed the limit/,
    mutate: (h) => (h.slots[0]!.iterations = 0xffffffff),
  },
  {
    name: 'absurd digest iterations',
    qemuRefuses: false,
    error: /master key digest iterations 4294967295 exceed the limit/,
    mutate: (h) => (h.mkDigestIterations = 0xffffffff),
  },
  { name: 'zero slot iterations', qemuRefuses: false, error: /Keyslot 0 iterations is 0/, mutate: (h) => (h.slots[0]!.iterations = 0) },
  {
    name: 'absurd stripes',
    qemuRefuses: false, // QEMU's unsigned int arithmetic wraps here; it would try a 256 GiB allocation
    error: /Keyslot 0 stripes 4294967295 exceed the limit/,
    mutate: (h) => (h.slots[0]!.stripes = 0xffffffff),
  },
  { name: 'key size 0', qemuRefuses: true, error: /key size 0 bytes is invalid/, mutate: (h) => (h.keyBytes = 0) },
  { name: 'unknown cipher', qemuRefuses: false, error: /cipher 'twofish' is not supported/, mutate: (h) => (h.cipherName = 'twofish') },
  { name: 'unknown hash', qemuRefuses: true, error: /hash algorithm 'sha3' is not supported/, mutate: (h) => (h.hashSpec = 'sha3') },
  { name: 'mode without ivgen', qemuRefuses: true, error: /Unexpected cipher mode string format xts/, mutate: (h) => (h.cipherMode = 'xts') },
];

describe('hostile LUKS headers', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-luks-hostile-'));
  const container = path.join(dir, 'container.qcow2');
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  beforeAll(() => qemuCreateLuks(container, 'secret,id=s,data=pw', 'encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10'));

  /** The container with its LUKS area replaced by `area`; returns the file. */
  function install(name: string, area: Uint8Array): string {
    const buf = new Uint8Array(fs.readFileSync(container));
    const h = decodeHeader(buf);
    const ext = decodeExtensions(buf.subarray(0, 2 ** h.clusterBits), h.headerLength).cryptoHeader!;
    buf.fill(0, ext.offset, ext.offset + ext.length);
    buf.set(area.subarray(0, ext.length), ext.offset);
    const file = path.join(dir, `${name.replace(/\W+/g, '-')}.qcow2`);
    fs.writeFileSync(file, buf);
    return file;
  }

  for (const c of CASES) {
    it(c.name, () => {
      const area = hostile(c.mutate, c.raw);
      let err: unknown;
      try {
        unlockLuks((o, l) => area.slice(o, o + l), area.length, 'pw');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(Qcow2Error);
      expect((err as Error).message).toMatch(c.error);
      expect((err as Error).message).not.toContain('\n');
      if (c.qemuRefuses) {
        const file = install(c.name, area);
        const r = spawnSync('qemu-io', ['-r', '--object', 'secret,id=s,data=pw', '--image-opts', `driver=qcow2,file.filename=${file},encrypt.key-secret=s`, '-c', 'read 0 512'], {
          encoding: 'utf8',
          timeout: 60_000,
        });
        expect(r.status, r.stdout + r.stderr).not.toBe(0);
      }
    });
  }

  it('a truncated area and a truncated header are refused', () => {
    const made = createLuks('pw', FAST);
    expect(() => unlockLuks((o, l) => made.area.slice(o, o + l), 100, 'pw')).toThrow(/cannot hold a LUKS header/);
    expect(() => decodeLuksHeader(made.area.subarray(0, 591))).toThrow(/LUKS header is truncated \(591 of 592 bytes\)/);
    // Area shorter than slot 0's key material.
    expect(() => unlockLuks((o, l) => made.area.slice(o, o + l), 8192, 'pw')).toThrow(/Keyslot 0 key material lies outside/);
  });

  it('extension pointers that are misaligned, past EOF, absent or huge are refused', () => {
    expect(() => luksArea({ offset: 4096, length: 1 << 20 }, 65536, 1 << 24)).toThrow(/is not a multiple of cluster size '65536'/);
    expect(() => luksArea({ offset: 65536, length: 2 ** 40 }, 65536, 1 << 24)).toThrow(/past the end of the file/);
    expect(() => luksArea(undefined, 65536, 1 << 24)).toThrow(/extension, which is missing/);
    expect(() => luksArea({ offset: 0, length: 4096 }, 65536, 1 << 24)).toThrow(/overlaps the qcow2 header/);
    expect(() =>
      openImageCrypto({ cryptMethod: 3, cryptoHeader: undefined, clusterSize: 65536, fileSize: 0, readFile: () => new Uint8Array(), passphrase: 'x' }),
    ).toThrow(/encryption method 3 is not supported/);
  });

  it('random byte corruption of the header gives a Qcow2Error or a correct unlock, never another failure (fixed seed)', () => {
    const made = createLuks('pw', FAST);
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(LUKS_HEADER_SIZE - 1), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }), (flips) => {
        const area = made.area.slice();
        for (const [pos, x] of flips) area[pos]! ^= x;
        let key: Uint8Array | undefined;
        try {
          key = unlockLuks((o, l) => area.slice(o, o + l), area.length, 'pw', { maxIterations: 4000, maxStripes: 8000 }).masterKey;
        } catch (e) {
          expect(e).toBeInstanceOf(Qcow2Error);
        }
        // An unlock after corruption only happens when unused bytes were hit (uuid, padding, inactive salts).
        if (key) expect(key).toEqual(made.masterKey);
      }),
      { seed: 0x10c5, numRuns: 60 },
    );
  });
});

// Keep the mutation helpers honest: the field table matches the codec.
describe('LUKS field table', () => {
  it('slot fields sit where the codec writes them', () => {
    const made = createLuks('pw', FAST);
    const v = new DataView(made.area.buffer);
    expect(v.getUint32(slotField(0, 'stripes'))).toBe(4000);
    expect(v.getUint32(slotField(2, 'keyMaterialOffset'))).toBe(made.header.slots[2]!.keyMaterialOffsetSector);
    expect(v.getUint32(LUKS_FIELDS.payloadOffset)).toBe(made.header.payloadOffsetSector);
  });
});
