/**
 * Zeroing a fresh cluster without a buffer (BlockStorage.writeZeroes, QEMU's
 * handle_alloc_space): the file call itself, the engine's use of it, and
 * crash consistency when the zero range is one more write that may be lost.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Lcg } from '../../../tests/support/bytes.js';
import { qemuCheckBytes, qemuCompare } from '../../../tests/support/qemu.js';
import { imgCheck } from '../../qemu/index.js';
import { ReadOnlyError } from '../errors.js';
import { Qcow2Image } from '../image.js';
import { FileStorage } from './file.js';
import { MemoryStorage } from './memory.js';
import { RecordingStorage } from './recording.js';
import type { BlockStorage } from './types.js';
import { execa } from 'execa';
import { runPlantedBarrier } from '../../../tests/support/planted-barrier.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zero-range-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('FileStorage.writeZeroes', () => {
  it('zeroes a range inside the file and grows the file when the range ends past it', () => {
    const file = path.join(dir, 'z.bin');
    fs.writeFileSync(file, Buffer.alloc(3 * 4096, 0xff));
    const st = FileStorage.open(file, { lock: false });
    expect(st.writeZeroes(4096, 4096)).toBe(true);
    expect(st.writeZeroes(2 * 4096, 4 * 4096)).toBe(true);
    expect(st.size()).toBe(6 * 4096);
    st.close();
    const bytes = fs.readFileSync(file);
    expect(bytes.length).toBe(6 * 4096);
    expect(bytes.subarray(0, 4096).every((b) => b === 0xff)).toBe(true);
    expect(bytes.subarray(4096).every((b) => b === 0)).toBe(true);
  });

  it('is refused on a read-only file', () => {
    const file = path.join(dir, 'ro.bin');
    fs.writeFileSync(file, Buffer.alloc(4096, 1));
    const st = FileStorage.open(file, { readOnly: true, lock: false });
    expect(() => st.writeZeroes(0, 4096)).toThrow(ReadOnlyError);
    st.close();
  });

  // tmpfs has no FALLOC_FL_ZERO_RANGE: the storage declines and leaves the bytes alone.
  it.skipIf(!fs.existsSync('/dev/shm'))('declines where the file system cannot zero ranges, changing nothing', () => {
    const file = fs.mkdtempSync('/dev/shm/zero-range-') + '/z.bin';
    try {
      fs.writeFileSync(file, Buffer.alloc(8192, 0xee));
      const st = FileStorage.open(file, { lock: false });
      expect(st.writeZeroes(0, 16384)).toBe(false);
      expect(st.size()).toBe(8192);
      st.close();
      expect(fs.readFileSync(file).every((b) => b === 0xee)).toBe(true);
    } finally {
      fs.rmSync(path.dirname(file), { recursive: true, force: true });
    }
  });
});

/** A file storage that counts what the engine asks of it. */
function counting(inner: BlockStorage) {
  const calls = { zeroes: [] as [number, number][], writes: [] as [number, number][] };
  const st: BlockStorage = {
    get readOnly() {
      return inner.readOnly;
    },
    size: () => inner.size(),
    read: (o, l) => inner.read(o, l),
    readInto: (o, d) => inner.readInto(o, d),
    write: (o, d) => (calls.writes.push([o, d.length]), inner.write(o, d)),
    writeZeroes: (o, l) => (calls.zeroes.push([o, l]), inner.writeZeroes?.(o, l) ?? false),
    truncate: (l) => inner.truncate(l),
    flush: () => inner.flush(),
    close: () => inner.close(),
  };
  return { st, calls };
}

describe('a partial write into a fresh cluster', () => {
  it('zeroes the cluster through the storage and writes only the data, as qemu-io does', async () => {
    const ours = path.join(dir, 'ours.qcow2');
    const theirs = path.join(dir, 'theirs.qcow2');
    for (const f of [ours, theirs]) await execa('qemu-img', ['create', '-q', '-f', 'qcow2', f, '4M']);
    const { st, calls } = counting(FileStorage.open(ours, { lock: false }));
    const img = Qcow2Image.open(st);
    img.write(70 * 1024, new Uint8Array(4096).fill(7));
    img.close();
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 7 70k 4k', theirs]);
    expect(calls.zeroes).toHaveLength(1);
    const [host, len] = calls.zeroes[0]!;
    expect(len).toBe(65536);
    expect(calls.writes).toContainEqual([host + 70 * 1024 - 65536, 4096]);
    expect(calls.writes).not.toContainEqual([host, 65536]);
    expect(await qemuCompare(ours, theirs)).toBe('identical');
    expect((await imgCheck(ours)).rc).toBe(0);
  });

  it('writes the whole cluster where the storage declines, and on an encrypted image (its zeros are ciphertext)', () => {
    for (const encrypt of [undefined, { format: 'luks' as const, passphrase: 'pw', luks: { iterTimeMs: 1 } }]) {
      const mem = new MemoryStorage();
      const { st, calls } = counting(mem);
      const img = Qcow2Image.create(st, { size: 1 << 20, clusterSize: 65536, encrypt }, { passphrase: 'pw' });
      calls.writes.length = 0;
      img.write(4096, new Uint8Array(512).fill(3));
      img.flush();
      // Memory storage declines a zero range; an encrypted image does not even ask.
      expect(calls.zeroes).toHaveLength(encrypt ? 0 : 1);
      // The data went out inside a whole-cluster buffer, never on its own.
      expect(calls.writes.some(([, n]) => n === 512)).toBe(false);
      img.close();
      const back = Qcow2Image.open(new MemoryStorage(mem.bytes()), { passphrase: 'pw' });
      const got = back.read(0, 65536);
      back.close();
      expect(got.subarray(4096, 4608).every((b) => b === 3)).toBe(true);
      expect(got.subarray(0, 4096).every((b) => b === 0) && got.subarray(4608).every((b) => b === 0)).toBe(true);
    }
  });
});

