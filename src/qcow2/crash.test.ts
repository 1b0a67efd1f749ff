/**
 * Crash consistency (DESIGN.md): after any prefix of guest operations, a
 * crash image — the state at the last flush plus any subset of later writes,
 * torn at sector granularity — must open (a dirty image is repaired), pass
 * qemu-img check without corruptions (leaks are allowed), keep every sector
 * untouched since the flush as it was, and show every touched sector as one
 * of the values it held since.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Lcg } from '../../tests/support/bytes.js';
import { qemuCheckBytes } from '../../tests/support/qemu.js';
import { Qcow2Image } from './image.js';
import { MemoryStorage } from './storage/memory.js';
import { RecordingStorage } from './storage/recording.js';
import type { CreateOptions } from './types.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-crash-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const SECTOR = 512;
const key = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');

const configs: CreateOptions[] = [
  { size: 8 << 20, clusterSize: 65536 },
  { size: 2 << 20, clusterSize: 512, refcountBits: 64 },
  { size: 4 << 20, clusterSize: 4096, compat: '0.10' },
  { size: 4 << 20, clusterSize: 65536, lazyRefcounts: true },
  { size: 4 << 20, clusterSize: 32768, extendedL2: true },
];

describe('crash images are consistent', () => {
  for (const cfg of configs) {
    it(JSON.stringify(cfg), async () => {
      const lcg = new Lcg((cfg.clusterSize ?? 0) + (cfg.size >>> 10));
      const random = () => lcg.float();
      const int = (n: number) => Math.floor(random() * n);
      const cs = cfg.clusterSize ?? 65536;
      const rec = new RecordingStorage();
      const img = Qcow2Image.create(rec, cfg);
      const size = img.virtualSize;
      const sectors = size / SECTOR;
      const model = new Uint8Array(size);
      let atFlush = model.slice();
      let history = new Map<number, Set<string>>();
      const touched = (off: number, len: number) => {
        for (let s = Math.floor(off / SECTOR); s < Math.ceil((off + len) / SECTOR); s++) {
          let h = history.get(s);
          if (!h) history.set(s, (h = new Set([key(atFlush.subarray(s * SECTOR, (s + 1) * SECTOR))])));
          h.add(key(model.subarray(s * SECTOR, (s + 1) * SECTOR)));
        }
      };
      const trace: string[] = [];
      for (let i = 1; i <= 40; i++) {
        const k = int(10);
        const off = int(sectors) * SECTOR;
        const len = Math.min(size - off, SECTOR * (1 + int(3 * (cs / SECTOR))));
        if (k < 5) {
          const d = new Uint8Array(len);
          for (let p = 0; p < len; p += SECTOR) d.fill((i * 7 + p / SECTOR) & 0xff || 1, p, p + SECTOR);
          img.write(off, d);
          model.set(d, off);
          touched(off, len);
          trace.push(`write ${off} ${len}`);
        } else if (k === 5) {
          img.writeZeroes(off, len, { unmap: int(2) === 0 });
          model.fill(0, off, off + len);
          touched(off, len);
          trace.push(`write -z ${off} ${len}`);
        } else if (k === 6) {
          img.discard(off, len);
          const s = Math.ceil(off / cs) * cs;
          const e = off + len === size ? size : Math.floor((off + len) / cs) * cs;
          if (e > s) model.fill(0, s, e);
          touched(off, len);
          trace.push(`discard ${off} ${len}`);
        } else if (k === 7) {
          img.flush();
          atFlush = model.slice();
          history = new Map();
          trace.push('flush');
        } else {
          // Crash here: several crash images of the current state.
          for (let c = 0; c < 3; c++) {
            const where = `crash image ${c} after: ${trace.join('; ')}`;
            const crashed = new MemoryStorage(rec.randomCrashImage(random));
            const back = Qcow2Image.open(crashed);
            const got = back.read(0, size);
            for (let s = 0; s < sectors; s++) {
              const v = key(got.subarray(s * SECTOR, (s + 1) * SECTOR));
              const allowed = history.get(s) ?? new Set([key(atFlush.subarray(s * SECTOR, (s + 1) * SECTOR))]);
              if (!allowed.has(v)) expect.fail(`sector ${s} holds a value it never had; ${where}`);
            }
            back.close();
            const q = await qemuCheckBytes(crashed.bytes(), path.join(dir, 'crash.qcow2'));
            expect(q.json, `${where}\n${q.out}`).toBeDefined();
            expect(q.corruptions, `${where}\n${q.out}`).toBe(0);
            expect([0, 3], `${where}\n${q.out}`).toContain(q.rc);
          }
          trace.push('crash');
        }
      }
      img.close();
    });
  }
});
