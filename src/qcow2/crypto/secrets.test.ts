/**
 * Secrets and encrypt options in qemu-img syntax, judged by qemu-io and
 * qemu-img themselves: every --object list opens the same LUKS image with
 * QEMU iff it opens with this module, and a refusal carries QEMU's message.
 */
import { createCipheriv } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../errors.js';
import { decodeExtensions } from '../format/extensions.js';
import { decodeHeader } from '../format/header.js';
import { openImageCrypto } from './image-crypto.js';
import {
  checkEncryptFormat,
  parseEncryptCreateOptions,
  parseImageOpts,
  parseOptionString,
  parseSecretObject,
  SecretStore,
  splitOptionString,
} from './secrets.js';
import { runSync } from '../../../tests/support/run-sync.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-secrets-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const image = path.join(dir, 'luks.qcow2');
const PASS = 'pa,ss=wörd';

const run = (tool: string, args: string[]) => runSync(tool, args);

beforeAll(() => {
  const r = run('qemu-img', ['create', '-q', '-f', 'qcow2', '--object', `secret,id=sec0,data=${PASS.replace(/,/g, ',,')}`, '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', image, '1M']);
  if (r.rc !== 0) throw new Error(r.out);
  fs.writeFileSync(path.join(dir, 'pw'), PASS);
  fs.writeFileSync(path.join(dir, 'pw-nl'), `${PASS}\n`);
  fs.writeFileSync(path.join(dir, 'latin1'), Buffer.from([0x70, 0xe9, 0xff]));
});

/** Opens the image with our store: undefined on success, else the error message. */
function ours(objects: string[], keySecret: string): string | undefined {
  try {
    const store = new SecretStore();
    for (const o of objects) store.add(o);
    const buf = new Uint8Array(fs.readFileSync(image));
    const h = decodeHeader(buf);
    const cs = 2 ** h.clusterBits;
    openImageCrypto({
      cryptMethod: h.cryptMethod,
      cryptoHeader: decodeExtensions(buf.subarray(0, cs), h.headerLength).cryptoHeader,
      clusterSize: cs,
      fileSize: buf.length,
      readFile: (o, l) => buf.slice(o, o + l),
      passphrase: store.lookupUtf8(keySecret),
    });
    return undefined;
  } catch (e) {
    expect(e).toBeInstanceOf(Qcow2Error);
    return (e as Error).message;
  }
}

const masterKey = Buffer.alloc(32, 7);
const iv = Buffer.alloc(16, 9);
function encryptedSecret(plain: string): string {
  const c = createCipheriv('aes-256-cbc', masterKey, iv);
  return Buffer.concat([c.update(plain, 'utf8'), c.final()]).toString('base64');
}

const CASES: { name: string; objects: () => string[]; key?: string }[] = [
  { name: 'data with escaped commas', objects: () => [`secret,id=sec0,data=${PASS.replace(/,/g, ',,')}`] },
  { name: 'unescaped comma', objects: () => [`secret,id=sec0,data=${PASS}`] },
  { name: 'base64', objects: () => [`secret,id=sec0,data=${Buffer.from(PASS).toString('base64')},format=base64`] },
  { name: 'file', objects: () => [`secret,id=sec0,file=${path.join(dir, 'pw')}`] },
  { name: 'file with a trailing newline (kept, so wrong)', objects: () => [`secret,id=sec0,file=${path.join(dir, 'pw-nl')}`] },
  { name: 'JSON', objects: () => [JSON.stringify({ 'qom-type': 'secret', id: 'sec0', data: PASS })] },
  {
    name: 'encrypted with keyid and iv',
    objects: () => [
      `secret,id=mk,data=${masterKey.toString('base64')},format=base64`,
      `secret,id=sec0,data=${encryptedSecret(PASS)},keyid=mk,iv=${iv.toString('base64')},format=base64`,
    ],
  },
  { name: 'keyid with a short key', objects: () => ['secret,id=mk,data=short', `secret,id=sec0,data=${encryptedSecret(PASS)},keyid=mk,iv=AAAAAAAAAAAAAAAAAAAAAA==`] },
  { name: 'missing id', objects: () => ['secret,data=x'] },
  { name: 'missing qom-type', objects: () => ['id=sec0,data=x'] },
  { name: 'data and file', objects: () => ['secret,id=sec0,data=x,file=/nonexistent'] },
  { name: 'neither data nor file', objects: () => ['secret,id=sec0'] },
  { name: 'bad format', objects: () => ['secret,id=sec0,data=x,format=hex'] },
  { name: 'invalid base64', objects: () => ['secret,id=sec0,data=%%%,format=base64'] },
  { name: 'unknown property', objects: () => ['secret,id=sec0,data=x,bogus=1'] },
  { name: 'duplicate id', objects: () => [`secret,id=sec0,data=${PASS.replace(/,/g, ',,')}`, 'secret,id=sec0,data=x'] },
  { name: 'unknown secret id', objects: () => ['secret,id=sec0,data=x'], key: 'sec1' },
  { name: 'not UTF-8', objects: () => [`secret,id=sec0,file=${path.join(dir, 'latin1')}`] },
  { name: 'the last duplicate key wins', objects: () => [`secret,id=sec0,data=${PASS.replace(/,/g, ',,')},data=other`] },
  { name: 'wrong passphrase', objects: () => ['secret,id=sec0,data=nope'] },
];

