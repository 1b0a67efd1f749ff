/**
 * LUKS and legacy AES against the real qemu-img/qemu-io 7.2: images QEMU
 * encrypted are unlocked and decrypted by this module, sectors this module
 * encrypts are read back by QEMU, and LUKS headers built here open in QEMU.
 * Encrypted images report no host offsets through qemu-img map, so the tests
 * find host clusters by walking L1/L2 themselves.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeHeader } from '../format/header.js';
import { decodeExtensions } from '../format/extensions.js';
import { entryOffset } from '../format/entries.js';
import { CRYPT_AES, CRYPT_LUKS } from '../format/constants.js';
import { openImageCrypto, createImageLuks, legacyAesCrypto, readEncryptInfo, type ImageCrypto } from './image-crypto.js';
import { WrongPassphraseError } from './luks.js';
import { LUKS_KEY_SLOT_ENABLED, LUKS_STRIPES } from './luks-header.js';
import { runSync } from '../../../tests/support/run-sync.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-crypto-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
/** One fresh qemu-img LUKS image (each create spends ~2 s measuring PBKDF2), copied by the suites. */
const fresh = path.join(dir, 'fresh.qcow2');
beforeAll(() => qemuCreate(fresh, 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10'));

const PASS = 'correct horse, battery staple';
const SECRET = `secret,id=sec0,data=${PASS.replace(/,/g, ',,')}`;

const run = (tool: string, args: string[]) => runSync(tool, args, 60_000);

function imageOpts(file: string): string {
  return `driver=qcow2,file.filename=${file},encrypt.key-secret=sec0`;
}

function qemuIo(file: string, cmds: string[], secret = SECRET): { rc: number; out: string } {
  return run('qemu-io', ['--object', secret, '--image-opts', imageOpts(file), ...cmds.flatMap((c) => ['-c', c])]);
}

/** qemu-img create of an encrypted image (its PBKDF2 calibration retried: tests/support/run-sync.ts). */
function qemuCreate(file: string, encryptOpts: string): void {
  const r = run('qemu-img', ['create', '-q', '-f', 'qcow2', '--object', SECRET, '-o', encryptOpts, file, '4M']);
  if (r.rc !== 0) throw new Error(`qemu-img create failed: ${r.out}`);
}

interface Probe {
  cryptMethod: number;
  /** The encrypt block qemu-img info would print, read without the passphrase. */
  info(): unknown;
  clusterSize: number;
  hostOffset(guest: number): number;
  open(pass: string | undefined): ImageCrypto;
}

/** Reads header, extensions and L1/L2 from the file (qcow2.txt "Cluster mapping"). */
function probe(file: string): Probe {
  const buf = new Uint8Array(fs.readFileSync(file));
  const h = decodeHeader(buf);
  const clusterSize = 2 ** h.clusterBits;
  const ext = decodeExtensions(buf.subarray(0, clusterSize), h.headerLength);
  const dv = new DataView(buf.buffer);
  const l2Entries = clusterSize / 8;
  return {
    cryptMethod: h.cryptMethod,
    clusterSize,
    info: () =>
      readEncryptInfo({ cryptMethod: h.cryptMethod, cryptoHeader: ext.cryptoHeader, clusterSize, fileSize: buf.length, readFile: (o, l) => buf.slice(o, o + l) }),
    hostOffset(guest) {
      const vc = Math.floor(guest / clusterSize);
      const l1 = h.l1TableOffset + Math.floor(vc / l2Entries) * 8;
      const l2 = entryOffset(dv.getUint32(l1), dv.getUint32(l1 + 4));
      if (l2 === 0) throw new Error(`guest ${guest} has no L2 table`);
      const e = l2 + (vc % l2Entries) * 8;
      const host = entryOffset(dv.getUint32(e), dv.getUint32(e + 4));
      if (host === 0) throw new Error(`guest ${guest} is not allocated`);
      return host + (guest % clusterSize);
    },
    open: (pass) =>
      openImageCrypto({
        cryptMethod: h.cryptMethod,
        cryptoHeader: ext.cryptoHeader,
        clusterSize,
        fileSize: buf.length,
        readFile: (o, l) => buf.slice(o, o + l),
        passphrase: pass,
      })!,
  };
}

function readAt(file: string, offset: number, length: number): Uint8Array {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(length);
    fs.readSync(fd, b, 0, length, offset);
    return new Uint8Array(b);
  } finally {
    fs.closeSync(fd);
  }
}

function writeAt(file: string, offset: number, data: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

describe('LUKS images made by qemu-img (aes-256-xts-plain64, sha256)', () => {
  const file = path.join(dir, 'luks.qcow2');
  beforeAll(() => {
    fs.copyFileSync(fresh, file);
    const w = qemuIo(file, ['write -P 0xa5 0 64k', 'write -P 0x3c 1M 4k']);
    expect(w.rc, w.out).toBe(0);
  });

  it('parses the header with the qemu-img defaults and unlocks slot 0', () => {
    const p = probe(file);
    expect(p.cryptMethod).toBe(CRYPT_LUKS);
    const c = p.open(PASS);
    const h = c.luks!.header;
    expect([h.cipherName, h.cipherMode, h.hashSpec, h.keyBytes]).toEqual(['aes', 'xts-plain64', 'sha256', 64]);
    expect(c.luks!.slot).toBe(0);
    expect(h.slots[0]!.active).toBe(LUKS_KEY_SLOT_ENABLED);
    expect(h.slots.every((s) => s.stripes === LUKS_STRIPES)).toBe(true);
    // Same figures as qemu-img info prints for the image.
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', '--object', SECRET, '--image-opts', imageOpts(file)], { encoding: 'utf8' }),
    );
    const enc = info['format-specific'].data.encrypt;
    // The whole encrypt block, key order included, as qemu-img info has it.
    expect(JSON.stringify(p.info())).toBe(JSON.stringify(enc));
    expect(enc.uuid).toBe(h.uuid);
    expect(enc['master-key-iters']).toBe(h.mkDigestIterations);
    expect(enc['payload-offset']).toBe(h.payloadOffsetSector * 512);
    expect(enc.slots.map((s: { 'key-offset': number }) => s['key-offset'])).toEqual(h.slots.map((s) => s.keyMaterialOffsetSector * 512));
    expect(enc.slots[0].iters).toBe(h.slots[0]!.iterations);
  });

  it('has the layout this module creates for the same cipher (slot offsets, payload offset, stripes)', () => {
    const theirs = probe(file).open(PASS).luks!.header;
    const ours = createImageLuks('x', { slotIterations: 1000, masterKeyIterations: 1000 }).header;
    expect(ours.slots.map((s) => [s.keyMaterialOffsetSector, s.stripes])).toEqual(theirs.slots.map((s) => [s.keyMaterialOffsetSector, s.stripes]));
    expect(ours.payloadOffsetSector).toBe(theirs.payloadOffsetSector);
    // Disabled slots: QEMU leaves salt and iterations zero.
    expect(theirs.slots.slice(1).every((s) => s.iterations === 0 && s.salt.every((b) => b === 0))).toBe(true);
    expect(ours.slots.slice(1)).toEqual(theirs.slots.slice(1));
  });

  it('refuses a wrong passphrase with a clear error and leaves the file alone', () => {
    const before = fs.readFileSync(file);
    const p = probe(file);
    expect(() => p.open('Correct horse, battery staple')).toThrow(WrongPassphraseError);
    expect(() => p.open('')).toThrow('Invalid password, cannot unlock any keyslot');
    expect(() => p.open(undefined)).toThrow("Parameter 'encrypt.key-secret' is required for cipher");
    expect(fs.readFileSync(file).equals(before)).toBe(true);
  });

  it('decrypts host clusters QEMU wrote, with IVs from the host sector', () => {
    const p = probe(file);
    const c = p.open(PASS);
    for (const [guest, len, byte] of [
      [0, 65536, 0xa5],
      [1 << 20, 4096, 0x3c],
    ] as const) {
      const host = p.hostOffset(guest);
      expect(host).not.toBe(guest); // the test would not tell host from guest IVs otherwise
      const plain = c.decrypt(host, guest, readAt(file, host, len));
      expect(plain.every((b) => b === byte)).toBe(true);
      // The guest offset as IV (the AES rule) must not decrypt LUKS data.
      const wrongIv = c.decrypt(guest, guest, readAt(file, host, 512)).subarray(0, 512);
      expect(wrongIv.every((b) => b === byte)).toBe(false);
    }
  });

  it('QEMU reads back sectors this module encrypted into the file', () => {
    const p = probe(file);
    const c = p.open(PASS);
    const guest = 1 << 20;
    const host = p.hostOffset(guest);
    const plain = new Uint8Array(1024).fill(0x77);
    writeAt(file, host + 512, c.encrypt(host + 512, guest + 512, plain));
    const r = qemuIo(file, ['read -P 0x3c 1M 512', 'read -P 0x77 1049088 1k', 'read -P 0x3c 1050112 2k']);
    expect(r.rc, r.out).toBe(0);
    expect(r.out).not.toMatch(/Pattern verification failed/);
    expect(run('qemu-img', ['check', '--object', SECRET, '--image-opts', imageOpts(file)]).rc).toBe(0);
  });
});

describe('LUKS variants: aes-128-cbc-essiv:sha256 with sha512 (qemu-img made)', () => {
  const file = path.join(dir, 'essiv.qcow2');
  beforeAll(() => {
    qemuCreate(
      file,
      'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha512',
    );
    expect(qemuIo(file, ['write -P 0x11 64k 64k']).rc).toBe(0);
  });

  it('unlocks, decrypts and encrypts as QEMU does', () => {
    const p = probe(file);
    const c = p.open(PASS);
    expect([c.luks!.header.cipherMode, c.luks!.header.hashSpec, c.luks!.header.keyBytes]).toEqual(['cbc-essiv:sha256', 'sha512', 16]);
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', file], { encoding: 'utf8' }));
    expect(JSON.stringify(p.info())).toBe(JSON.stringify(info['format-specific'].data.encrypt));
    const host = p.hostOffset(65536);
    expect(c.decrypt(host, 65536, readAt(file, host, 65536)).every((b) => b === 0x11)).toBe(true);
    writeAt(file, host + 4096, c.encrypt(host + 4096, 65536 + 4096, new Uint8Array(512).fill(0x22)));
    const r = qemuIo(file, ['read -P 0x11 64k 4k', 'read -P 0x22 69632 512', 'read -P 0x11 70144 60928']);
    expect(r.rc, r.out).toBe(0);
    expect(r.out).not.toMatch(/Pattern verification failed/);
  });
});

describe('LUKS headers built by this module open in QEMU', () => {
  // qemu-img makes the qcow2 container; its LUKS area is replaced by ours (same
  // length for the same cipher), so QEMU's only way to read it is our header.
  const variants = [
    { name: 'qemu-img defaults (aes-256-xts-plain64, sha256)', opts: {} },
    { name: 'aes-128-cbc-plain64, sha1', opts: { cipherAlg: 'aes-128', cipherMode: 'cbc', hashAlg: 'sha1' } },
    { name: 'aes-256-cbc-essiv:sha256', opts: { cipherAlg: 'aes-256', cipherMode: 'cbc', ivgenAlg: 'essiv' } },
    { name: 'aes-128-xts-plain', opts: { cipherAlg: 'aes-128', ivgenAlg: 'plain' } },
  ];

  for (const [i, v] of variants.entries()) {
    it(v.name, () => {
      const file = path.join(dir, `ours-${i}.qcow2`);
      const made = createImageLuks('our pass', { ...v.opts, slotIterations: 1000, masterKeyIterations: 1000 });
      // Rebuild the container so that its extension length matches our area.
      const plain = path.join(dir, `plain-${i}.qcow2`);
      fs.copyFileSync(fresh, plain);
      const p0 = probe(plain);
      const buf = new Uint8Array(fs.readFileSync(plain));
      const h = decodeHeader(buf);
      const ext = decodeExtensions(buf.subarray(0, p0.clusterSize), h.headerLength).cryptoHeader!;
      if (made.area.length > ext.length) return expect.fail(`our area ${made.area.length} > qemu's ${ext.length}`);
      const area = new Uint8Array(ext.length);
      area.set(made.area);
      buf.set(area, ext.offset);
      fs.writeFileSync(file, buf);
      const secret = 'secret,id=sec0,data=our pass';
      const w = qemuIo(file, ['write -P 0x5e 128k 8k', 'read -P 0x5e 128k 8k'], secret);
      expect(w.rc, w.out).toBe(0);
      expect(w.out).not.toMatch(/Pattern verification failed|Invalid password/);
      // QEMU's ciphertext under our master key decrypts with our cipher.
      const p = probe(file);
      const host = p.hostOffset(128 << 10);
      const c = p.open('our pass');
      expect(c.decrypt(host, 128 << 10, readAt(file, host, 8192)).every((b) => b === 0x5e)).toBe(true);
      expect(() => p.open('not our pass')).toThrow(WrongPassphraseError);
      expect(qemuIo(file, ['read 0 512'], 'secret,id=sec0,data=wrong').out).toMatch(/Invalid password, cannot unlock any keyslot/);
      const info = run('qemu-img', ['info', '--object', secret, '--image-opts', imageOpts(file)]);
      expect(info.rc, info.out).toBe(0);
      expect(info.out).toContain(`uuid: ${made.header.uuid}`);
      const json = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', file], { encoding: 'utf8' }));
      expect(JSON.stringify(p.info())).toBe(JSON.stringify(json['format-specific'].data.encrypt));
    });
  }
});

describe('legacy AES (encrypt.format=aes): qemu-img 7.2 still creates it', () => {
  const file = path.join(dir, 'aes.qcow2');
  beforeAll(() => {
    qemuCreate(file, 'encrypt.format=aes,encrypt.key-secret=sec0');
    const w = qemuIo(file, ['write -P 0x6b 192k 64k']);
    expect(w.rc, w.out).toBe(0);
  });

  it('decrypts with IVs from the GUEST sector and the passphrase as a 16-byte key', () => {
    const p = probe(file);
    expect(p.cryptMethod).toBe(CRYPT_AES);
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', file], { encoding: 'utf8' }));
    expect(p.info()).toEqual(info['format-specific'].data.encrypt);
    expect(info.encrypted).toBe(true);
    const c = p.open(PASS);
    expect(c.physicalOffset).toBe(false);
    const guest = 192 << 10;
    const host = p.hostOffset(guest);
    expect(host).not.toBe(guest);
    expect(c.decrypt(host, guest, readAt(file, host, 65536)).every((b) => b === 0x6b)).toBe(true);
    // Only the first 16 bytes of the passphrase are the key.
    const same = legacyAesCrypto(PASS.slice(0, 16) + 'anything else');
    expect(same.decrypt(host, guest, readAt(file, host, 512)).every((b) => b === 0x6b)).toBe(true);
    // The host offset as IV is wrong for AES.
    expect(c.decrypt(host, host, readAt(file, host, 512)).every((b) => b === 0x6b)).toBe(false);
  });

  it('QEMU reads back sectors this module encrypted', () => {
    const p = probe(file);
    const c = p.open(PASS);
    const guest = (192 << 10) + 8192;
    const host = p.hostOffset(guest);
    writeAt(file, host, c.encrypt(host, guest, new Uint8Array(2048).fill(0x19)));
    const r = qemuIo(file, ['read -P 0x6b 192k 8k', 'read -P 0x19 204800 2k', 'read -P 0x6b 206848 55296']);
    expect(r.rc, r.out).toBe(0);
    expect(r.out).not.toMatch(/Pattern verification failed/);
  });
});
