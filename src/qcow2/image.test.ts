/**
 * The engine against a byte-array model, with the real qemu-img as the
 * judge of every image it leaves: seeded random sequences of writes,
 * compressed writes, write-zeroes, discards, snapshots, amends, resizes and
 * reopens across cluster sizes, refcount widths, compat levels and extended L2.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Qcow2Image } from './image.js';
import { MemoryStorage } from './storage/memory.js';
import type { CreateOptions } from './types.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-engine-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function rng(seed: number) {
  let s = seed >>> 0;
  return (n: number) => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return Math.floor((s / 4294967296) * n);
  };
}

/** qemu-img check on the image bytes; returns the parsed JSON and exit code. */
function qemuCheck(bytes: Uint8Array): { rc: number; json: Record<string, number> } {
  const file = path.join(dir, 'check.qcow2');
  fs.writeFileSync(file, bytes);
  try {
    const out = execFileSync('qemu-img', ['check', '--output=json', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return { rc: 0, json: JSON.parse(out) };
  } catch (e) {
    const err = e as { status: number; stdout: string };
    return { rc: err.status, json: err.stdout ? JSON.parse(err.stdout) : {} };
  }
}

function qemuCompare(bytes: Uint8Array, model: Uint8Array): string {
  const img = path.join(dir, 'cmp.qcow2');
  const raw = path.join(dir, 'cmp.raw');
  fs.writeFileSync(img, bytes);
  fs.writeFileSync(raw, model);
  try {
    return execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', img, raw], { encoding: 'utf8' }).trim();
  } catch (e) {
    return `differ: ${(e as { stdout: string }).stdout}`;
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Sector-unique data: a misplaced sector can never pass for the right one. */
function stamp(op: number, offset: number, length: number): Uint8Array {
  const d = new Uint8Array(length);
  const v = new DataView(d.buffer);
  for (let p = 0; p + 4 <= length; p += 4) v.setUint32(p, ((op << 20) ^ Math.floor((offset + p) / 512)) >>> 0);
  d.fill(op & 0xff, length - (length % 4));
  return d;
}

const configs: CreateOptions[] = [
  { size: 10 * 1024 * 1024 + 512, clusterSize: 65536 },
  { size: 3 * 1024 * 1024, clusterSize: 512, refcountBits: 1 },
  { size: 3 * 1024 * 1024, clusterSize: 4096, compat: '0.10' },
  { size: 5 * 1024 * 1024, clusterSize: 65536, extendedL2: true },
  { size: 5 * 1024 * 1024, clusterSize: 2 * 1024 * 1024, compressionType: 'zstd', lazyRefcounts: true },
  { size: 2 * 1024 * 1024 + 1536, clusterSize: 16384, extendedL2: true, refcountBits: 64 },
];

describe('guest I/O matches a byte model and qemu-img finds the image clean', () => {
  for (const cfg of configs) {
    it(JSON.stringify(cfg), () => {
      const rnd = rng(cfg.size ^ (cfg.clusterSize ?? 0));
      const cs = cfg.clusterSize ?? 65536;
      const st = new MemoryStorage();
      const img = Qcow2Image.create(st, cfg);
      const model = new Uint8Array(img.virtualSize);
      const size = img.virtualSize;
      for (let i = 0; i < 150; i++) {
        const off = rnd(size / 512) * 512 + (rnd(4) === 0 ? rnd(512) : 0);
        const len = Math.min(size - off, 1 + rnd(3 * cs));
        const k = rnd(6);
        if (k < 3) {
          const d = stamp(i, off, len);
          img.write(off, d);
          model.set(d, off);
        } else if (k === 3) {
          img.writeZeroes(off, len, { unmap: rnd(2) === 0 });
          model.fill(0, off, off + len);
        } else if (k === 4) {
          img.discard(off, len);
          // Whole clusters only, plus the last partial cluster of the image.
          const s = Math.ceil(off / cs) * cs;
          const e = off + len === size ? size : Math.floor((off + len) / cs) * cs;
          if (e > s) model.fill(0, s, e);
        } else {
          const vc = rnd(Math.ceil(size / cs));
          const e = img.entryFor(vc);
          if (e.hi === 0 && e.lo === 0) {
            const n = Math.min(cs, size - vc * cs);
            const d = stamp(i, vc * cs, n);
            img.writeCompressed(vc * cs, d);
            model.set(d, vc * cs);
          }
        }
      }
      expect(firstDifference(img.read(0, size), model)).toBe(-1);
      const ours = img.check('none');
      img.close();
      const q = qemuCheck(st.bytes());
      expect(q.rc).toBe(0);
      expect(q.json.leaks ?? 0).toBe(0);
      expect(q.json.corruptions ?? 0).toBe(0);
      expect({ corruptions: ours.corruptions, leaks: ours.leaks }).toEqual({ corruptions: 0, leaks: 0 });
      expect(ours.imageEndOffset).toBe(q.json['image-end-offset']);
      expect(ours.allocatedClusters).toBe(q.json['allocated-clusters'] ?? 0);
      expect(ours.compressedClusters).toBe(q.json['compressed-clusters'] ?? 0);
      expect(qemuCompare(st.bytes(), model)).toBe('Images are identical.');
    });
  }
});

describe('snapshots, amend, resize and reopen keep content and a clean image', () => {
  const metaConfigs: CreateOptions[] = [
    { size: 4 << 20, clusterSize: 65536 },
    { size: 4 << 20, clusterSize: 4096, refcountBits: 4 },
    { size: 4 << 20, clusterSize: 512, compat: '0.10' },
    { size: 4 << 20, clusterSize: 32768, extendedL2: true },
  ];
  for (const cfg of metaConfigs) {
    it(JSON.stringify(cfg), () => {
      const rnd = rng(cfg.clusterSize! + 17);
      const st = new MemoryStorage();
      let img = Qcow2Image.create(st, cfg);
      let model = new Uint8Array(img.virtualSize);
      const snaps = new Map<string, Uint8Array>();
      const trace: string[] = [];
      for (let i = 0; i < 40; i++) {
        const k = rnd(11);
        const size = img.virtualSize;
        if (k < 4) {
          const off = rnd(size / 512) * 512;
          const len = Math.min(size - off, 512 * (1 + rnd(300)));
          const d = stamp(i, off, len);
          img.write(off, d);
          model.set(d, off);
          trace.push(`write ${off} ${len}`);
        } else if (k === 4) {
          const off = rnd(size / 512) * 512;
          const len = Math.min(size - off, 512 * (1 + rnd(300)));
          img.writeZeroes(off, len, { unmap: rnd(2) === 0 });
          model.fill(0, off, off + len);
          trace.push(`write -z ${off} ${len}`);
        } else if (k === 5) {
          try {
            img.createSnapshot(`s${i}`);
            snaps.set(`s${i}`, model.slice());
            trace.push(`snapshot -c s${i}`);
          } catch (e) {
            // Only a refcount width too narrow for the extra reference may refuse it.
            expect(img.refcounts.max, (e as Error).message).toBeLessThan(3);
            trace.push(`snapshot -c s${i} (refused)`);
          }
        } else if (k === 6 && snaps.size > 0) {
          const names = [...snaps.keys()];
          const n = names[rnd(names.length)];
          img.applySnapshot(n);
          model = snaps.get(n)!.slice();
          trace.push(`snapshot -a ${n}`);
        } else if (k === 7 && snaps.size > 0) {
          const names = [...snaps.keys()];
          const n = names[rnd(names.length)];
          img.deleteSnapshot(n);
          snaps.delete(n);
          trace.push(`snapshot -d ${n}`);
        } else if (k === 8 && cfg.compat !== '0.10') {
          const bits = 2 ** rnd(7);
          try {
            img.amend({ refcountBits: bits });
            trace.push(`amend refcount_bits=${bits}`);
          } catch (e) {
            // Only a width too narrow for a snapshot-shared cluster may be refused.
            expect(bits).toBeLessThan(4);
            trace.push(`amend refcount_bits=${bits} (refused: ${(e as Error).message})`);
          }
        } else if (k === 9) {
          const grow = rnd(2) === 0;
          const next = grow ? size + 512 * (1 + rnd(4000)) : Math.max(512, size - 512 * (1 + rnd(4000)));
          if (cfg.compat === '0.10' && snaps.size > 0) {
            // qemu-img: "Can't resize a v2 image which has snapshots".
            expect(() => img.resize(next, { shrink: !grow })).toThrow(/v2 image which has snapshots/);
            trace.push(`resize ${next} (refused)`);
          } else {
            img.resize(next, { shrink: !grow });
            const m = new Uint8Array(next);
            m.set(model.subarray(0, Math.min(next, size)));
            model = m;
            trace.push(`resize ${next}`);
          }
        } else {
          img.close();
          img = Qcow2Image.open(st);
          trace.push('reopen');
        }
        img.flush();
        const where = `after: ${trace.join('; ')}`;
        expect(firstDifference(img.read(0, img.virtualSize), model), where).toBe(-1);
        const q = qemuCheck(st.bytes());
        expect({ rc: q.rc, leaks: q.json.leaks ?? 0, corruptions: q.json.corruptions ?? 0 }, where).toEqual({ rc: 0, leaks: 0, corruptions: 0 });
      }
      img.close();
      for (const [name, content] of snaps) {
        const view = Qcow2Image.open(new MemoryStorage(st.bytes()), { readOnly: true, snapshot: name });
        expect(firstDifference(view.read(0, view.virtualSize), content), `snapshot ${name}`).toBe(-1);
      }
    });
  }
});
