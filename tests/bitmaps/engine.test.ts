/**
 * Persistent dirty bitmaps through our engine, judged by the real QEMU:
 * bitmaps qemu-img added survive our writes (listed, not in use, check
 * clean, no "program lacking bitmap support" warning) and hold exactly the
 * granules QEMU reads back through qemu-nbd; bitmaps we add or change are
 * what qemu-img info and qemu-nbd see; bitmaps in use at open stay as QEMU
 * leaves them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openQcow2File } from '../../src/qcow2/open-file.js';
import { imgInfo, qemuDirtyRanges, QEMU_IMG, QEMU_IO, runTool } from '../../src/qemu/index.js';
import { qemuCheck } from '../support/qemu.js';
import { ramScratchDir } from '../support/scratch.js';

const dir = ramScratchDir('qh-bitmaps-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
let seq = 0;

async function tool(bin: string, args: string[]): Promise<string> {
  const r = await runTool(bin, args);
  if (r.rc !== 0) throw new Error(`${bin} ${args.join(' ')}: rc ${r.rc}: ${r.stderr}`);
  return r.stdout + r.stderr;
}

async function image(size: string, bitmaps: string[][], opts = ''): Promise<string> {
  const f = path.join(dir, `i${++seq}.qcow2`);
  await tool(QEMU_IMG, ['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), f, size]);
  for (const b of bitmaps) await tool(QEMU_IMG, ['bitmap', '--add', ...b.slice(0, -1), f, b[b.length - 1]!]);
  return f;
}

/** The granule-exact dirty set QEMU keeps for byte ranges: every granule a range touches, merged. */
function expected(ranges: [number, number][], g: number, size: number): [number, number][] {
  const out: [number, number][] = [];
  const marks = new Set<number>();
  for (const [o, l] of ranges) for (let k = Math.floor(o / g); k <= Math.floor((o + l - 1) / g); k++) marks.add(k);
  for (const k of [...marks].sort((a, b) => a - b)) {
    const start = k * g;
    const len = Math.min(g, size - start);
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === start) last[1] += len;
    else out.push([start, len]);
  }
  return out;
}

async function bitmapsOf(f: string): Promise<{ name: string; flags: string[]; granularity: number }[]> {
  const info = (await imgInfo(f)) as unknown as { 'format-specific': { data: { bitmaps?: { name: string; flags: string[]; granularity: number }[] } } };
  return info['format-specific'].data.bitmaps ?? [];
}

async function assertHealthy(f: string): Promise<void> {
  const c = await qemuCheck(f);
  expect(c.out).not.toMatch(/lacking bitmap support/);
  expect([c.rc, c.corruptions, c.leaks, c.checkErrors]).toEqual([0, 0, 0, 0]);
  // Our check agrees: bitmap directory, tables and data clusters are referenced.
  const img = openQcow2File(f, { readOnly: true });
  try {
    const r = img.check();
    expect([r.corruptions, r.leaks, r.checkErrors]).toEqual([0, 0, 0]);
  } finally {
    img.close();
  }
}

const WRITES: [number, number][] = [
  [5000, 100],
  [65536 * 3 - 10, 20],
  [1 << 20, 4096],
];

describe('bitmaps qemu-img added, after writes through our engine', () => {
  it('are listed without in-use, check clean, and the enabled one holds exactly the written granules', async () => {
    const size = 4 << 20;
    const f = await image('4M', [['b0'], ['-g', '4k', 'b4k'], ['--disable', 'off']]);
    const img = openQcow2File(f);
    img.write(WRITES[0]![0], new Uint8Array(WRITES[0]![1]).fill(1));
    img.writeZeroes(WRITES[1]![0], WRITES[1]![1]);
    img.discard(WRITES[2]![0], WRITES[2]![1]);
    // In use while we hold the image, as QEMU marks them before its first write.
    const during = await runTool(QEMU_IMG, ['info', '-U', '--output=json', f]);
    expect(during.stdout).toContain('in-use');
    img.close();
    expect(await bitmapsOf(f)).toEqual([
      { name: 'b0', flags: ['auto'], granularity: 65536 },
      { name: 'b4k', flags: ['auto'], granularity: 4096 },
      { name: 'off', flags: [], granularity: 65536 },
    ]);
    await assertHealthy(f);
    expect(await qemuDirtyRanges(f, 'b0')).toEqual(expected(WRITES, 65536, size));
    expect(await qemuDirtyRanges(f, 'b4k')).toEqual(expected(WRITES, 4096, size));
    expect(await qemuDirtyRanges(f, 'off')).toEqual([]);
    // Our own reading agrees.
    const ro = openQcow2File(f, { readOnly: true });
    expect(ro.bitmaps().map((b) => [b.name, b.dirty])).toEqual([
      ['b0', expected(WRITES, 65536, size)],
      ['b4k', expected(WRITES, 4096, size)],
      ['off', []],
    ]);
    ro.close();
  });

  it('keep what QEMU recorded before and add what we write, across sessions, and match qemu-io doing the same', async () => {
    const ours = await image('8M', [['-g', '512', 'fine'], ['b0']], 'cluster_size=4096');
    const theirs = path.join(dir, `q${++seq}.qcow2`);
    fs.copyFileSync(ours, theirs);
    for (const f of [ours, theirs]) await tool(QEMU_IO, ['-c', 'write 7M 3k', f]);
    const ops: { kind: 'write' | 'zero' | 'discard'; off: number; len: number; qemu: string }[] = [
      { kind: 'write', off: 1000, len: 1, qemu: 'write 1000 1' },
      { kind: 'zero', off: 12345, len: 70000, qemu: 'write -z 12345 70000' },
      { kind: 'discard', off: 3 << 20, len: 512, qemu: 'discard 3M 512' },
    ];
    for (const op of ops) {
      const img = openQcow2File(ours);
      if (op.kind === 'write') img.write(op.off, new Uint8Array(op.len).fill(7));
      else if (op.kind === 'zero') img.writeZeroes(op.off, op.len);
      else img.discard(op.off, op.len);
      img.close();
      await tool(QEMU_IO, ['-c', op.qemu, theirs]);
    }
    for (const name of ['fine', 'b0']) expect(await qemuDirtyRanges(ours, name)).toEqual(await qemuDirtyRanges(theirs, name));
    expect(await qemuDirtyRanges(ours, 'fine')).not.toEqual([]);
    await assertHealthy(ours);
  });
});

