/**
 * The engine with encryption wired in, against qemu-img/qemu-io 7.2: images
 * QEMU encrypted (LUKS and legacy AES) read through Qcow2Image as qemu-img
 * convert reads them; seeded writes, write-zeroes and discards through
 * Qcow2Image leave images qemu-img check passes and convert reads as the
 * model; a wrong passphrase fails the open with the file byte-for-byte
 * unchanged; without one an image opens only read-only, for check.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../errors.js';
import { Qcow2Image } from '../image.js';
import { FileStorage } from '../storage/file.js';
import { WrongPassphraseError } from './luks.js';
import { runSync } from '../../../tests/support/run-sync.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-crypto-engine-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const PASS = 'engine pass';
const SECRET = `secret,id=sec0,data=${PASS}`;
const SIZE = 3 << 20;

const run = (tool: string, args: string[]) => runSync(tool, args);
const opts = (f: string) => `driver=qcow2,file.filename=${f},encrypt.key-secret=sec0`;

function create(file: string, encrypt: string, clusterSize: number): void {
  const o = `${encrypt},encrypt.key-secret=sec0,cluster_size=${clusterSize}`;
  const r = run('qemu-img', ['create', '-q', '-f', 'qcow2', '--object', SECRET, '-o', o, file, String(SIZE)]);
  if (r.rc !== 0) throw new Error(r.out);
}

function qemuRaw(file: string): Buffer {
  const out = path.join(dir, 'out.raw');
  const r = run('qemu-img', ['convert', '--object', SECRET, '--image-opts', opts(file), '-O', 'raw', out]);
  expect(r.rc, r.out).toBe(0);
  return fs.readFileSync(out);
}

function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return Math.floor((s / 4294967296) * n);
  };
}

function open(file: string, o: { readOnly?: boolean; passphrase?: string }): Qcow2Image {
  const readOnly = o.readOnly ?? false;
  const storage = FileStorage.open(file, { readOnly, lock: false });
  try {
    return Qcow2Image.open(storage, { readOnly, ...(o.passphrase !== undefined ? { passphrase: o.passphrase } : {}) });
  } catch (e) {
    storage.close();
    throw e;
  }
}

const CONFIGS = [
  { name: 'luks, 64 KiB clusters', encrypt: 'encrypt.format=luks,encrypt.iter-time=10', cs: 65536 },
  { name: 'luks, 16 KiB clusters, extended L2', encrypt: 'encrypt.format=luks,encrypt.iter-time=10,extended_l2=on', cs: 16384 },
  { name: 'legacy aes, 64 KiB clusters', encrypt: 'encrypt.format=aes', cs: 65536 },
];

for (const c of CONFIGS) {
  describe(`engine on ${c.name}`, () => {
    const file = path.join(dir, `${c.name.replace(/\W+/g, '-')}.qcow2`);

    it('reads what QEMU wrote, as qemu-img convert does', () => {
      create(file, c.encrypt, c.cs);
      const w = run('qemu-io', ['--object', SECRET, '--image-opts', opts(file), '-c', 'write -P 0x21 0 100k', '-c', 'write -P 0x42 1000001 70000', '-c', 'write -z 40k 8k']);
      expect(w.rc, w.out).toBe(0);
      const img = open(file, { readOnly: true, passphrase: PASS });
      try {
        expect(Buffer.from(img.read(0, SIZE)).equals(qemuRaw(file))).toBe(true);
      } finally {
        img.close();
      }
    });

    it('a wrong passphrase fails the open and leaves the file byte-for-byte unchanged', () => {
      const before = fs.readFileSync(file);
      let err: unknown;
      try {
        open(file, { passphrase: 'not it' }).close();
      } catch (e) {
        err = e;
      }
      if (c.encrypt.includes('luks')) {
        expect(err).toBeInstanceOf(WrongPassphraseError);
        expect((err as Error).message).toBe('Invalid password, cannot unlock any keyslot');
      } else {
        expect(err).toBeUndefined(); // legacy AES has no key check (QEMU neither): wrong keys read garbage
      }
      expect(fs.readFileSync(file).equals(before)).toBe(true);
    });

    it('without a passphrase: no read-write open, no data reads, but check works', () => {
      expect(() => open(file, {})).toThrow("Parameter 'encrypt.key-secret' is required for cipher");
      const img = open(file, { readOnly: true });
      try {
        expect(() => img.read(0, 512)).toThrow(Qcow2Error);
        expect(img.check().corruptions).toBe(0);
      } finally {
        img.close();
      }
    });

    it('seeded writes, write-zeroes and discards through the engine read back through QEMU', () => {
      const model = Buffer.from(qemuRaw(file));
      const r = rng(c.cs + c.encrypt.length);
      const img = open(file, { passphrase: PASS });
      try {
        for (let i = 0; i < 60; i++) {
          const off = r(SIZE - 1);
          const len = 1 + r(Math.min(SIZE - off, 150_000));
          const kind = r(10);
          if (kind < 7) {
            const data = Uint8Array.from({ length: len }, () => r(256));
            img.write(off, data);
            model.set(data, off);
          } else if (kind < 9) {
            img.writeZeroes(off, len);
            model.fill(0, off, off + len);
          } else {
            // Discard leaves what the image reads afterwards up to the engine; the model follows it.
            img.discard(off, len);
            model.set(img.read(off, len), off);
          }
        }
        expect(() => img.writeCompressed(0, new Uint8Array(c.cs))).toThrow(/compressed writes to encrypted images/);
        expect(Buffer.from(img.read(0, SIZE)).equals(model)).toBe(true);
      } finally {
        img.close();
      }
      const chk = run('qemu-img', ['check', '--object', SECRET, '--image-opts', opts(file)]);
      expect(chk.rc, chk.out).toBe(0);
      expect(qemuRaw(file).equals(model)).toBe(true);
    });
  });
}
