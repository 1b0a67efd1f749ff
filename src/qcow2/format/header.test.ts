/**
 * Header codec: field positions checked against a layout written here from
 * qcow2.txt's byte table (not through the codec), against headers that the
 * real qemu-img writes, and byte-exact round trips.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidImageError, UnsupportedFeatureError } from '../errors.js';
import { decodeHeader, encodeHeader, type Qcow2Header } from './header.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-header-test-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function qemuImage(name: string, opts: string, size: string, extra: string[] = []): Uint8Array {
  const file = path.join(dir, name);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), ...extra, file, size]);
  return new Uint8Array(fs.readFileSync(file));
}

/** Builds a header with DataView at the offsets of qcow2.txt's table, independently of the codec. */
function specHeader(fields: {
  version: number;
  backingFileOffset?: bigint;
  backingFileSize?: number;
  clusterBits: number;
  size: bigint;
  cryptMethod?: number;
  l1Size: number;
  l1TableOffset: bigint;
  refcountTableOffset: bigint;
  refcountTableClusters: number;
  nbSnapshots?: number;
  snapshotsOffset?: bigint;
  incompat?: bigint;
  compat?: bigint;
  autoclear?: bigint;
  refcountOrder?: number;
  headerLength?: number;
  compressionType?: number;
}): Uint8Array {
  const len = fields.version === 2 ? 72 : (fields.headerLength ?? 112);
  const b = new Uint8Array(len);
  const v = new DataView(b.buffer);
  v.setUint32(0, 0x514649fb);
  v.setUint32(4, fields.version);
  v.setBigUint64(8, fields.backingFileOffset ?? 0n);
  v.setUint32(16, fields.backingFileSize ?? 0);
  v.setUint32(20, fields.clusterBits);
  v.setBigUint64(24, fields.size);
  v.setUint32(32, fields.cryptMethod ?? 0);
  v.setUint32(36, fields.l1Size);
  v.setBigUint64(40, fields.l1TableOffset);
  v.setBigUint64(48, fields.refcountTableOffset);
  v.setUint32(56, fields.refcountTableClusters);
  v.setUint32(60, fields.nbSnapshots ?? 0);
  v.setBigUint64(64, fields.snapshotsOffset ?? 0n);
  if (fields.version === 3) {
    v.setBigUint64(72, fields.incompat ?? 0n);
    v.setBigUint64(80, fields.compat ?? 0n);
    v.setBigUint64(88, fields.autoclear ?? 0n);
    v.setUint32(96, fields.refcountOrder ?? 4);
    v.setUint32(100, len);
    if (len > 104) b[104] = fields.compressionType ?? 0;
  }
  return b;
}

