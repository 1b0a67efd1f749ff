/**
 * The engine with an external data file, in memory: where data lands, the
 * offset-0 rule of qcow2_get_cluster_type, and the corruption QEMU signals
 * for an entry that breaks the data file's rules.
 */
import { describe, expect, it } from 'vitest';
import { CorruptImageError, InvalidArgumentError, SnapshotError, UnsupportedFeatureError } from './errors.js';
import { makeEntry } from './format/entries.js';
import { Qcow2Image } from './image.js';
import { MemoryStorage } from './storage/memory.js';

const CS = 65536;

function create(raw = false) {
  const image = new MemoryStorage();
  const data = new MemoryStorage();
  const img = Qcow2Image.create(image, { size: 4 * CS, dataFile: 'd.raw', dataFileRaw: raw }, { openDataFile: () => data });
  return { img, image, data };
}

/** Overwrites the L2 entry of guest cluster vc (< one L2 table's worth) in the image file by hand. */
function setL2Entry(image: MemoryStorage, vc: number, hi: number, lo: number): void {
  const u64 = (b: Uint8Array) => Number(new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0) & 0x00fffffffffffe00n);
  const l2 = u64(image.read(u64(image.read(40, 8)), 8));
  const e = new Uint8Array(8);
  new DataView(e.buffer).setUint32(0, hi);
  new DataView(e.buffer).setUint32(4, lo);
  image.write(l2 + vc * 8, e);
}

describe('an image with an external data file', () => {
  it('keeps guest data in the data file at the guest offset, the image file holding only metadata', () => {
    const { img, image, data } = create();
    const before = image.size();
    img.write(CS + 512, new Uint8Array(1024).fill(0xab));
    img.flush();
    expect(data.read(CS + 512, 1024).every((b) => b === 0xab)).toBe(true);
    expect(data.read(CS, 512).every((b) => b === 0)).toBe(true);
    // An L2 table and nothing else was added to the image file.
    expect(image.size()).toBeLessThanOrEqual(before + CS);
    expect(img.entryFor(1).hi).toBe(makeEntry(CS, true)[0]);
    expect(img.check().leaks + img.check().corruptions).toBe(0);
  });

  it('reads guest cluster 0 from host offset 0: an offset-0 entry with COPIED is data there', () => {
    const { img, data } = create();
    img.write(0, new Uint8Array(512).fill(7));
    img.flush();
    const [hi, lo] = makeEntry(0, true);
    expect(img.entryFor(0)).toMatchObject({ hi, lo });
    data.write(512, new Uint8Array([9]));
    expect(img.read(512, 1)[0]).toBe(9);
  });

  it('with data_file_raw maps every cluster to itself at create, and zeroes the data file on write-zeroes', () => {
    const { img, data } = create(true);
    for (let c = 0; c < 4; c++) expect(img.entryFor(c).hi).toBe(makeEntry(c * CS, true)[0]);
    img.write(0, new Uint8Array(2 * CS).fill(1));
    img.writeZeroes(CS, CS);
    expect(data.read(CS, CS).every((b) => b === 0)).toBe(true);
    expect(data.read(0, CS).every((b) => b === 1)).toBe(true);
    expect(img.read(CS, CS).every((b) => b === 0)).toBe(true);
  });

  it('refuses compressed writes and snapshots, leaving the image as it was', () => {
    const { img, image } = create();
    img.flush();
    const before = image.read(0, image.size());
    expect(() => img.writeCompressed(0, new Uint8Array(CS))).toThrow(UnsupportedFeatureError);
    expect(() => img.createSnapshot('s')).toThrow(SnapshotError);
    expect(image.read(0, image.size())).toEqual(before);
  });

  it('opened without its data file answers info but refuses guest I/O', () => {
    const { img, image } = create();
    img.close();
    const meta = Qcow2Image.open(image, { readOnly: true });
    expect(meta.info()).toMatchObject({ dataFile: 'd.raw', dataFileRaw: false });
    expect(() => meta.read(0, 512)).toThrow(InvalidArgumentError);
  });

  it('signals corruption for a data cluster away from its guest offset, and for a compressed one', () => {
    const { img, image, data } = create();
    img.write(CS, new Uint8Array(512).fill(1));
    img.close();
    const [hi, lo] = makeEntry(2 * CS, true);
    setL2Entry(image, 1, hi, lo);
    const moved = Qcow2Image.open(image, { readOnly: true, openDataFile: () => data });
    expect(() => moved.read(CS, 512)).toThrow(/External data file host cluster offset 0x20000 does not match guest cluster offset: 0x10000/);
    moved.close();
    setL2Entry(image, 1, 0x40000000, 0x30000);
    const compressed = Qcow2Image.open(image, { readOnly: true, openDataFile: () => data });
    expect(() => compressed.read(CS, 512)).toThrow(CorruptImageError);
    expect(() => compressed.read(CS, 512)).toThrow(/Compressed cluster entry found in image with external data file/);
  });
});
