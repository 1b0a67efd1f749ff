/**
 * The byte-granular data path over whole images QEMU wrote, judged by
 * qemu-img convert -O raw: decrypting every allocated cluster here gives
 * QEMU's raw image; seeded unaligned writes encrypted here (read-modify-write
 * of partial sectors) read back through QEMU as the model says; moving
 * clusters between host offsets with recrypt keeps them readable; and QEMU's
 * compressed clusters in encrypted images are plain deflate, and its v2
 * downgrade writes raw zeros into them (both recorded for the engine to know).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { entryOffset } from '../format/entries.js';
import { decodeExtensions } from '../format/extensions.js';
import { decodeHeader } from '../format/header.js';
import { decryptRange, readEncryptedData, recrypt, writeEncryptedData, type DataStorage } from './data-path.js';
import { openImageCrypto, type ImageCrypto } from './image-crypto.js';
import { runSync } from '../../../tests/support/run-sync.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-crypto-data-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const SECRET = 'secret,id=sec0,data=data path';
const SIZE = 2 << 20;

const run = (tool: string, args: string[]) => runSync(tool, args);
const opts = (f: string) => `driver=qcow2,file.filename=${f},encrypt.key-secret=sec0`;

function create(file: string, encrypt: string): void {
  const r = run('qemu-img', ['create', '-q', '-f', 'qcow2', '--object', SECRET, '-o', `${encrypt},encrypt.key-secret=sec0`, file, String(SIZE)]);
  if (r.rc !== 0) throw new Error(r.out);
}

function qemuIo(file: string, cmds: string[]): void {
  const r = run('qemu-io', ['--object', SECRET, '--image-opts', opts(file), ...cmds.flatMap((c) => ['-c', c])]);
  expect(r.rc, r.out).toBe(0);
}

function qemuRaw(file: string): Uint8Array {
  const out = path.join(dir, 'out.raw');
  const r = run('qemu-img', ['convert', '--object', SECRET, '--image-opts', opts(file), '-O', 'raw', out]);
  expect(r.rc, r.out).toBe(0);
  return new Uint8Array(fs.readFileSync(out));
}

interface Img {
  buf: Uint8Array;
  cs: number;
  crypto: ImageCrypto;
  /** File offset of the L2 entry of guest cluster vc, and the entry's host offset (0 if none). */
  entry(vc: number): { at: number; host: number; compressed: boolean };
}

function load(file: string): Img {
  const buf = new Uint8Array(fs.readFileSync(file));
  const h = decodeHeader(buf);
  const cs = 2 ** h.clusterBits;
  const dv = new DataView(buf.buffer);
  const crypto = openImageCrypto({
    cryptMethod: h.cryptMethod,
    cryptoHeader: decodeExtensions(buf.subarray(0, cs), h.headerLength).cryptoHeader,
    clusterSize: cs,
    fileSize: buf.length,
    readFile: (o, l) => buf.slice(o, o + l),
    passphrase: 'data path',
  })!;
  return {
    buf,
    cs,
    crypto,
    entry(vc) {
      const l1 = h.l1TableOffset + Math.floor(vc / (cs / 8)) * 8;
      const l2 = entryOffset(dv.getUint32(l1), dv.getUint32(l1 + 4));
      if (l2 === 0) return { at: 0, host: 0, compressed: false };
      const at = l2 + (vc % (cs / 8)) * 8;
      const hi = dv.getUint32(at);
      return { at, host: entryOffset(hi, dv.getUint32(at + 4)), compressed: (hi & 0x40000000) !== 0 };
    },
  };
}

/** First differing byte, or -1: vitest's deep equality is far too slow on megabytes. */
function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  if (Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) return -1;
  return a.findIndex((x, i) => x !== b[i]);
}

function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return Math.floor((s / 4294967296) * n);
  };
}

/** Guest bytes as this module reads them: every normal cluster decrypted in unaligned pieces. */
function ourRaw(img: Img, r: (n: number) => number): Uint8Array {
  const out = new Uint8Array(SIZE);
  for (let vc = 0; vc < SIZE / img.cs; vc++) {
    const e = img.entry(vc);
    if (e.host === 0 || e.compressed) continue;
    for (let pos = 0; pos < img.cs; ) {
      const len = Math.min(img.cs - pos, 1 + r(3000));
      const g = vc * img.cs + pos;
      out.set(decryptRange(img.crypto, (o, l) => img.buf.subarray(o, o + l), e.host + pos, g, len), g);
      pos += len;
    }
  }
  return out;
}

const WRITES = ['write -P 0x11 0 64k', 'write -P 0x22 70000 1000', 'write -P 0x33 200001 77777', 'write -P 0x44 1048575 3', 'write -P 0x55 2097000 152'];

