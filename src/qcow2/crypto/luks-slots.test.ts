/**
 * LUKS key slot management against qemu-img amend 7.2: slots QEMU adds open
 * here, slots added here open in qemu-io, erasing leaves what QEMU's erase
 * leaves, and every refusal carries qemu-img amend's message.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeExtensions } from '../format/extensions.js';
import { decodeHeader } from '../format/header.js';
import { readLuksHeader, unlockLuks } from './luks.js';
import { LUKS_KEY_SLOT_DISABLED, LUKS_KEY_SLOT_ENABLED } from './luks-header.js';
import { addKeySlot, eraseKeySlots, type AreaChange } from './luks-slots.js';
import { parseEncryptAmendOptions, parseOptionString } from './secrets.js';
import { runSync } from '../../../tests/support/run-sync.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-luks-slots-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const base = path.join(dir, 'base.qcow2');
const OBJECTS = ['secret,id=s0,data=first', 'secret,id=s1,data=second', 'secret,id=s2,data=third'];

const run = (tool: string, args: string[]) => runSync(tool, args);
const objs = () => OBJECTS.flatMap((o) => ['--object', o]);
const opts = (f: string, key = 's0') => `driver=qcow2,file.filename=${f},encrypt.key-secret=${key}`;

function amend(file: string, o: string, key = 's0'): { rc: number; out: string } {
  return run('qemu-img', ['amend', ...objs(), '--image-opts', opts(file, key), '-o', o]);
}
function opens(file: string, key: string): boolean {
  return run('qemu-io', ['-r', ...objs(), '--image-opts', opts(file, key), '-c', 'read 0 512']).rc === 0;
}

beforeAll(() => {
  const r = run('qemu-img', ['create', '-q', '-f', 'qcow2', ...objs(), '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', base, '1M']);
  if (r.rc !== 0) throw new Error(r.out);
});

/** The LUKS area of a file, and a writer for changed ranges of it. */
function area(file: string) {
  const buf = new Uint8Array(fs.readFileSync(file));
  const h = decodeHeader(buf);
  const ext = decodeExtensions(buf.subarray(0, 2 ** h.clusterBits), h.headerLength).cryptoHeader!;
  const bytes = buf.slice(ext.offset, ext.offset + ext.length);
  const read = (o: number, l: number) => bytes.slice(o, o + l);
  return {
    bytes,
    read,
    ...readLuksHeader(read, bytes.length),
    save(changes: AreaChange[]) {
      for (const c of changes) buf.set(bytes.subarray(c.offset, c.offset + c.length), ext.offset + c.offset);
      fs.writeFileSync(file, buf);
    },
  };
}

