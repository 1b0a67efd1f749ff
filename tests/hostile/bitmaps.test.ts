/**
 * Persistent bitmaps on damaged images (issue 10 leftovers), against
 * qemu-img/qemu-io 7.2 on the same bytes:
 * - a bitmap table or directory QEMU cannot load ends `check` as QEMU's
 *   qcow2_check_bitmaps_refcounts does: one corruption, then EINVAL, so the
 *   check fails ("Check failed: ... Invalid argument", exit 1) instead of
 *   reporting a clean image or a check error;
 * - a write the allocator would put on the bitmap directory is refused as
 *   an overlap and marks the image corrupt (QCOW2_OL_BITMAP_DIRECTORY), and
 *   so is one landing on a bitmap table (ours only: QEMU's check skips tables).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bufferContext } from '../../src/cli/context.js';
import { runCli } from '../../src/cli/run.js';
import { CheckGaveUpError } from '../../src/qcow2/check.js';
import { Qcow2Image } from '../../src/qcow2/image.js';
import { MemoryStorage } from '../../src/qcow2/storage/memory.js';
import { QEMU_IMG, QEMU_IO, runTool } from '../../src/qemu/index.js';
import { ramScratchDir } from '../support/scratch.js';

const dir = ramScratchDir('qh-bitmap-check-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
let seq = 0;

interface Layout {
  clusterSize: number;
  /** Offset of the first refcount block (these images have one). */
  refblock: number;
  directory: number;
  table: number;
}

function layout(b: Buffer): Layout {
  const clusterSize = 2 ** b.readUInt32BE(20);
  const reftable = Number(b.readBigUInt64BE(48));
  let pos = b.readUInt32BE(100);
  for (;;) {
    const type = b.readUInt32BE(pos);
    if (type === 0) throw new Error('no bitmaps extension');
    if (type === 0x23852875) {
      const directory = Number(b.readBigUInt64BE(pos + 8 + 16));
      return { clusterSize, refblock: Number(b.readBigUInt64BE(reftable)), directory, table: Number(b.readBigUInt64BE(directory)) };
    }
    pos += 8 + Math.ceil(b.readUInt32BE(pos + 4) / 8) * 8;
  }
}

/** A 4 MiB image with bitmap b0 and 64 KiB of data, made by qemu-img/qemu-io. */
async function imageWithBitmap(): Promise<string> {
  const f = path.join(dir, `b${++seq}.qcow2`);
  for (const args of [['create', '-q', '-f', 'qcow2', f, '4M'], ['bitmap', '--add', f, 'b0']]) expect((await runTool(QEMU_IMG, args)).rc).toBe(0);
  expect((await runTool(QEMU_IO, ['-c', 'write 0 64k', f])).rc).toBe(0);
  return f;
}

function mutate(f: string, fn: (b: Buffer, at: Layout) => void): Buffer {
  const b = fs.readFileSync(f);
  fn(b, layout(b));
  fs.writeFileSync(f, b);
  return b;
}

function copy(f: string): string {
  const g = f.replace(/\.qcow2$/, `-${++seq}.qcow2`);
  fs.copyFileSync(f, g);
  return g;
}

async function ours(argv: string[]): Promise<{ rc: number; out: string; err: string }> {
  const ctx = bufferContext(dir);
  const rc = await runCli(argv, ctx);
  return { rc, out: ctx.out, err: ctx.err };
}

/** The refcount (16-bit, the default) of the cluster at `offset`. */
const setRefcount = (b: Buffer, at: Layout, offset: number, v: number) => b.writeUInt16BE(v, at.refblock + 2 * (offset / at.clusterSize));

