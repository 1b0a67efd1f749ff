/**
 * Dirty images (config.dirty): a lazy-refcounts image whose producer never
 * closes it cleanly keeps the dirty bit and stale refcounts; writers' end
 * oracles accept exactly that (refcount mismatches that repair fixes), and
 * readers must read it right.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import type { TraceConfig } from '../src/harness/config.js';
import { nonRefcountErrors } from '../src/harness/dirty.js';
import { runTrace } from '../src/harness/execute.js';
import { reproScript } from '../src/harness/repro.js';
import { makeTarget } from '../src/harness/targets/index.js';
import { imgCheck, imgInfo } from '../src/qemu/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-dirty-test-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const dirty: TraceConfig = { size: 65536, clusterSize: 4096, refcountBits: 16, compat: '1.1', lazyRefcounts: true, extendedL2: false, compressionType: 'zlib', dirty: true };
const ops = [
  { kind: 'write' as const, off: 0, len: 8192 },
  { kind: 'reopen' as const },
  { kind: 'write' as const, off: 16384, len: 4096 },
  { kind: 'discard' as const, off: 0, len: 4096 },
  { kind: 'write' as const, off: 32768, len: 4096 },
];

describe('dirty images', () => {
  for (const target of ['qemu', 'ts'] as const) {
    it(`${target} as a writer leaves the image dirty with stale refcounts, and the end oracles accept it`, async () => {
      const r = await runTrace(makeTarget(target), dirty, { ops }, { keepDir: true, tmpRoot: tmp });
      try {
        expect(r.failure).toBeUndefined();
        const image = path.join(r.dir, 'image.qcow2');
        expect((await imgInfo(image))['dirty-flag']).toBe(true);
        const c = await imgCheck(image);
        // What QEMU 7.2 says of its own such image: corruptions, all of them refcount mismatches.
        // Our engine leaves the same: a flush of a dirty lazy-refcounts image writes L2 tables, not
        // the refcounts of the data clusters they point to (qcow2_need_accurate_refcounts).
        expect(c.rc).toBe(2);
        expect(c.json?.corruptions).toBeGreaterThan(0);
        expect(c.json?.['check-errors']).toBe(0);
        expect(nonRefcountErrors(c)).toEqual([]);
      } finally {
        fs.rmSync(r.dir, { recursive: true, force: true });
      }
    });
  }

  it('only refcount mismatches pass for a dirty image: any other complaint of qemu-img check is kept', () => {
    const stderr = 'ERROR cluster 5 refcount=0 reference=1\nERROR OFLAG_COPIED data cluster: l2_entry=8000000000005000 refcount=0\nLeaked cluster 9 refcount=1 reference=0\nERROR l2 table offset 0x1234 not aligned\n';
    expect(nonRefcountErrors({ rc: 2, stderr })).toEqual(['ERROR l2 table offset 0x1234 not aligned']);
  });

  it('a clean close of the same trace leaves no dirty bit (the config is what makes it dirty)', async () => {
    const { dirty: _d, ...clean } = dirty;
    const r = await runTrace(makeTarget('qemu'), clean, { ops }, { keepDir: true, tmpRoot: tmp });
    try {
      expect(r.failure).toBeUndefined();
      expect((await imgInfo(path.join(r.dir, 'image.qcow2')))['dirty-flag'] ?? false).toBe(false);
    } finally {
      fs.rmSync(r.dir, { recursive: true, force: true });
    }
  });

  it('the qemu-only repro.sh of a dirty trace kills qemu-io after each flush and checks the repaired image (exit 0: nothing wrong)', async () => {
    const r = await runTrace(makeTarget('qemu'), dirty, { ops });
    const script = reproScript({ target: 'qemu', config: dirty, ops: r.ops, model: r.model!, refused: r.refused, oracle: 'check', message: 'none' });
    expect(script).toContain('-c flush -c abort');
    const file = path.join(tmp, 'repro.sh');
    fs.writeFileSync(file, script, { mode: 0o755 });
    const out = spawnSync('sh', [file], { encoding: 'utf8' });
    expect(out.stdout).toContain('no problem found');
    expect(out.status).toBe(0);
  });

  it('readers read dirty images of the other engine', async () => {
    for (const [target, producer] of [['ts', 'qemu'], ['qemu', 'ts']] as const) {
      const r = await runTrace(makeTarget(target, { producer }), dirty, { ops });
      expect(r.failure, `${target} reading ${producer}`).toBeUndefined();
    }
  });
});