describe('decodeHeader reads every field from its spec position', () => {
  it('v3 header with distinct values in every field, including values above 2^32', () => {
    const bytes = specHeader({
      version: 3,
      backingFileOffset: 0x1f0n,
      backingFileSize: 0x33,
      clusterBits: 17,
      size: 0x0001_2345_6789_ae00n,
      cryptMethod: 0,
      l1Size: 0x0102_0304,
      l1TableOffset: 0x0000_00ab_cdef_0000n,
      refcountTableOffset: 0x0000_0012_3456_0000n,
      refcountTableClusters: 0x0a0b_0c0d,
      nbSnapshots: 0x0000_7071,
      snapshotsOffset: 0x0000_0765_4321_0000n,
      incompat: 0x8000_0000_0000_0011n,
      compat: 0x4000_0000_0000_0001n,
      autoclear: 0x2000_0000_0000_0002n,
      refcountOrder: 6,
      compressionType: 1,
    });
    const h = decodeHeader(bytes);
    expect(h).toEqual<Qcow2Header>({
      version: 3,
      backingFileOffset: 0x1f0,
      backingFileSize: 0x33,
      clusterBits: 17,
      size: 0x0001_2345_6789_ae00,
      cryptMethod: 0,
      l1Size: 0x0102_0304,
      l1TableOffset: 0xab_cdef_0000,
      refcountTableOffset: 0x12_3456_0000,
      refcountTableClusters: 0x0a0b_0c0d,
      nbSnapshots: 0x7071,
      snapshotsOffset: 0x765_4321_0000,
      incompatibleFeatures: 0x8000_0000_0000_0011n,
      compatibleFeatures: 0x4000_0000_0000_0001n,
      autoclearFeatures: 0x2000_0000_0000_0002n,
      refcountOrder: 6,
      headerLength: 112,
      compressionType: 1,
      extraHeaderBytes: new Uint8Array(7),
    });
  });

  it('v2 header: v3-only fields take their implied values and bytes past 72 are not read', () => {
    const bytes = new Uint8Array(512);
    bytes.set(
      specHeader({ version: 2, clusterBits: 12, size: 3n << 20n, l1Size: 1, l1TableOffset: 0x3000n, refcountTableOffset: 0x1000n, refcountTableClusters: 1 }),
    );
    // Garbage where a v3 header would have its feature fields: a v2 reader must ignore it.
    bytes.fill(0xff, 72, 112);
    const h = decodeHeader(bytes);
    expect(h.version).toBe(2);
    expect(h.incompatibleFeatures).toBe(0n);
    expect(h.compatibleFeatures).toBe(0n);
    expect(h.autoclearFeatures).toBe(0n);
    expect(h.refcountOrder).toBe(4);
    expect(h.headerLength).toBe(72);
    expect(h.compressionType).toBe(0);
    expect(h.extraHeaderBytes.length).toBe(0);
  });

  it('v3 header of 104 bytes has no compression type byte: zlib is implied', () => {
    const bytes = new Uint8Array(256);
    bytes.set(specHeader({ version: 3, headerLength: 104, clusterBits: 16, size: 1n << 20n, l1Size: 1, l1TableOffset: 0x30000n, refcountTableOffset: 0x10000n, refcountTableClusters: 1 }));
    bytes[104] = 1; // an extension's first byte, not a compression type
    const h = decodeHeader(bytes);
    expect(h.headerLength).toBe(104);
    expect(h.compressionType).toBe(0);
    expect(h.extraHeaderBytes.length).toBe(0);
  });

  it('v3 header longer than QEMU writes keeps the extra bytes', () => {
    const bytes = specHeader({ version: 3, headerLength: 128, clusterBits: 16, size: 1n << 20n, l1Size: 1, l1TableOffset: 0x30000n, refcountTableOffset: 0x10000n, refcountTableClusters: 1 });
    for (let i = 105; i < 128; i++) bytes[i] = i;
    const h = decodeHeader(bytes);
    expect(h.headerLength).toBe(128);
    expect(Array.from(h.extraHeaderBytes)).toEqual(Array.from({ length: 23 }, (_, i) => 105 + i));
    // Round trip is byte exact, extra bytes included.
    expect(encodeHeader(h)).toEqual(bytes);
  });
});

describe('decodeHeader refuses what it cannot read', () => {
  const good = () => specHeader({ version: 3, clusterBits: 16, size: 1n << 20n, l1Size: 1, l1TableOffset: 0x30000n, refcountTableOffset: 0x10000n, refcountTableClusters: 1 });
  it('bad magic', () => {
    const b = good();
    b[3] = 0xfa;
    expect(() => decodeHeader(b)).toThrow(InvalidImageError);
  });
  it('versions other than 2 and 3 are unsupported, not invalid', () => {
    for (const version of [0, 1, 4, 0xffffffff]) {
      const b = good();
      new DataView(b.buffer).setUint32(4, version);
      expect(() => decodeHeader(b)).toThrow(UnsupportedFeatureError);
    }
  });
  it('header length below 104 or past the buffer', () => {
    for (const len of [0, 72, 100, 103]) {
      const b = new Uint8Array(256);
      b.set(good());
      new DataView(b.buffer).setUint32(100, len);
      expect(() => decodeHeader(b), `length ${len}`).toThrow(InvalidImageError);
    }
    const b = good();
    new DataView(b.buffer).setUint32(100, 120);
    expect(() => decodeHeader(b)).toThrow(InvalidImageError);
  });
  it('a header length that is not a multiple of 8 is read as QEMU reads it (qemu-img accepts it)', () => {
    const b = new Uint8Array(256);
    b.set(good());
    new DataView(b.buffer).setUint32(100, 116);
    for (let i = 105; i < 116; i++) b[i] = i;
    const h = decodeHeader(b);
    expect(h.headerLength).toBe(116);
    expect(Array.from(h.extraHeaderBytes)).toEqual(Array.from({ length: 11 }, (_, i) => 105 + i));
    // qemu-img opens an image of that shape (its extension list then starts at byte 116).
    const file = qemuImage('len116.qcow2', 'cluster_size=4096', '1M');
    const img = file.slice();
    img.fill(0, 112, 116);
    img.set(file.subarray(112, 4092), 116);
    new DataView(img.buffer).setUint32(100, 116);
    const p = path.join(dir, 'len116b.qcow2');
    fs.writeFileSync(p, img);
    execFileSync('qemu-img', ['check', '-q', p]);
    expect(decodeHeader(img).headerLength).toBe(116);
  });
  it('buffers too short for v2 or v3', () => {
    expect(() => decodeHeader(good().subarray(0, 71))).toThrow(InvalidImageError);
    expect(() => decodeHeader(good().subarray(0, 100))).toThrow(InvalidImageError);
  });
});