describe('crash consistency with zero ranges', () => {
  /** The planted barrier of src/harness/crash.test.ts, on a recording that zeroes fresh clusters by range. */
  const planted = (plant: boolean) => runPlantedBarrier({ plant, dir, writeZeroes: true });

  it('without the plant, every crash state passes', async () => {
    const r = await planted(false);
    expect(r.zeroRanges).toBeGreaterThan(0);
    expect(r.dropped).toBe(0);
    expect(r.problem).toBeUndefined();
  });

  it('with the barrier dropped, the crash oracle still sees data the guest never wrote', async () => {
    const r = await planted(true);
    expect(r.zeroRanges).toBeGreaterThan(0);
    expect(r.dropped).toBeGreaterThan(0);
    expect(r.problem).toMatch(/at guest offset 4096 read stale bytes of host sector \d+/);
  });

  // The shape that would break if a fresh cluster were left short of the file's end:
  // partial writes at the end of the file, then in-place writes past the old end (lazy refcounts, 64 KiB).
  for (const cfg of [
    { size: 4 << 20, clusterSize: 65536, lazyRefcounts: true },
    { size: 4 << 20, clusterSize: 4096 },
  ]) {
    it(`random crash images stay consistent: ${JSON.stringify(cfg)}`, async () => {
      const lcg = new Lcg(cfg.clusterSize + 17);
      const random = () => lcg.float();
      const int = (k: number) => Math.floor(random() * k);
      const SECTOR = 512;
      const rec = new RecordingStorage(undefined, { writeZeroes: true });
      const img = Qcow2Image.create(rec, cfg);
      const size = img.virtualSize;
      const model = new Uint8Array(size);
      let atFlush = model.slice();
      let history = new Map<number, Set<string>>();
      const key = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
      const touched = (off: number, len: number) => {
        for (let s = Math.floor(off / SECTOR); s < Math.ceil((off + len) / SECTOR); s++) {
          let h = history.get(s);
          if (!h) history.set(s, (h = new Set([key(atFlush.subarray(s * SECTOR, (s + 1) * SECTOR))])));
          h.add(key(model.subarray(s * SECTOR, (s + 1) * SECTOR)));
        }
      };
      for (let i = 1; i <= 40; i++) {
        const k = int(10);
        const off = int(size / SECTOR) * SECTOR;
        const len = Math.min(size - off, SECTOR * (1 + int(3 * (cfg.clusterSize / SECTOR))));
        if (k < 6) {
          const d = new Uint8Array(len).fill((i * 7) & 0xff || 1);
          img.write(off, d);
          model.set(d, off);
          touched(off, len);
        } else if (k === 6) {
          img.writeZeroes(off, len, { unmap: int(2) === 0 });
          model.fill(0, off, off + len);
          touched(off, len);
        } else if (k === 7) {
          img.flush();
          atFlush = model.slice();
          history = new Map();
        } else {
          const crashed = new MemoryStorage(rec.randomCrashImage(random));
          const back = Qcow2Image.open(crashed);
          const got = back.read(0, size);
          back.close();
          for (let s = 0; s < size / SECTOR; s++) {
            const allowed = history.get(s) ?? new Set([key(atFlush.subarray(s * SECTOR, (s + 1) * SECTOR))]);
            if (!allowed.has(key(got.subarray(s * SECTOR, (s + 1) * SECTOR)))) expect.fail(`sector ${s} holds a value it never had (op ${i})`);
          }
          const q = await qemuCheckBytes(crashed.bytes(), path.join(dir, 'crash.qcow2'));
          expect(q.corruptions, q.out).toBe(0);
        }
      }
      img.close();
    });
  }
});
