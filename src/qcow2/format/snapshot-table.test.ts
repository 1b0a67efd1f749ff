/**
 * Snapshot table codec: QEMU's own table decoded and re-encoded byte for
 * byte, fields at their spec offsets, short and long extra data (unknown
 * extra bytes preserved), and entries running past the table.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidImageError } from '../errors.js';
import { decodeSnapshotTable, encodeSnapshotTable, snapshotEntrySize, snapshotTableSize, type SnapshotEntry } from './snapshot-table.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-snaptable-test-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** One entry laid out from qcow2.txt's table, independently of the codec. */
function specEntry(o: {
  l1Offset: bigint;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClock: bigint;
  vmState32: number;
  extra: Uint8Array;
}): Uint8Array {
  const id = new TextEncoder().encode(o.id);
  const name = new TextEncoder().encode(o.name);
  const len = Math.ceil((40 + o.extra.length + id.length + name.length) / 8) * 8;
  const b = new Uint8Array(len);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, o.l1Offset);
  v.setUint32(8, o.l1Size);
  v.setUint16(12, id.length);
  v.setUint16(14, name.length);
  v.setUint32(16, o.dateSec);
  v.setUint32(20, o.dateNsec);
  v.setBigUint64(24, o.vmClock);
  v.setUint32(32, o.vmState32);
  v.setUint32(36, o.extra.length);
  b.set(o.extra, 40);
  b.set(id, 40 + o.extra.length);
  b.set(name, 40 + o.extra.length + id.length);
  return b;
}

function extra(vmStateLarge: bigint, diskSize: bigint, icount: bigint, more: number[] = []): Uint8Array {
  const b = new Uint8Array(24 + more.length);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, vmStateLarge);
  v.setBigUint64(8, diskSize);
  v.setBigUint64(16, icount);
  b.set(more, 24);
  return b;
}

