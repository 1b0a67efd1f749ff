/**
 * `check -r leaks` and OFLAG_COPIED, against qemu-img 7.2 on the same bytes:
 * check_oflag_copied repairs a wrong COPIED flag under -r leaks too, but
 * only when nothing else is wrong (the refcounts are then exact). Exit
 * code, counts and the state qemu-img check finds afterwards must agree.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bufferContext } from '../../src/cli/context.js';
import { runCli } from '../../src/cli/run.js';
import { QEMU_IMG, QEMU_IO, runTool } from '../../src/qemu/index.js';
import { qemuCheck } from '../support/qemu.js';
import { ramScratchDir } from '../support/scratch.js';

const dir = ramScratchDir('qh-check-leaks-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
let seq = 0;

const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
const COPIED = 1n << 63n;

/** An image with 64 KiB of data, then `damage` applied to its bytes: returns the path. */
async function damaged(damage: (b: Buffer, firstL2Entry: number, refblock: number) => void): Promise<string> {
  const f = path.join(dir, `c${++seq}.qcow2`);
  expect((await runTool(QEMU_IMG, ['create', '-q', '-f', 'qcow2', f, '4M'])).rc).toBe(0);
  expect((await runTool(QEMU_IO, ['-c', 'write 0 64k', f])).rc).toBe(0);
  const b = fs.readFileSync(f);
  const l1 = Number(b.readBigUInt64BE(40));
  const l2 = Number(b.readBigUInt64BE(l1) & L1E_OFFSET_MASK);
  const refblock = Number(b.readBigUInt64BE(Number(b.readBigUInt64BE(48))));
  damage(b, l2, refblock);
  fs.writeFileSync(f, b);
  return f;
}

const clearCopied = (b: Buffer, at: number) => b.writeBigUInt64BE(b.readBigUInt64BE(at) & ~COPIED, at);
const counts = (j: Record<string, number> | undefined) => ({
  corruptions: j?.corruptions ?? 0,
  leaks: j?.leaks ?? 0,
  'corruptions-fixed': j?.['corruptions-fixed'] ?? 0,
  'leaks-fixed': j?.['leaks-fixed'] ?? 0,
});

async function both(f: string): Promise<void> {
  const q = `${f}.q.qcow2`;
  const o = `${f}.o.qcow2`;
  fs.copyFileSync(f, q);
  fs.copyFileSync(f, o);
  const theirs = await qemuCheck(q, 'leaks');
  const ctx = bufferContext(dir);
  const rc = await runCli(['check', '-r', 'leaks', '--output', 'json', o], ctx);
  const mine = ctx.out ? (JSON.parse(ctx.out) as Record<string, number>) : undefined;
  expect(rc, ctx.err).toBe(theirs.rc);
  expect(counts(mine), `${ctx.err}\nqemu: ${theirs.stderr} ${JSON.stringify(theirs.json)}`).toEqual(counts(theirs.json));
  const [afterTheirs, afterMine] = [await qemuCheck(q), await qemuCheck(o)];
  expect(afterMine.rc).toBe(afterTheirs.rc);
  expect(counts(afterMine.json)).toEqual(counts(afterTheirs.json));
}

describe('check -r leaks repairs OFLAG_COPIED as qemu-img does', () => {
  it('only a COPIED flag wrong: repaired', async () => {
    await both(await damaged((b, l2) => clearCopied(b, l2)));
  });

  it('a COPIED flag wrong and a leak: the leak is fixed first, then the flag', async () => {
    // The header cluster's refcount 1 -> 2: a leak -r leaks repairs.
    await both(await damaged((b, l2, refblock) => {
      clearCopied(b, l2);
      b.writeUInt16BE(2, refblock);
    }));
  });

  it('a COPIED flag wrong and a refcount of 0 (a rebuild, which -r leaks does not do): both give up, nothing repaired', async () => {
    // The L2 table's refcount 1 -> 0: compare_refcounts wants a rebuild, and -r leaks ends with EIO.
    await both(await damaged((b, l2, refblock) => {
      clearCopied(b, l2);
      b.writeUInt16BE(0, refblock + 2 * (l2 / 65536));
    }));
  });
});
