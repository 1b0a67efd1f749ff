/** Files every target shares: the backing file, and the model written out as a sparse raw image. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runTool, QEMU_IMG, QEMU_IO } from '../qemu/index.js';
import { QemuToolError } from '../qemu/errors.js';
import type { DiskModel } from '../model/disk.js';
import { ANY, SECTOR } from '../model/layer.js';
import type { Layer } from '../model/layer.js';
import { backingFileName, backingStamp, type BackingConfig } from './config.js';
import { fillSector, makeData } from './data.js';

/**
 * Creates the backing file in `dir` (and, for a chain, the files below it
 * first); returns its file name (relative, as the overlay records it).
 */
export async function createBacking(dir: string, b: BackingConfig, level = 0): Promise<string> {
  if (b.backing) return createChainLevel(dir, b, level);
  const name = backingFileName(b, level);
  const rawPath = path.join(dir, b.format === 'raw' ? name : level === 0 ? 'backing.src.raw' : `${name}.src.raw`);
  const fd = fs.openSync(rawPath, 'w');
  try {
    fs.ftruncateSync(fd, b.size);
    b.writes.forEach(([off, len], i) => fs.writeSync(fd, makeData(backingStamp(i, level), off, len), 0, len, off));
  } finally {
    fs.closeSync(fd);
  }
  if (b.format === 'raw') return name;
  const out = path.join(dir, name);
  const r = await runTool(QEMU_IMG, ['convert', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${b.clusterSize ?? 65536}`, rawPath, out]);
  if (r.rc !== 0) throw new QemuToolError(`creating the qcow2 backing file failed: ${r.stderr}`, r.rc, r.stderr);
  fs.rmSync(rawPath);
  return name;
}

/**
 * A qcow2 backing file over a backing file of its own: created over the
 * level below, then written through qemu-io as a guest would (partial
 * clusters copy the level below, which is what the model flattens).
 */
async function createChainLevel(dir: string, b: BackingConfig, level: number): Promise<string> {
  const lower = await createBacking(dir, b.backing!, level + 1);
  const name = backingFileName(b, level);
  const out = path.join(dir, name);
  const c = await runTool(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${b.clusterSize ?? 65536}`, '-b', lower, '-F', b.backing!.format, out, String(b.size)]);
  if (c.rc !== 0) throw new QemuToolError(`creating the qcow2 backing file ${name} failed: ${c.stderr}`, c.rc, c.stderr);
  const files = b.writes.map(([off, len], i) => {
    const f = path.join(dir, `${name}.w${i}`);
    fs.writeFileSync(f, makeData(backingStamp(i, level), off, len));
    return f;
  });
  try {
    if (files.length === 0) return name;
    const args = ['-f', 'qcow2', ...b.writes.flatMap(([off, len], i) => ['-c', `write -s ${files[i]} ${off} ${len}`]), out];
    const w = await runTool(QEMU_IO, args);
    if (w.rc !== 0 || /failed/.test(w.stdout + w.stderr)) throw new QemuToolError(`writing the backing file ${name} failed: ${(w.stderr || w.stdout).trim()}`, w.rc, w.stderr);
  } finally {
    for (const f of files) fs.rmSync(f, { force: true });
  }
  return name;
}

/**
 * Writes a model layer as a sparse raw file. Sectors the model leaves
 * unspecified are copied from `observed` (what the target actually showed), so
 * qemu-img compare judges only what the model prescribes.
 */
export function writeModelRaw(file: string, model: DiskModel, layer: Layer, observed?: Uint8Array): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, layer.size);
    const n = layer.size / SECTOR;
    const chunk = new Uint8Array(256 * SECTOR);
    let runStart = -1;
    let runLen = 0;
    const flushRun = () => {
      if (runLen > 0) fs.writeSync(fd, chunk, 0, runLen * SECTOR, runStart * SECTOR);
      runStart = -1;
      runLen = 0;
    };
    for (let s = 0; s < n; s++) {
      const stamp = model.stampAt(layer, s);
      if (stamp === 0 || (stamp === ANY && !observed)) {
        flushRun();
        continue;
      }
      if (runStart < 0) runStart = s;
      if (stamp === ANY) chunk.set(observed!.subarray(s * SECTOR, (s + 1) * SECTOR), runLen * SECTOR);
      else fillSector(chunk, runLen * SECTOR, stamp, s);
      runLen++;
      if (runLen * SECTOR === chunk.length) flushRun();
    }
    flushRun();
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads [off, off+len) of a (possibly short) file; bytes past its end read as zeros. */
export function readFileRange(file: string, off: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  const fd = fs.openSync(file, 'r');
  try {
    let done = 0;
    while (done < len) {
      const n = fs.readSync(fd, out, done, len - done, off + done);
      if (n === 0) break;
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

