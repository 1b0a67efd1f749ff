/**
 * Crash ops on QEMU's driver: the state a qemu-io killed after its batch
 * leaves is a real crash state (unflushed metadata lost), the crash oracle
 * judges it, and the known QEMU bug it found is declined unless strict.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { TraceConfig } from '../config.js';
import { runTrace } from '../execute.js';
import { parseOp } from '../ops.js';
import { reproScript } from '../repro.js';
import { QemuTarget } from './qemu.js';
import { spawnSync } from 'node:child_process';
import type { CrashImage } from './types.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-qemu-crash-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const plain: TraceConfig = { size: 65536, clusterSize: 4096, refcountBits: 16, compat: '1.1', lazyRefcounts: false, extendedL2: false, compressionType: 'zlib' };
const ops = (...t: string[]) => ({ ops: t.map(parseOp) });

/** The one crash state the target offers after running `texts` as one batch. */
async function stateAfter(texts: string[]): Promise<CrashImage | undefined> {
  const t = new QemuTarget();
  const dir = fs.mkdtempSync(path.join(tmp, 's-'));
  await t.setup(plain, dir);
  await t.run(texts.map((x, i) => ({ op: parseOp(x), index: i + 1, data: x.startsWith('write ') ? new Uint8Array(4096).fill(0x5a) : undefined })));
  let seen: CrashImage | undefined;
  const cov = await t.crashImages(24, 1, async (c) => ((seen = c), true));
  expect(cov.states).toBe(seen ? 1 : 0);
  return seen;
}

describe('crash ops on the qemu target', () => {
  it('a write the batch did not flush is lost in the crash state (its L2 entry was still cached), a flushed one is kept', async () => {
    const lost = await stateAfter(['write 0 4096']);
    expect(lost?.opened).toBe(true);
    expect(lost && lost.opened && lost.guest.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    const kept = await stateAfter(['write 0 4096', 'flush']);
    expect(kept && kept.opened && kept.guest.subarray(0, 4096).every((b) => b === 0x5a)).toBe(true);
  });

  it('after a qemu-img op nothing is pending: no state', async () => {
    const t = new QemuTarget();
    const dir = fs.mkdtempSync(path.join(tmp, 'n-'));
    await t.setup(plain, dir);
    await t.run([{ op: parseOp('write 0 4096'), index: 1, data: new Uint8Array(4096) }]);
    await t.run([{ op: parseOp('snapshot -c s1'), index: 2 }]);
    const cov = await t.crashImages(24, 1, async () => true);
    expect(cov.states).toBe(0);
  });

  it('a dirty lazy-refcounts crash state is repaired on open and passes; so does a plain one', async () => {
    for (const config of [{ ...plain, lazyRefcounts: true }, plain]) {
      const r = await runTrace(new QemuTarget(), config, ops('write 0 4096', 'flush', 'write 8192 4096', 'discard 0 4096', 'crash', 'write 0 512'), { tmpRoot: tmp });
      expect(r.failure).toBeUndefined();
    }
  });

  it('finds QEMU discarding a data file cluster before the L2 update (strict), and declines the crash otherwise', async () => {
    const config: TraceConfig = { ...plain, dataFile: { raw: false }, encrypt: { format: 'luks' } };
    const trace = ops('write 0 4096', 'flush', 'discard 0 4096', 'crash');
    const strict = await runTrace(new QemuTarget(undefined, { strict: true }), config, trace, { tmpRoot: tmp });
    expect(strict.failure?.oracle).toBe('crash');
    expect(strict.failure?.message).toMatch(/qemu-io killed .* at guest offset 0 read foreign bytes/);
    const lax = await runTrace(new QemuTarget(), config, trace, { tmpRoot: tmp });
    expect(lax.failure).toBeUndefined();
    expect([...lax.refused]).toEqual([4]);
  });

  it('repro.sh replays the batch, kills it and judges the state with qemu tools alone', async () => {
    const cases: [TraceConfig, string[], number, RegExp][] = [
      [{ ...plain, dataFile: { raw: false }, encrypt: { format: 'luks' } }, ['write 0 4096', 'flush', 'discard 0 4096', 'crash'], 1, /BUG: crash state: guest byte 0 is neither/],
      [{ ...plain, lazyRefcounts: true }, ['write 0 4096', 'flush', 'write 8192 4096', 'discard 0 4096', 'crash'], 0, /crash state as allowed/],
    ];
    for (const [config, texts, rc, says] of cases) {
      const r = await runTrace(new QemuTarget(undefined, { strict: true }), config, ops(...texts), { tmpRoot: tmp });
      const script = reproScript({ target: 'qemu', config, ops: r.ops, model: r.model!, refused: r.refused, oracle: 'crash', message: 'crash' });
      const f = path.join(tmp, `repro-${rc}.sh`);
      fs.writeFileSync(f, script);
      const run = spawnSync('sh', [f], { encoding: 'utf8' });
      expect({ rc: run.status, says: says.test(run.stdout) }, run.stdout + run.stderr).toEqual({ rc, says: true });
    }
  });
});
