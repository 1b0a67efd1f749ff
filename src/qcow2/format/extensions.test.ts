/**
 * Header extensions: QEMU's own extension area decoded and re-encoded byte for
 * byte, unknown extensions preserved exactly, the feature name table's 48-byte
 * entries, and the refusals for lists that run past the first cluster.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidImageError } from '../errors.js';
import {
  decodeExtensions,
  decodeFeatureNames,
  defaultFeatureNames,
  encodeExtensions,
  encodeFeatureNames,
  type HeaderExtensions,
} from './extensions.js';
import { decodeHeader } from './header.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-ext-test-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function qemuImage(name: string, args: string[], size = '1M'): Uint8Array {
  const file = path.join(dir, name);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', ...args, file, size], { cwd: dir });
  return new Uint8Array(fs.readFileSync(file));
}

/** One extension record as the spec lays it out: type, length, data padded to 8. */
function record(type: number, data: number[]): number[] {
  const out = [type >>> 24, (type >>> 16) & 255, (type >>> 8) & 255, type & 255, 0, 0, 0, 0];
  out[4] = data.length >>> 24;
  out[5] = (data.length >>> 16) & 255;
  out[6] = (data.length >>> 8) & 255;
  out[7] = data.length & 255;
  out.push(...data);
  while (out.length % 8) out.push(0);
  return out;
}

function endOfList(bytes: Uint8Array, start: number): number {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let p = start;
  while (v.getUint32(p) !== 0) p += 8 + Math.ceil(v.getUint32(p + 4) / 8) * 8;
  return p + 8;
}

describe('extensions written by qemu-img', () => {
  it('v3 image: the feature name table is QEMU 7.2\'s, and re-encoding gives the same bytes', () => {
    const file = qemuImage('plain.qcow2', []);
    const h = decodeHeader(file);
    const ext = decodeExtensions(file.subarray(0, 65536), h.headerLength);
    expect(ext.featureNames).toEqual(defaultFeatureNames());
    expect(ext.unknown).toEqual([]);
    expect(ext.backingFormat).toBeUndefined();
    const end = endOfList(file, h.headerLength);
    expect(encodeExtensions(ext)).toEqual(file.subarray(h.headerLength, end));
  });

  it('backing format extension before the feature table, as QEMU orders them', () => {
    fs.writeFileSync(path.join(dir, 'base.raw'), new Uint8Array(4096));
    const file = qemuImage('overlay.qcow2', ['-b', 'base.raw', '-F', 'raw']);
    const h = decodeHeader(file);
    const ext = decodeExtensions(file.subarray(0, h.backingFileOffset), h.headerLength);
    expect(ext.backingFormat).toBe('raw');
    const end = endOfList(file, h.headerLength);
    expect(encodeExtensions(ext)).toEqual(file.subarray(h.headerLength, end));
  });

  it('v2 image with a backing format: extensions start right after the 72-byte header', () => {
    fs.writeFileSync(path.join(dir, 'base2.raw'), new Uint8Array(4096));
    const file = qemuImage('overlay2.qcow2', ['-o', 'compat=0.10', '-b', 'base2.raw', '-F', 'raw']);
    const h = decodeHeader(file);
    expect(h.headerLength).toBe(72);
    const ext = decodeExtensions(file.subarray(0, h.backingFileOffset), 72);
    expect(ext.backingFormat).toBe('raw');
    expect(ext.featureNames).toBeUndefined();
    expect(encodeExtensions(ext)).toEqual(file.subarray(72, endOfList(file, 72)));
  });
});

