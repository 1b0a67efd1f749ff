import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { reportError } from '../cli/errors.js';
import { describeError } from '../harness/hostile.js';
import { InvalidArgumentError, Qcow2Error } from '../qcow2/errors.js';
import { HangError, ToolError } from './errors.js';
import { imgAmend, imgCheck, imgCompare, imgConvertToRaw, imgCreate, imgInfo, imgResize, imgSnapshot } from './img.js';
import { qemuIoBatch } from './io.js';
import { runTool } from './run.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qemu-wrap-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('qemu wrappers (real qemu-img/qemu-io)', () => {
  it('create, io batch with a failure in the middle, info, check, convert, compare', async () => {
    const img = path.join(dir, 'a.qcow2');
    await imgCreate(img, { size: 65536, clusterSize: 4096, refcountBits: 8, compat: '1.1', lazyRefcounts: true });
    const data = path.join(dir, 'data');
    fs.writeFileSync(data, Buffer.alloc(1024, 0xab));
    const r = await qemuIoBatch(img, [`write -s ${data} 0 1024`, 'write -c 512 512', 'flush', 'discard 0 4096', 'write -z 0 512']);
    expect(r.results.map((x) => x.ok)).toEqual([true, false, true, true, true]);
    expect(r.results[1]!.error).toBe('Invalid argument');
    const info = await imgInfo(img);
    expect(info['virtual-size']).toBe(65536);
    expect(info['format-specific']!.data['refcount-bits']).toBe(8);
    expect(info['format-specific']!.data['lazy-refcounts']).toBe(true);
    const check = await imgCheck(img);
    expect(check.rc).toBe(0);
    expect(check.json!['check-errors']).toBe(0);
    const raw = path.join(dir, 'a.raw');
    await imgConvertToRaw(img, raw);
    expect(fs.statSync(raw).size).toBe(65536);
    expect((await imgCompare(img, raw, { formatA: 'qcow2', formatB: 'raw' })).rc).toBe(0);
    fs.writeFileSync(raw, Buffer.alloc(512, 1), { flag: 'r+' });
    expect((await imgCompare(img, raw, { formatA: 'qcow2', formatB: 'raw' })).rc).toBe(1);
  });

  it('snapshot, amend and resize report refusals as results', async () => {
    const img = path.join(dir, 'b.qcow2');
    await imgCreate(img, { size: 65536, compat: '0.10' });
    expect((await imgSnapshot(img, 'c', 's1')).rc).toBe(0);
    expect((await imgSnapshot(img, 'a', 'nope')).rc).not.toBe(0);
    expect((await imgResize(img, 131072)).rc).not.toBe(0); // v2 with snapshots
    expect((await imgAmend(img, 'lazy_refcounts=on')).rc).not.toBe(0);
    expect((await imgAmend(img, 'compat=1.1')).rc).toBe(0);
    expect((await imgResize(img, 32768, { shrink: true })).rc).toBe(0);
    expect((await imgInfo(img))['virtual-size']).toBe(32768);
    const raw = path.join(dir, 'b.raw');
    await imgConvertToRaw(img, raw, { snapshotId: '1' });
    // QEMU loads the snapshot's L1 table but keeps the active virtual size.
    expect(fs.statSync(raw).size).toBe(32768);
  });

  it('a call that outlives its timeout raises HangError, which no classifier takes for a clean refusal', async () => {
    const hang: unknown = await runTool('sleep', ['5'], 100).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(hang).toBeInstanceOf(HangError);
    expect(hang).toBeInstanceOf(ToolError);
    // `instanceof Qcow2Error` means "the engine refused cleanly" in the ts target's op loop.
    expect(hang).not.toBeInstanceOf(Qcow2Error);
    // The hostile runner: a refusal is `qcow2: true`; anything else is reported with its stack.
    expect(describeError(hang).qcow2).toBe(false);
    expect(describeError(new InvalidArgumentError('x')).qcow2).toBe(true);
    // The CLI: one line, exit 1 (not the engine's wording, not "internal error", exit 70).
    const r = reportError(hang);
    expect(r.exitCode).toBe(1);
    expect(r.message).toBe('sleep 5 did not finish within 100 ms');
  });
});