for (const fmt of ['luks', 'aes'] as const) {
  describe(`${fmt}: the data path agrees with qemu-img convert`, () => {
    const file = path.join(dir, `${fmt}.qcow2`);

    it('decrypts the whole image as QEMU does, in unaligned pieces', () => {
      create(file, fmt === 'luks' ? 'encrypt.format=luks,encrypt.iter-time=10' : 'encrypt.format=aes');
      qemuIo(file, WRITES);
      expect(firstDiff(ourRaw(load(file), rng(1)), qemuRaw(file))).toBe(-1);
    });

    it('unaligned writes through the engine hooks (sector read-modify-write) read back through QEMU', () => {
      const img = load(file);
      const model = qemuRaw(file);
      const r = rng(fmt === 'luks' ? 7 : 8);
      const storage: DataStorage = {
        read: (o, l) => img.buf.slice(o, o + l),
        write: (o, d) => img.buf.set(d, o),
      };
      const allocated = [...Array(SIZE / img.cs).keys()].filter((vc) => img.entry(vc).host !== 0);
      for (let i = 0; i < 40; i++) {
        const vc = allocated[r(allocated.length)]!;
        const host = img.entry(vc).host;
        const start = r(img.cs);
        const len = 1 + r(Math.min(img.cs - start, 2000));
        const data = Uint8Array.from({ length: len }, () => r(256));
        const g = vc * img.cs + start;
        writeEncryptedData(img.crypto, storage, host + start, g, data);
        model.set(data, g);
        // The read hook sees the write at once, at every alignment.
        const back = new Uint8Array(len);
        readEncryptedData(img.crypto, storage, host + start, g, back);
        expect(firstDiff(back, data)).toBe(-1);
      }
      fs.writeFileSync(file, img.buf);
      expect(firstDiff(qemuRaw(file), model)).toBe(-1);
      expect(run('qemu-img', ['check', '--object', SECRET, '--image-opts', opts(file)]).rc).toBe(0);
    });

    it('clusters moved to another host offset with recrypt stay readable', () => {
      const img = load(file);
      const before = qemuRaw(file);
      const dv = new DataView(img.buf.buffer);
      const a = img.entry(0);
      const b = img.entry(3); // 200001 + 77777 reaches into guest cluster 4; 3 is wholly written
      expect(a.host && b.host).toBeTruthy();
      const da = img.buf.slice(a.host, a.host + img.cs);
      const db = img.buf.slice(b.host, b.host + img.cs);
      // Swap the two clusters' places: refcounts stay valid, only the host offsets change.
      img.buf.set(recrypt(img.crypto, a.host, b.host, 0, da), b.host);
      img.buf.set(recrypt(img.crypto, b.host, a.host, 3 * img.cs, db), a.host);
      const ea = [dv.getUint32(a.at), dv.getUint32(a.at + 4)] as const;
      dv.setUint32(a.at, dv.getUint32(b.at));
      dv.setUint32(a.at + 4, dv.getUint32(b.at + 4));
      dv.setUint32(b.at, ea[0]);
      dv.setUint32(b.at + 4, ea[1]);
      fs.writeFileSync(file, img.buf);
      expect(firstDiff(qemuRaw(file), before)).toBe(-1);
      if (fmt === 'luks') expect(firstDiff(recrypt(img.crypto, a.host, b.host, 0, da), da)).not.toBe(-1);
    });

    // QEMU 7.2 fact the engine must follow: compressed clusters skip encryption.
    if (fmt === 'luks') {
      it('QEMU stores compressed clusters of an encrypted image as plain deflate (the engine must not decrypt them)', () => {
        qemuIo(file, ['write -c -P 0x5a 1280k 64k']);
        const img = load(file);
        const e = img.entry(20);
        expect(e.compressed).toBe(true);
        const h = decodeHeader(img.buf);
        const dv = new DataView(img.buf.buffer);
        // qcow2.txt "Compressed Clusters Descriptor": x = 62 - (cluster_bits - 8) offset bits.
        const x = 62 - (h.clusterBits - 8);
        const off = Number(((BigInt(dv.getUint32(e.at)) << 32n) | BigInt(dv.getUint32(e.at + 4))) & ((1n << BigInt(x)) - 1n));
        const plain = zlib.inflateRawSync(img.buf.subarray(off, off + img.cs), { windowBits: 12 });
        expect(plain.length).toBe(65536);
        expect(plain.every((b) => b === 0x5a)).toBe(true);
      });

      it('QEMU 7.2 amend compat=0.10 expands zero-allocated clusters with raw zeros, which decrypt to garbage', () => {
        qemuIo(file, ['write -P 0x61 1344k 64k', 'write -z 1344k 64k']); // guest cluster 21: allocated, then zero flag
        expect(load(file).entry(21).host).not.toBe(0);
        const r = run('qemu-img', ['amend', '--object', SECRET, '--image-opts', opts(file), '-o', 'compat=0.10']);
        expect(r.rc, r.out).toBe(0);
        const img = load(file);
        const host = img.entry(21).host;
        expect(img.buf.subarray(host, host + img.cs).every((b) => b === 0)).toBe(true); // raw zeros on disk
        const guest = qemuRaw(file).subarray(21 * img.cs, 22 * img.cs);
        expect(guest.every((b) => b === 0)).toBe(false); // so the guest no longer reads zeros
        expect(firstDiff(guest, img.crypto.decrypt(host, 21 * img.cs, new Uint8Array(img.cs)))).toBe(-1);
      });
    }
  });
}