describe('unknown extensions are kept byte for byte', () => {
  it('odd lengths, zero length, arbitrary bytes, order kept among unknown ones', () => {
    const body = [
      ...record(0x12345678, [1, 2, 3, 4, 5]),
      ...record(0xe2792aca, [...new TextEncoder().encode('qcow2')]),
      ...record(0xdeadbeef, []),
      ...record(0x00000001, Array.from({ length: 17 }, (_, i) => 255 - i)),
      0, 0, 0, 0, 0, 0, 0, 0,
    ];
    const buf = new Uint8Array(512);
    buf.set(body, 112);
    const ext = decodeExtensions(buf, 112);
    expect(ext.backingFormat).toBe('qcow2');
    expect(ext.unknown.map((u) => u.type)).toEqual([0x12345678, 0xdeadbeef, 0x00000001]);
    expect(Array.from(ext.unknown[0].data)).toEqual([1, 2, 3, 4, 5]);
    expect(ext.unknown[1].data.length).toBe(0);
    expect(Array.from(ext.unknown[2].data)).toEqual(Array.from({ length: 17 }, (_, i) => 255 - i));
    // Known extensions go first on rewrite; each unknown record is identical to its input record.
    const out = encodeExtensions(ext);
    const expected = [
      ...record(0xe2792aca, [...new TextEncoder().encode('qcow2')]),
      ...record(0x12345678, [1, 2, 3, 4, 5]),
      ...record(0xdeadbeef, []),
      ...record(0x00000001, Array.from({ length: 17 }, (_, i) => 255 - i)),
      0, 0, 0, 0, 0, 0, 0, 0,
    ];
    expect(Array.from(out)).toEqual(expected);
  });

  it('an unknown type repeated is kept twice (only known types must be unique)', () => {
    const buf = new Uint8Array(256);
    buf.set([...record(0x0badf00d, [9]), ...record(0x0badf00d, [8]), 0, 0, 0, 0, 0, 0, 0, 0]);
    const ext = decodeExtensions(buf, 0);
    expect(ext.unknown.map((u) => Array.from(u.data))).toEqual([[9], [8]]);
  });

  it('qemu-img keeps our unknown extension through its own header rewrite, and we read it back', () => {
    const file = qemuImage('unk.qcow2', []);
    const h = decodeHeader(file);
    const ext = decodeExtensions(file.subarray(0, 65536), h.headerLength);
    ext.unknown.push({ type: 0x7a7a7a7a, data: new Uint8Array([0xca, 0xfe, 0xba]) });
    const out = file.slice();
    out.fill(0, h.headerLength, 4096);
    out.set(encodeExtensions(ext), h.headerLength);
    const p = path.join(dir, 'unk2.qcow2');
    fs.writeFileSync(p, out);
    // Resize rewrites the header (qcow2_update_header).
    execFileSync('qemu-img', ['resize', '-q', p, '2M']);
    const after = new Uint8Array(fs.readFileSync(p));
    const ext2 = decodeExtensions(after.subarray(0, 65536), decodeHeader(after).headerLength);
    expect(ext2.unknown).toEqual([{ type: 0x7a7a7a7a, data: new Uint8Array([0xca, 0xfe, 0xba]) }]);
  });
});

describe('known extensions round trip', () => {
  it('bitmaps, crypto header, data file, feature names with a high bit and a 46-byte name', () => {
    const ext: HeaderExtensions = {
      backingFormat: 'raw',
      dataFile: 'data.img',
      cryptoHeader: { offset: 0x10_0000_0000, length: 0x1234 },
      featureNames: [
        { type: 0, bit: 63, name: 'x'.repeat(46) },
        { type: 2, bit: 1, name: 'raw external data' },
      ],
      bitmaps: { nbBitmaps: 3, reserved: 0, bitmapDirectorySize: 0x1_0000_0040, bitmapDirectoryOffset: 0x7f_ffff_0000 },
      unknown: [],
    };
    const enc = encodeExtensions(ext);
    const buf = new Uint8Array(enc.length + 8);
    buf.set(enc);
    expect(decodeExtensions(buf, 0)).toEqual(ext);
    // Spot-check positions inside the records against the spec layouts.
    const v = new DataView(enc.buffer, enc.byteOffset);
    let p = 0;
    const seen: Record<number, number> = {};
    while (v.getUint32(p) !== 0) {
      seen[v.getUint32(p)] = p + 8;
      p += 8 + Math.ceil(v.getUint32(p + 4) / 8) * 8;
    }
    const bm = seen[0x23852875];
    expect(v.getUint32(bm)).toBe(3);
    expect(v.getBigUint64(bm + 8)).toBe(0x1_0000_0040n);
    expect(v.getBigUint64(bm + 16)).toBe(0x7f_ffff_0000n);
    const cr = seen[0x0537be77];
    expect(v.getBigUint64(cr)).toBe(0x10_0000_0000n);
    expect(v.getBigUint64(cr + 8)).toBe(0x1234n);
    expect(new TextDecoder().decode(enc.subarray(seen[0x44415441], seen[0x44415441] + 8))).toBe('data.img');
  });

  it('feature name entries: type byte, bit byte, 46 name bytes NUL padded', () => {
    const enc = encodeFeatureNames([
      { type: 1, bit: 0, name: 'lazy refcounts' },
      { type: 0, bit: 4, name: 'y'.repeat(60) },
    ]);
    expect(enc.length).toBe(96);
    expect(enc[0]).toBe(1);
    expect(enc[1]).toBe(0);
    expect(new TextDecoder().decode(enc.subarray(2, 16))).toBe('lazy refcounts');
    expect(Array.from(enc.subarray(16, 48)).every((b) => b === 0)).toBe(true);
    expect(enc[48]).toBe(0);
    expect(enc[49]).toBe(4);
    // Over-long names are cut to the 46 bytes the entry holds.
    expect(decodeFeatureNames(enc)[1].name).toBe('y'.repeat(46));
    // A trailing partial entry is ignored.
    expect(decodeFeatureNames(new Uint8Array([...enc, 2, 7, 65]))).toHaveLength(2);
  });
});