describe('key slots', () => {
  it('a slot qemu-img amend adds opens here, to the same master key', () => {
    const file = path.join(dir, 'qemu-added.qcow2');
    fs.copyFileSync(base, file);
    const r = amend(file, 'encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=10');
    expect(r.rc, r.out).toBe(0);
    const a = area(file);
    const first = unlockLuks(a.read, a.bytes.length, 'first');
    const second = unlockLuks(a.read, a.bytes.length, 'second');
    expect([first.slot, second.slot]).toEqual([0, 1]);
    expect(second.masterKey).toEqual(first.masterKey);
  });

  it('a slot added here opens in qemu-io; erasing slot 0 here locks its passphrase out as QEMU erase does', () => {
    const file = path.join(dir, 'ours.qcow2');
    fs.copyFileSync(base, file);
    let a = area(file);
    const mk = unlockLuks(a.read, a.bytes.length, 'first').masterKey;
    const added = addKeySlot(a.bytes, a.header, a.spec, mk, 'third', { iterations: 1000 });
    expect(added.slot).toBe(1);
    a.save(added.changes);
    expect(opens(file, 's2')).toBe(true);
    expect(opens(file, 's0')).toBe(true);
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', file]).out)['format-specific'].data.encrypt;
    expect(info.slots[1]).toEqual({ active: true, iters: 1000, 'key-offset': 262144, stripes: 4000 });

    a = area(file);
    const oldMaterial = a.bytes.slice(4096, 4096 + 256000);
    const erased = eraseKeySlots(a.bytes, a.header, { slot: 0 });
    expect(erased.slots).toEqual([0]);
    a.save(erased.changes);
    expect(opens(file, 's0')).toBe(false);
    expect(opens(file, 's2')).toBe(true);
    // What QEMU's erase leaves: disabled, zero salt and iterations, key material overwritten.
    const after = area(file);
    const s0 = after.header.slots[0]!;
    expect([s0.active, s0.iterations, s0.salt.every((b) => b === 0)]).toEqual([LUKS_KEY_SLOT_DISABLED, 0, true]);
    expect(Buffer.from(after.bytes.subarray(4096, 4096 + 256000)).equals(Buffer.from(oldMaterial))).toBe(false);
    const q = path.join(dir, 'qemu-erased.qcow2');
    fs.copyFileSync(file, q);
    expect(amend(q, 'encrypt.state=active,encrypt.new-secret=s0,encrypt.keyslot=0,encrypt.iter-time=10', 's2').rc).toBe(0);
    expect(amend(q, 'encrypt.state=inactive,encrypt.keyslot=0', 's2').rc).toBe(0);
    const qs0 = area(q).header.slots[0]!;
    expect({ ...qs0, salt: [...qs0.salt] }).toEqual({ ...s0, salt: [...s0.salt] });
    // Erasing by old passphrase finds the slot it opens.
    const b = area(q);
    const addBack = addKeySlot(b.bytes, b.header, b.spec, unlockLuks(b.read, b.bytes.length, 'third').masterKey, 'first', { iterations: 1000 });
    expect(eraseKeySlots(b.bytes, b.header, { oldPassphrase: 'first' }).slots).toEqual([addBack.slot]);
    expect(b.header.slots.map((s) => s.active === LUKS_KEY_SLOT_ENABLED)).toEqual([false, true, false, false, false, false, false, false]);
  });

  // [amend -o, key-secret of the image, the call here]
  const REFUSALS: [string, string, (a: ReturnType<typeof area>, mk: Uint8Array) => unknown][] = [
    ['encrypt.state=inactive,encrypt.keyslot=0', 's0', (a) => eraseKeySlots(a.bytes, a.header, { slot: 0 })],
    ['encrypt.state=inactive,encrypt.old-secret=s0', 's0', (a) => eraseKeySlots(a.bytes, a.header, { oldPassphrase: 'first' })],
    ['encrypt.state=inactive,encrypt.keyslot=3', 's0', (a) => eraseKeySlots(a.bytes, a.header, { slot: 3 })],
    ['encrypt.state=inactive,encrypt.old-secret=s1', 's0', (a) => eraseKeySlots(a.bytes, a.header, { oldPassphrase: 'second' })],
    ['encrypt.state=inactive,encrypt.keyslot=0,encrypt.old-secret=s1', 's0', (a) => eraseKeySlots(a.bytes, a.header, { slot: 0, oldPassphrase: 'second' })],
    ['encrypt.state=inactive', 's0', (a) => eraseKeySlots(a.bytes, a.header, {})],
    ['encrypt.state=inactive,encrypt.keyslot=9', 's0', (a) => eraseKeySlots(a.bytes, a.header, { slot: 9 })],
    ['encrypt.state=active,encrypt.new-secret=s1,encrypt.keyslot=0', 's0', (a, mk) => addKeySlot(a.bytes, a.header, a.spec, mk, 'x', { slot: 0, iterations: 1000 })],
  ];
  for (const [o, key, ours] of REFUSALS) {
    it(`refuses -o ${o} as qemu-img amend does`, () => {
      const file = path.join(dir, 'refuse.qcow2');
      fs.copyFileSync(base, file);
      const q = amend(file, o, key);
      expect(q.rc).not.toBe(0);
      expect(fs.readFileSync(file).equals(fs.readFileSync(base))).toBe(true);
      const a = area(file);
      const mk = unlockLuks(a.read, a.bytes.length, 'first').masterKey;
      const before = a.bytes.slice();
      let msg = '';
      try {
        ours(a, mk);
      } catch (e) {
        msg = (e as Error).message;
      }
      expect(msg).not.toBe('');
      expect(q.out).toContain(msg);
      expect(Buffer.from(a.bytes).equals(Buffer.from(before))).toBe(true);
    });
  }

  const BAD_OPTIONS = [
    'encrypt.state=active',
    'encrypt.state=active,encrypt.new-secret=s1,encrypt.old-secret=s0',
    'encrypt.state=inactive,encrypt.new-secret=s1',
    'encrypt.new-secret=s1',
    'encrypt.state=foo',
  ];
  for (const o of BAD_OPTIONS) {
    it(`parses -o ${o} into qemu-img amend's refusal`, () => {
      const file = path.join(dir, 'bad-option.qcow2');
      fs.copyFileSync(base, file);
      const q = amend(file, o);
      expect(q.rc).not.toBe(0);
      expect(() => parseEncryptAmendOptions(parseOptionString(o))).toThrow();
      try {
        parseEncryptAmendOptions(parseOptionString(o));
      } catch (e) {
        expect(q.out).toContain((e as Error).message);
      }
    });
  }
});