describe('snapshot table written by qemu-img snapshot -c', () => {
  it('decodes names, ids, L1 and disk size; re-encoding gives QEMU\'s bytes', () => {
    const file = path.join(dir, 's.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, '3M']);
    execFileSync('qemu-io', ['-c', 'write -P 7 0 64k', file], { stdio: 'ignore' });
    execFileSync('qemu-img', ['snapshot', '-c', 's1', file]);
    execFileSync('qemu-img', ['snapshot', '-c', 'second snap ✓', file]);
    const img = new Uint8Array(fs.readFileSync(file));
    const v = new DataView(img.buffer);
    const nb = v.getUint32(60);
    const off = Number(v.getBigUint64(64));
    expect(nb).toBe(2);
    const table = img.subarray(off, off + 65536);
    const entries = decodeSnapshotTable(table, nb);
    expect(entries.map((e) => [e.id, e.name])).toEqual([
      ['1', 's1'],
      ['2', 'second snap ✓'],
    ]);
    for (const e of entries) {
      expect(e.l1Size).toBe(1);
      expect(e.l1TableOffset % 65536).toBe(0);
      expect(e.diskSize).toBe(3 * 1024 * 1024);
      expect(e.vmStateSize).toBe(0);
      expect(e.vmStateSizeLarge).toBe(0);
      expect(e.extraUnknown.length).toBe(0);
      expect(e.dateSec).toBeGreaterThan(1_600_000_000);
    }
    const size = snapshotTableSize(entries);
    expect(encodeSnapshotTable(entries)).toEqual(table.subarray(0, size));
    // The padding to 8 bytes: 40 + 24 + 1 + 2 -> 72.
    expect(snapshotEntrySize(entries[0])).toBe(72);
  });
});

describe('spec layout', () => {
  it('every field at its offset, 24 bytes of extra data, padding to 8', () => {
    const bytes = specEntry({
      l1Offset: 0x0000_0123_4567_0000n,
      l1Size: 0x0102_0304,
      id: '17',
      name: 'abc',
      dateSec: 0xfedc_ba98,
      dateNsec: 999_999_999,
      vmClock: 0x0011_2233_4455_6677n,
      vmState32: 0x1234,
      extra: extra(0x1234n, 0x0000_0100_0000_0000n, 0xffff_ffff_ffff_ffffn),
    });
    const [e] = decodeSnapshotTable(bytes, 1);
    expect(e).toEqual<SnapshotEntry>({
      l1TableOffset: 0x123_4567_0000,
      l1Size: 0x0102_0304,
      id: '17',
      name: 'abc',
      dateSec: 0xfedc_ba98,
      dateNsec: 999_999_999,
      vmClockNsec: 0x0011_2233_4455_6677,
      vmStateSize: 0x1234,
      vmStateSizeLarge: 0x1234,
      diskSize: 2 ** 40,
      icount: 0xffff_ffff_ffff_ffffn,
      extraUnknown: new Uint8Array(0),
    });
    expect(encodeSnapshotTable([e])).toEqual(bytes);
  });

  it('unknown extra bytes after the 24 known ones are kept and re-encoded in place', () => {
    const more = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const bytes = specEntry({
      l1Offset: 0x50000n,
      l1Size: 2,
      id: '3',
      name: 'with-extra',
      dateSec: 1,
      dateNsec: 2,
      vmClock: 3n,
      vmState32: 0,
      extra: extra(0n, 1048576n, 42n, more),
    });
    const [e] = decodeSnapshotTable(bytes, 1);
    expect(Array.from(e.extraUnknown)).toEqual(more);
    expect(e.icount).toBe(42n);
    expect(e.name).toBe('with-extra');
    expect(encodeSnapshotTable([e])).toEqual(bytes);
  });

  it('short extra data (0, 8, 16 bytes): missing fields are absent and rewritten as 24 bytes', () => {
    for (const n of [0, 8, 16]) {
      const ex = extra(0x77n, 0x2000_0000n, 5n).subarray(0, n);
      const bytes = specEntry({ l1Offset: 0x50000n, l1Size: 1, id: '1', name: 'old', dateSec: 9, dateNsec: 8, vmClock: 7n, vmState32: 0x77, extra: ex });
      const [e] = decodeSnapshotTable(bytes, 1);
      expect(e.vmStateSizeLarge).toBe(n >= 8 ? 0x77 : undefined);
      expect(e.diskSize).toBe(n >= 16 ? 0x2000_0000 : undefined);
      expect(e.icount).toBeUndefined();
      const out = encodeSnapshotTable([e]);
      const v = new DataView(out.buffer);
      expect(v.getUint32(36)).toBe(24);
      expect(v.getBigUint64(40)).toBe(0x77n);
      // An absent icount is written as -1 ("not recorded").
      expect(v.getBigUint64(56)).toBe(0xffff_ffff_ffff_ffffn);
      const [again] = decodeSnapshotTable(out, 1);
      expect([again.id, again.name, again.dateSec, again.dateNsec, again.vmClockNsec]).toEqual(['1', 'old', 9, 8, 7]);
    }
  });

  it('a large VM state goes to the 64-bit field with 0 in the 32-bit one', () => {
    const e: SnapshotEntry = {
      l1TableOffset: 0x50000, l1Size: 1, id: '1', name: 'big', dateSec: 0, dateNsec: 0, vmClockNsec: 0,
      vmStateSize: 0, vmStateSizeLarge: 2 ** 33, diskSize: 512, icount: -1n & 0xffff_ffff_ffff_ffffn, extraUnknown: new Uint8Array(0),
    };
    const out = encodeSnapshotTable([e]);
    const v = new DataView(out.buffer);
    expect(v.getUint32(32)).toBe(0);
    expect(v.getBigUint64(40)).toBe(2n ** 33n);
  });

  it('several entries follow each other at 8-byte aligned positions', () => {
    const parts = ['a', 'bb', 'ccccccc', 'ddddddddd'].map((name, i) =>
      specEntry({ l1Offset: BigInt(0x10000 * (i + 5)), l1Size: i + 1, id: String(i + 1), name, dateSec: i, dateNsec: i, vmClock: BigInt(i), vmState32: 0, extra: extra(0n, 512n, 0n) }),
    );
    const table = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let pos = 0;
    for (const p of parts) {
      table.set(p, pos);
      pos += p.length;
    }
    const entries = decodeSnapshotTable(table, 4);
    expect(entries.map((e) => e.name)).toEqual(['a', 'bb', 'ccccccc', 'ddddddddd']);
    expect(entries.map((e) => e.l1TableOffset)).toEqual([0x50000, 0x60000, 0x70000, 0x80000]);
    expect(encodeSnapshotTable(entries)).toEqual(table);
  });
});

describe('malformed tables', () => {
  const one = () =>
    specEntry({ l1Offset: 0x50000n, l1Size: 1, id: '1', name: 'x', dateSec: 0, dateNsec: 0, vmClock: 0n, vmState32: 0, extra: extra(0n, 512n, 0n) });
  it('header, extra data or name past the end of the table', () => {
    expect(() => decodeSnapshotTable(one().subarray(0, 39), 1)).toThrow(InvalidImageError);
    expect(() => decodeSnapshotTable(one().subarray(0, 65), 1)).toThrow(InvalidImageError);
    expect(() => decodeSnapshotTable(one(), 2)).toThrow(InvalidImageError);
    const b = one();
    new DataView(b.buffer).setUint16(14, 1000);
    expect(() => decodeSnapshotTable(b, 1)).toThrow(InvalidImageError);
  });
  it('extra data above QEMU\'s 1024-byte limit', () => {
    const b = new Uint8Array(2048);
    b.set(one());
    new DataView(b.buffer).setUint32(36, 1032);
    expect(() => decodeSnapshotTable(b, 1)).toThrow(InvalidImageError);
    new DataView(b.buffer).setUint32(36, 1024);
    expect(() => decodeSnapshotTable(b, 1)).not.toThrow();
  });
});
