/**
 * Bitmap directories QEMU does not trust are refused as QEMU refuses them
 * (bitmap_list_load, check_dir_entry, bitmap_table_load): the open fails
 * with QEMU's reason in one line, read-only and read-write alike, and a
 * refused read-write open leaves the file byte for byte as it was.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../src/qcow2/errors.js';
import { openQcow2File } from '../../src/qcow2/open-file.js';
import { QEMU_IMG, QEMU_IO, runTool } from '../../src/qemu/index.js';
import { ramScratchDir } from '../support/scratch.js';

const dir = ramScratchDir('qh-bitmap-hostile-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
let seq = 0;

interface Located {
  ext: number;
  dir: number;
  table: number;
}

/** Where the bitmaps extension, the directory and the first table are in a qemu-img made image. */
function locate(b: Buffer): Located {
  let pos = b.readUInt32BE(100);
  for (;;) {
    const type = b.readUInt32BE(pos);
    if (type === 0) throw new Error('no bitmaps extension');
    if (type === 0x23852875) {
      const d = Number(b.readBigUInt64BE(pos + 8 + 16));
      return { ext: pos + 8, dir: d, table: Number(b.readBigUInt64BE(d)) };
    }
    pos += 8 + Math.ceil(b.readUInt32BE(pos + 4) / 8) * 8;
  }
}

const MUTATIONS: [string, (b: Buffer, at: Located) => void][] = [
  ['unknown bitmap type', (b, at) => b.writeUInt8(2, at.dir + 16)],
  ['reserved flag (extra_data_compatible)', (b, at) => b.writeUInt32BE(b.readUInt32BE(at.dir + 12) | 4, at.dir + 12)],
  ['unknown high flag', (b, at) => b.writeUInt32BE((b.readUInt32BE(at.dir + 12) | 0x80000000) >>> 0, at.dir + 12)],
  ['granularity below 512', (b, at) => b.writeUInt8(8, at.dir + 17)],
  ['granularity above 2^31', (b, at) => b.writeUInt8(32, at.dir + 17)],
  ['table offset not cluster aligned', (b, at) => b.writeBigUInt64BE(BigInt(at.table + 512), at.dir)],
  ['table offset zero', (b, at) => b.writeBigUInt64BE(0n, at.dir)],
  ['table size zero', (b, at) => b.writeUInt32BE(0, at.dir + 8)],
  ['table larger than the disk needs', (b, at) => b.writeUInt32BE(2, at.dir + 8)],
  ['extra data', (b, at) => b.writeUInt32BE(8, at.dir + 20)],
  ['more bitmaps than the extension says', (b, at) => b.writeUInt32BE(1, at.ext)],
  ['fewer bitmaps than the extension says', (b, at) => b.writeUInt32BE(3, at.ext)],
  ['directory size cuts an entry', (b, at) => b.writeBigUInt64BE(b.readBigUInt64BE(at.ext + 8) - 8n, at.ext + 8)],
  ['bitmap table entry with reserved bits', (b, at) => b.writeBigUInt64BE(0x2n, at.table)],
  ['bitmap table entry not cluster aligned', (b, at) => b.writeBigUInt64BE(BigInt(at.table + 512), at.table)],
];

async function qemuOpenError(f: string): Promise<string> {
  const r = await runTool(QEMU_IMG, ['info', f]);
  expect(r.rc).toBe(1);
  return r.stderr.trim();
}

describe('hostile bitmap directories', () => {
  it.each(MUTATIONS)('%s: refused as QEMU refuses it, file untouched', async (_name, mutate) => {
    const f = path.join(dir, `h${++seq}.qcow2`);
    for (const args of [['create', '-q', '-f', 'qcow2', f, '4M'], ['bitmap', '--add', f, 'b0'], ['bitmap', '--add', f, 'b1']]) {
      expect((await runTool(QEMU_IMG, args)).rc).toBe(0);
    }
    expect((await runTool(QEMU_IO, ['-c', 'write 0 64k', f])).rc).toBe(0);
    const b = fs.readFileSync(f);
    mutate(b, locate(b));
    fs.writeFileSync(f, b);
    const theirs = await qemuOpenError(f);
    for (const readOnly of [true, false]) {
      let err: unknown;
      try {
        openQcow2File(f, { readOnly }).close();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(Qcow2Error);
      const msg = (err as Error).message;
      expect(msg).not.toContain('\n');
      // QEMU: "qemu-img: Could not open 'F': <reason>"; ours is the reason.
      expect(theirs.endsWith(msg), `ours: ${msg}\nqemu: ${theirs}`).toBe(true);
    }
    expect(fs.readFileSync(f).equals(b)).toBe(true);
  });
});
