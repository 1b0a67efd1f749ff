/**
 * Issue 5: corrupt one metadata entry of a valid image at random — a bit
 * flip in an L1, L2 or refcount-table entry, or a refcount set to another
 * value — and require our check to reach qemu-img check's verdict with the
 * same corruption, leak and check-error counts.
 */
import { fc, test } from '@fast-check/vitest';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { analyzeImage, type ImageLayout } from '../src/harness/mutate/index.js';
import { Qcow2Image } from '../src/qcow2/image.js';
import { MemoryStorage } from '../src/qcow2/storage/memory.js';
import { Qcow2Error } from '../src/qcow2/errors.js';
import { qemuCheckBytes } from '../tests/support/qemu.js';

const SEED = 51127;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-corrupt-prop-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let base: Uint8Array;
let layout: ImageLayout;

beforeAll(() => {
  const f = path.join(dir, 'base.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', f, '4M']);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 64k', '-c', 'write -P 2 1M 12k', '-c', 'write -c -P 3 2M 4k', f]);
  execFileSync('qemu-img', ['snapshot', '-c', 's1', f]);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 4 8k 8k', '-c', 'write -z 40k 8k', f]);
  base = new Uint8Array(fs.readFileSync(f));
  layout = analyzeImage(base);
});

interface Verdict {
  rc: number;
  checkErrors: number;
  corruptions: number;
  leaks: number;
}

async function qemuVerdict(bytes: Uint8Array): Promise<Verdict> {
  const q = await qemuCheckBytes(bytes, path.join(dir, 'q.qcow2'));
  return { rc: q.rc, checkErrors: q.checkErrors, corruptions: q.corruptions, leaks: q.leaks };
}

/** Our check with qemu-img check's exit codes (1 when the image cannot be checked). */
function ourVerdict(bytes: Uint8Array): Verdict {
  try {
    const img = Qcow2Image.open(new MemoryStorage(bytes, { readOnly: true }), { readOnly: true, forCheck: true });
    const r = img.check('none');
    const rc = r.checkErrors ? 1 : r.corruptions ? 2 : r.leaks ? 3 : 0;
    return { rc, checkErrors: r.checkErrors, corruptions: r.corruptions, leaks: r.leaks };
  } catch (e) {
    if (!(e instanceof Qcow2Error)) throw e;
    return { rc: 1, checkErrors: 0, corruptions: 0, leaks: 0 };
  }
}

type Corruption =
  | { kind: 'l1' | 'l2' | 'reftable'; index: number; bit: number }
  | { kind: 'refcount'; cluster: number; value: number };

function apply(c: Corruption): Uint8Array {
  const out = base.slice();
  const v = new DataView(out.buffer);
  if (c.kind === 'refcount') {
    // 16-bit refcounts (qemu-img's default): the first refcount block covers the whole image.
    const block = layout.refblocks[0];
    const cluster = c.cluster % Math.ceil(layout.fileSize / layout.clusterSize);
    v.setUint16(block + cluster * 2, c.value);
    return out;
  }
  const entries =
    c.kind === 'l1'
      ? layout.l1Entries.filter((e) => e.hi !== 0 || e.lo !== 0).map((e) => e.pos)
      : c.kind === 'l2'
        ? layout.dataClusters.map((d) => d.l2EntryPos)
        : layout.reftableEntries.filter((e) => e.hi !== 0 || e.lo !== 0).map((e) => e.pos);
  const pos = entries[c.index % entries.length];
  const byte = pos + 7 - Math.floor(c.bit / 8);
  out[byte] ^= 1 << (c.bit % 8);
  return out;
}

const corruption: fc.Arbitrary<Corruption> = fc.oneof(
  fc.record({ kind: fc.constantFrom('l1' as const, 'l2' as const, 'reftable' as const), index: fc.nat(), bit: fc.integer({ min: 0, max: 63 }) }),
  fc.record({ kind: fc.constant('refcount' as const), cluster: fc.nat(), value: fc.constantFrom(0, 2, 3, 0xffff) }),
);

/** qemu-img check exit codes seen across the runs: the corruptions must reach every verdict. */
const verdicts = new Map<number, number>();

describe('a random metadata corruption: our check agrees with qemu-img check', () => {
  test.prop([corruption], { seed: SEED, numRuns: 60 })('verdict and counts', async (c) => {
    const bytes = apply(c);
    const q = await qemuVerdict(bytes);
    verdicts.set(q.rc, (verdicts.get(q.rc) ?? 0) + 1);
    expect(ourVerdict(bytes), JSON.stringify(c)).toEqual(q);
  });

  it('those corruptions gave clean, corrupt and leaking images alike', () => {
    const seen = Object.fromEntries(verdicts);
    expect([...verdicts.values()].reduce((a, b) => a + b, 0), 'run together with the property above').toBe(60);
    for (const rc of [0, 2, 3]) expect(verdicts.get(rc) ?? 0, `qemu-img check rc ${rc}; seen ${JSON.stringify(seen)}`).toBeGreaterThan(0);
  });
});