describe('encodeHeader writes every field at its spec position', () => {
  it('v3: equal to the independently built bytes', () => {
    const fields = {
      version: 3,
      backingFileOffset: 0x200n,
      backingFileSize: 17,
      clusterBits: 21,
      size: 0x0000_7fff_ffff_fe00n,
      l1Size: 0x11223344,
      l1TableOffset: 0x00ff_ffff_ffe0_0000n,
      refcountTableOffset: 0x0000_0001_0020_0000n,
      refcountTableClusters: 3,
      nbSnapshots: 65536,
      snapshotsOffset: 0x0000_1000_0000_0000n,
      incompat: 0xffff_ffff_ffff_ffffn,
      compat: 1n,
      autoclear: 1n << 63n,
      refcountOrder: 0,
      compressionType: 1,
    };
    const expected = specHeader(fields);
    const h = decodeHeader(expected);
    expect(encodeHeader(h)).toEqual(expected);
  });

  it('v2: 72 bytes, nothing of v3 written even if the object carries v3 values', () => {
    const h = decodeHeader(
      specHeader({ version: 2, clusterBits: 9, size: 1n << 30n, l1Size: 4096, l1TableOffset: 0x600n, refcountTableOffset: 0x200n, refcountTableClusters: 1 }),
    );
    h.incompatibleFeatures = 1n;
    h.refcountOrder = 6;
    const out = encodeHeader(h);
    expect(out.length).toBe(72);
    expect(out).toEqual(
      specHeader({ version: 2, clusterBits: 9, size: 1n << 30n, l1Size: 4096, l1TableOffset: 0x600n, refcountTableOffset: 0x200n, refcountTableClusters: 1 }),
    );
  });

  it('a 104-byte v3 header is written back at QEMU\'s 112 with the compression type byte', () => {
    const h = decodeHeader(specHeader({ version: 3, headerLength: 104, clusterBits: 16, size: 1n << 20n, l1Size: 1, l1TableOffset: 0x30000n, refcountTableOffset: 0x10000n, refcountTableClusters: 1 }));
    h.compressionType = 1;
    const out = encodeHeader(h);
    expect(out.length).toBe(112);
    expect(new DataView(out.buffer).getUint32(100)).toBe(112);
    expect(out[104]).toBe(1);
    expect(Array.from(out.subarray(105))).toEqual([0, 0, 0, 0, 0, 0, 0]);
  });
});

