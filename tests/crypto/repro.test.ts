/**
 * repro.sh of a trace on an encrypted image runs with qemu-img/qemu-io alone:
 * every qemu command gets the harness secret (--object, --image-opts), ops
 * QEMU 7.2 would get wrong (a compressed write) are left out, a saved image is
 * checked with its key, and the script still catches a problem: a saved
 * image whose data was damaged, and an expected view QEMU does not show.
 */
import { execa } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HARNESS_SECRET, toModelConfig, type TraceConfig } from '../../src/harness/config.js';
import { runTrace } from '../../src/harness/execute.js';
import { applyOp, type Op } from '../../src/harness/ops.js';
import { reproScript } from '../../src/harness/repro.js';
import { makeTarget } from '../../src/harness/targets/index.js';
import { DiskModel } from '../../src/model/disk.js';
import { scratchDir } from '../cli/helpers.js';

let dir: string;
beforeAll(() => {
  dir = scratchDir('crypto-repro');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const base: Omit<TraceConfig, 'encrypt'> = {
  size: 256 * 1024,
  clusterSize: 4096,
  refcountBits: 16,
  compat: '1.1',
  lazyRefcounts: true,
  extendedL2: false,
  compressionType: 'zlib',
};
// Op 2 is a compressed write, which our engine refuses on an encrypted image and QEMU 7.2 would take.
const ops: Op[] = [
  { kind: 'write', off: 0, len: 8192 },
  { kind: 'write-compressed', off: 65536, len: 4096 },
  { kind: 'snapshot', action: 'create', name: 'snap1' },
  { kind: 'write-zeroes', off: 4096, len: 4096, unmap: false },
  { kind: 'resize', size: 512 * 1024, shrink: false },
  { kind: 'write', off: 300 * 1024, len: 1024 },
];

async function entryFor(format: 'luks' | 'aes', corruptModel = false) {
  const config: TraceConfig = { ...base, encrypt: { format } };
  const r = await runTrace(makeTarget('ts'), config, { ops }, { tmpRoot: dir, keepDir: true });
  expect(r.failure).toBeUndefined();
  expect([...r.refused]).toEqual([2]);
  const entry = fs.mkdtempSync(path.join(dir, `entry-${format}-`));
  fs.copyFileSync(path.join(r.dir!, 'image.qcow2'), path.join(entry, 'image.qcow2'));
  const model = new DiskModel(toModelConfig(config));
  ops.forEach((op, i) => {
    if (i + 1 !== 2) applyOp(model, op, i + 1);
  });
  // An expected view QEMU cannot show: the script must say so.
  if (corruptModel) applyOp(model, { kind: 'write', off: 0, len: 512 }, 99);
  const script = reproScript({ target: 'ts', config, ops, model, refused: r.refused, oracle: 'read', message: 'none' });
  fs.writeFileSync(path.join(entry, 'repro.sh'), script);
  return { entry, script };
}

const run = (entry: string) => execa('sh', [path.join(entry, 'repro.sh')], { reject: false, env: { LC_ALL: 'C', PATH: process.env.PATH } });

describe.each(['luks', 'aes'] as const)('%s', (format) => {
  it('the script passes with qemu tools alone, giving every command the secret and leaving the compressed write out', async () => {
    const { entry, script } = await entryFor(format);
    expect(script).toContain(`--object 'secret,id=${HARNESS_SECRET.id},data=${HARNESS_SECRET.data}'`);
    expect(script).toContain(`encrypt.format=${format}`);
    expect(script).toContain('# op 2 (write -c 65536 4096) left out');
    expect(script).not.toMatch(/-f qcow2 image\.qcow2|qemu-img snapshot -c snap1 image\.qcow2/);
    const r = await run(entry);
    expect(r.stdout, String(r.stderr)).toContain('no problem found');
    expect(r.exitCode).toBe(0);
  });

  it('and fails while a problem is present: a damaged saved image, or a view QEMU does not show', async () => {
    const { entry } = await entryFor(format, true);
    const bad = await run(entry);
    expect(bad.stdout).toContain('BUG: guest view differs from the expected one');
    expect(bad.exitCode).toBe(1);
    // Damage the refcount table of the saved image: its check (with the key) must fail.
    const { entry: e2 } = await entryFor(format);
    const img = path.join(e2, 'image.qcow2');
    const buf = fs.readFileSync(img);
    const refTable = Number(buf.readBigUInt64BE(48));
    buf.writeBigUInt64BE(0n, refTable);
    fs.writeFileSync(img, buf);
    const saved = await run(e2);
    expect(saved.stdout).toContain('BUG: saved image.qcow2 fails qemu-img check');
    expect(saved.exitCode).toBe(1);
  });
});