describe('bitmaps we add and change', () => {
  it('are read by qemu-img info and qemu-nbd', async () => {
    const f = await image('2M', []);
    const img = openQcow2File(f);
    img.bitmap({ op: 'add', name: 'new' });
    img.bitmap({ op: 'add', name: 'cold', granularity: 8192, disabled: true });
    img.write(70000, new Uint8Array(10));
    img.close();
    expect(await bitmapsOf(f)).toEqual([
      { name: 'new', flags: ['auto'], granularity: 65536 },
      { name: 'cold', flags: [], granularity: 8192 },
    ]);
    expect(await qemuDirtyRanges(f, 'new')).toEqual([[65536, 65536]]);
    expect(await qemuDirtyRanges(f, 'cold')).toEqual([]);
    await assertHealthy(f);
    const again = openQcow2File(f);
    again.bitmap({ op: 'merge', name: 'cold', source: again.bitmaps()[0]! });
    again.bitmap({ op: 'remove', name: 'new' });
    again.close();
    expect(await bitmapsOf(f)).toEqual([{ name: 'cold', flags: [], granularity: 8192 }]);
    // A merge sets every target granule a source granule covers (hbitmap_merge across granularities).
    expect(await qemuDirtyRanges(f, 'cold')).toEqual([[65536, 65536]]);
    await assertHealthy(f);
    const last = openQcow2File(f);
    last.bitmap({ op: 'remove', name: 'cold' });
    last.close();
    expect(await bitmapsOf(f)).toEqual([]);
    await assertHealthy(f);
  });
});

describe('a bitmap in use at open', () => {
  it('keeps its flags, table and clusters, as QEMU leaves it, and blocks resize as QEMU does', async () => {
    const f = await image('4M', [['b0'], ['keep']]);
    await tool(QEMU_IO, ['-c', 'write 0 64k', f]);
    // Make b0 look like a crashed session: set in_use in its directory entry (the first entry's flags).
    const info = openQcow2File(f, { readOnly: true });
    info.close();
    const bytes = fs.readFileSync(f);
    const dirOff = findDirectory(bytes);
    bytes.writeUInt32BE(bytes.readUInt32BE(dirOff + 12) | 1, dirOff + 12);
    fs.writeFileSync(f, bytes);
    const before = await bitmapsOf(f);
    expect(before[0]).toEqual({ name: 'b0', flags: ['in-use', 'auto'], granularity: 65536 });
    const img = openQcow2File(f);
    img.write(1 << 20, new Uint8Array(512));
    expect(() => img.resize(8 << 20)).toThrow(/Bitmap 'b0' is inconsistent and cannot be used/);
    expect(() => img.bitmap({ op: 'clear', name: 'b0' })).toThrow(/inconsistent/);
    img.close();
    expect(await bitmapsOf(f)).toEqual(before.map((b) => ({ ...b, flags: b.name === 'keep' ? ['auto'] : b.flags })));
    await assertHealthy(f);
    expect(await qemuDirtyRanges(f, 'keep')).toEqual([[0, 65536], [1 << 20, 65536]]);
  });
});

/** The bitmap directory offset from the bitmaps header extension (type 0x23852875) after the 104+ byte header. */
function findDirectory(b: Buffer): number {
  let pos = b.readUInt32BE(100);
  for (;;) {
    const type = b.readUInt32BE(pos);
    const len = b.readUInt32BE(pos + 4);
    if (type === 0) throw new Error('no bitmaps extension');
    if (type === 0x23852875) return Number(b.readBigUInt64BE(pos + 8 + 16));
    pos += 8 + Math.ceil(len / 8) * 8;
  }
}