describe('headers written by qemu-img create', () => {
  const MiB = 1024 * 1024;
  const cases: { name: string; opts: string; size: string; expect: Partial<Qcow2Header>; extra?: string[] }[] = [
    { name: 'v2-4k', opts: 'compat=0.10,cluster_size=4096', size: '3M', expect: { version: 2, clusterBits: 12, size: 3 * MiB, refcountOrder: 4, headerLength: 72, l1Size: 2 } },
    {
      name: 'v3-lazy-rc1-512',
      opts: 'lazy_refcounts=on,refcount_bits=1,cluster_size=512',
      size: '3M',
      expect: { version: 3, clusterBits: 9, refcountOrder: 0, compatibleFeatures: 1n, incompatibleFeatures: 0n, headerLength: 112, l1Size: 96 },
    },
    {
      name: 'v3-extl2-zstd-rc64',
      opts: 'extended_l2=on,compression_type=zstd,refcount_bits=64',
      size: '3M',
      expect: { version: 3, clusterBits: 16, refcountOrder: 6, incompatibleFeatures: (1n << 4n) | (1n << 3n), compressionType: 1, headerLength: 112 },
    },
    { name: 'v3-2m-rc8', opts: 'cluster_size=2M,refcount_bits=8', size: '5G', expect: { version: 3, clusterBits: 21, refcountOrder: 3, size: 5 * 1024 * MiB, l1Size: 1 } },
    { name: 'v3-odd-size', opts: '', size: '1000001', expect: { size: 1000448, clusterBits: 16, l1Size: 1 } },
  ];
  for (const c of cases) {
    it(`${c.name}: fields as qemu-img set them; re-encoding gives QEMU's bytes`, () => {
      const file = qemuImage(`${c.name}.qcow2`, c.opts, c.size, c.extra);
      const h = decodeHeader(file);
      expect(h).toMatchObject(c.expect);
      // QEMU's fixed layout: refcount table in cluster 1, one cluster of it.
      expect(h.refcountTableOffset).toBe(2 ** h.clusterBits);
      expect(h.refcountTableClusters).toBe(1);
      expect(h.l1TableOffset % 2 ** h.clusterBits).toBe(0);
      expect(h.l1TableOffset).toBeGreaterThan(h.refcountTableOffset);
      const encoded = encodeHeader(h);
      expect(encoded.length).toBe(h.headerLength);
      expect(encoded).toEqual(file.subarray(0, h.headerLength));
    });
  }

  it('backing file name offset and size point at the name qemu-img stored', () => {
    fs.writeFileSync(path.join(dir, 'base.raw'), new Uint8Array(1024 * 1024));
    const file = qemuImage('overlay.qcow2', '', '1M', ['-b', 'base.raw', '-F', 'raw']);
    const h = decodeHeader(file);
    expect(h.backingFileSize).toBe('base.raw'.length);
    expect(new TextDecoder().decode(file.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize))).toBe('base.raw');
    expect(encodeHeader(h)).toEqual(file.subarray(0, 112));
  });

  it('qemu-img reads the header fields we encode (info of a hand-encoded header)', () => {
    // Take qemu's image, change fields through the codec, let qemu-img info judge them.
    const file = qemuImage('mutate.qcow2', 'lazy_refcounts=on', '1M');
    const h = decodeHeader(file);
    h.size = 3 * MiB + 512;
    h.compatibleFeatures = 0n;
    const out = file.slice();
    out.set(encodeHeader(h));
    const p = path.join(dir, 'mutated.qcow2');
    fs.writeFileSync(p, out);
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', p], { encoding: 'utf8' }));
    expect(info['virtual-size']).toBe(3 * MiB + 512);
    expect(info['format-specific'].data['lazy-refcounts']).toBe(false);
  });
});

describe('HEADER_FIELDS', () => {
  it('names the byte range the codec writes each field to (qcow2.txt "Header" offsets)', async () => {
    const { HEADER_FIELDS, encodeHeader, decodeHeader } = await import('./header.js');
    const base = decodeHeader(encodeHeader({
      version: 3, backingFileOffset: 0, backingFileSize: 0, clusterBits: 16, size: 1 << 20, cryptMethod: 0,
      l1Size: 1, l1TableOffset: 0x30000, refcountTableOffset: 0x10000, refcountTableClusters: 1, nbSnapshots: 0,
      snapshotsOffset: 0, incompatibleFeatures: 0n, compatibleFeatures: 0n, autoclearFeatures: 0n, refcountOrder: 4,
      headerLength: 112, compressionType: 0, extraHeaderBytes: new Uint8Array(0),
    }));
    for (const [name, f] of Object.entries(HEADER_FIELDS)) {
      if (name === 'magic' || name === 'version' || name === 'headerLength') continue;
      const zero = { ...base } as Record<string, unknown>;
      zero[name] = typeof zero[name] === 'bigint' ? 0n : 0;
      const h = { ...zero };
      h[name] = typeof h[name] === 'bigint' ? 0x5an : 0x5a;
      const plain = encodeHeader(zero as never);
      const bytes = encodeHeader(h as never);
      const changed = [...bytes.keys()].filter((i) => bytes[i] !== plain[i]);
      expect(changed, name).toEqual([f.offset + f.width - 1]);
    }
    expect(encodeHeader(base).length).toBe(112);
  });
});