describe('malformed extension lists', () => {
  it('no end marker: the list ends with the area, as QEMU reads it (qemu-img info accepts such an image)', () => {
    const buf = new Uint8Array(record(0x12345678, [1, 2, 3]));
    expect(decodeExtensions(buf, 0).unknown).toEqual([{ type: 0x12345678, data: new Uint8Array([1, 2, 3]) }]);
    // The same shape in a real image: an unknown extension running exactly to the end of cluster 0.
    const file = qemuImage('noend.qcow2', ['-o', 'cluster_size=4096']);
    const h = decodeHeader(file);
    const end = endOfList(file, h.headerLength) - 8;
    const v = new DataView(file.buffer);
    v.setUint32(end, 0x11223344);
    v.setUint32(end + 4, 4096 - end - 8);
    const f = path.join(dir, 'noend2.qcow2');
    fs.writeFileSync(f, file);
    execFileSync('qemu-img', ['info', f], { stdio: 'ignore' });
    const ext = decodeExtensions(file.subarray(0, 4096), h.headerLength);
    expect(ext.unknown.map((u) => [u.type, u.data.length])).toEqual([[0x11223344, 4096 - end - 8]]);
  });
  it('length running past the area', () => {
    const buf = new Uint8Array(64);
    buf.set(record(0x12345678, [1]));
    new DataView(buf.buffer).setUint32(4, 1000);
    expect(() => decodeExtensions(buf, 0)).toThrow(InvalidImageError);
  });
  it('a known extension twice: the later one wins, as in QEMU (qemu-img info accepts it)', () => {
    const buf = new Uint8Array(128);
    buf.set([...record(0xe2792aca, [114, 97, 119]), ...record(0xe2792aca, [...new TextEncoder().encode('qcow2')])]);
    expect(decodeExtensions(buf, 0).backingFormat).toBe('qcow2');
    const file = qemuImage('twice.qcow2', ['-o', 'cluster_size=4096']);
    const h = decodeHeader(file);
    const list = file.slice(h.headerLength, endOfList(file, h.headerLength));
    const twice = [...record(0xe2792aca, [114, 97, 119]), ...record(0xe2792aca, [...new TextEncoder().encode('qcow2')])];
    file.set(twice, h.headerLength);
    file.set(list, h.headerLength + twice.length);
    const f = path.join(dir, 'twice2.qcow2');
    fs.writeFileSync(f, file);
    execFileSync('qemu-img', ['info', f], { stdio: 'ignore' });
    expect(decodeExtensions(file.subarray(0, 4096), h.headerLength).backingFormat).toBe('qcow2');
  });
  it('bitmaps and crypto extensions shorter than their structures', () => {
    const a = new Uint8Array(64);
    a.set(record(0x23852875, new Array(16).fill(0)));
    expect(() => decodeExtensions(a, 0)).toThrow(InvalidImageError);
    const b = new Uint8Array(64);
    b.set(record(0x0537be77, new Array(8).fill(0)));
    expect(() => decodeExtensions(b, 0)).toThrow(InvalidImageError);
  });
});