describe('check on a bitmap QEMU cannot load', () => {
  it('an in-use bitmap whose table has an invalid entry: check fails with EINVAL, as qemu-img check', async () => {
    const f = await imageWithBitmap();
    // In use: open does not load its table (load_bitmap skips it), check does (bitmap_table_load).
    const bytes = mutate(f, (b, at) => {
      b.writeUInt32BE(b.readUInt32BE(at.directory + 12) | 1, at.directory + 12);
      b.writeBigUInt64BE(0x2n, at.table);
    });
    for (const repair of [[], ['-r', 'all']]) {
      const q = copy(f);
      const theirs = await runTool(QEMU_IMG, ['check', ...repair, '--output=json', q]);
      expect(theirs.rc).toBe(1);
      expect(theirs.stdout).toBe('');
      expect(theirs.stderr.trim()).toBe('qemu-img: Check failed: Invalid argument');
      const o = copy(f);
      const mine = await ours(['check', ...repair, '--output', 'json', o]);
      expect(mine.rc, mine.err).toBe(1);
      expect(mine.out).toBe('');
      expect(mine.err).toBe('qcow2-harness: Check failed: Invalid argument\n');
      // Nothing was repaired on the way, by either.
      expect(fs.readFileSync(o).equals(bytes)).toBe(true);
      expect(fs.readFileSync(q).equals(bytes)).toBe(true);
    }
  });

  it('a directory that no longer loads at check time is a corruption that ends the check, not a check error', async () => {
    const f = await imageWithBitmap();
    const bytes = new Uint8Array(fs.readFileSync(f));
    const at = layout(Buffer.from(bytes));
    const storage = new MemoryStorage(bytes);
    const img = Qcow2Image.open(storage, { readOnly: true });
    try {
      // Open loaded it; now its entry names an unknown bitmap type (check_dir_entry refuses it).
      storage.write(at.directory + 16, Uint8Array.of(2));
      let err: unknown;
      try {
        img.check('none');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(CheckGaveUpError);
      const partial = (err as CheckGaveUpError).partial;
      expect(partial.corruptions).toBe(1);
      expect(partial.checkErrors).toBe(0);
      expect((err as Error).message).toMatch(/^bitmap directory cannot be loaded \(Bitmap 'b0' doesn't satisfy the constraints\): Invalid argument$/);
    } finally {
      img.close();
    }
  });
});

describe('writes the allocator would put on bitmap metadata', () => {
  /** Two writes fill the two holes qemu-img bitmap --add leaves; the third gets the next cluster whose refcount reads 0. */
  const WRITES = ['write -P 1 64k 64k', 'write -P 2 128k 64k', 'write -P 3 192k 64k'];

  it('the bitmap directory: refused as an overlap and the image marked corrupt, as qemu-io does', async () => {
    const f = await imageWithBitmap();
    mutate(f, (b, at) => setRefcount(b, at, at.directory, 0));
    const q = copy(f);
    const theirs = await runTool(QEMU_IO, WRITES.flatMap((c) => ['-c', c]).concat([q]));
    expect(theirs.stderr).toContain('Preventing invalid write on metadata (overlaps with bitmap directory)');
    expect(theirs.stdout.match(/^wrote /gm)?.length).toBe(2);
    const o = copy(f);
    const mine = await ours(['io', ...WRITES.flatMap((c) => ['-c', c]), o]);
    expect(mine.rc).toBe(theirs.rc);
    expect(mine.out.match(/^wrote /gm)?.length).toBe(2);
    expect(mine.out + mine.err).toMatch(/write failed: .*overlaps the bitmap directory/);
    for (const g of [q, o]) {
      const info = await runTool(QEMU_IMG, ['info', '--output=json', g]);
      expect(JSON.parse(info.stdout)['format-specific'].data.corrupt).toBe(true);
    }
    // The directory itself is intact in ours: qemu-img still lists the bitmap.
    const info = JSON.parse((await runTool(QEMU_IMG, ['info', '--output=json', '-U', o])).stdout);
    expect(info['format-specific'].data.bitmaps.map((x: { name: string }) => x.name)).toEqual(['b0']);
  });

  it('a bitmap table: refused as an overlap too, where QEMU overwrites it', async () => {
    const f = await imageWithBitmap();
    const before = mutate(f, (b, at) => setRefcount(b, at, at.table, 0));
    const at = layout(before);
    const o = copy(f);
    const mine = await ours(['io', ...WRITES.flatMap((c) => ['-c', c]), o]);
    expect(mine.rc).toBe(1);
    expect(mine.out + mine.err).toMatch(/write failed: .*overlaps the bitmap table/);
    const after = fs.readFileSync(o);
    expect(after.subarray(at.table, at.table + at.clusterSize).equals(before.subarray(at.table, at.table + at.clusterSize))).toBe(true);
  });
});