describe('--object secret,... opens the image iff qemu-io does, with its message', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const objects = c.objects();
      const key = c.key ?? 'sec0';
      const q = run('qemu-io', [...objects.flatMap((o) => ['--object', o]), '-r', '--image-opts', `driver=qcow2,file.filename=${image},encrypt.key-secret=${key}`, '-c', 'read 0 512']);
      const mine = ours(objects, key);
      expect(mine === undefined, `ours: ${mine}\nqemu-io: ${q.out}`).toBe(q.rc === 0);
      if (mine !== undefined) expect(q.out).toContain(mine.replace(/ \(only secret objects are supported\)$/, ''));
    });
  }
});

describe('option strings', () => {
  it('splits QemuOpts with ",," escapes and bare flags', () => {
    expect(splitOptionString('a=1,,2,b,c=')).toEqual([
      ['a', '1,2'],
      ['b', undefined],
      ['c', ''],
    ]);
    expect([...parseOptionString('lazy_refcounts,x=1')]).toEqual([
      ['lazy_refcounts', 'on'],
      ['x', '1'],
    ]);
    expect(() => parseSecretObject('secret,id=a,data=b,c')).toThrow("Expected '=' after parameter 'c'");
  });

  it('parses --image-opts', () => {
    const o = parseImageOpts('driver=qcow2,file.filename=/a,,b.qcow2,encrypt.key-secret=sec0,encrypt.format=luks');
    expect([o.driver, o.filename, o.keySecret, o.encryptFormat]).toEqual(['qcow2', '/a,b.qcow2', 'sec0', 'luks']);
    expect(() => checkEncryptFormat('luks', 'aes')).toThrow("Header reported 'luks' encryption format but options specify 'aes'");
    expect(() => checkEncryptFormat(undefined, 'luks')).toThrow(/No encryption in image header/);
    expect(() => checkEncryptFormat('aes', 'aes')).not.toThrow();
  });

  it('parses -o encrypt.* create options', () => {
    const o = parseEncryptCreateOptions(
      parseOptionString('encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha1,encrypt.iter-time=10'),
    );
    expect(o).toEqual({
      format: 'luks',
      keySecret: 's',
      luks: { cipherAlg: 'aes-128', cipherMode: 'cbc', ivgenAlg: 'essiv', hashAlg: 'sha1', iterTimeMs: 10 },
    });
    expect(parseEncryptCreateOptions(parseOptionString('encryption=on,encrypt.key-secret=s')).format).toBe('aes');
    expect(parseEncryptCreateOptions(new Map()).format).toBeUndefined();
  });

  // Each of these fails qemu-img create before any PBKDF2 work, so they are quick to compare.
  const BAD = [
    'encrypt.format=luks',
    'encrypt.key-secret=s',
    'encrypt.format=aes,encrypt.key-secret=s,encrypt.cipher-alg=aes-128',
    'encrypt.format=foo,encrypt.key-secret=s',
    'encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=abc',
    'encryption=on,encrypt.format=luks,encrypt.key-secret=s',
  ];
  for (const opts of BAD) {
    it(`-o ${opts} is refused as qemu-img refuses it`, () => {
      const file = path.join(dir, 'bad.qcow2');
      const q = run('qemu-img', ['create', '-q', '-f', 'qcow2', '--object', 'secret,id=s,data=x', '-o', opts, file, '1M']);
      expect(q.rc).not.toBe(0);
      let mine = '';
      try {
        parseEncryptCreateOptions(parseOptionString(opts));
      } catch (e) {
        mine = (e as Error).message;
      }
      expect(mine).not.toBe('');
      expect(q.out).toContain(mine);
    });
  }
});
