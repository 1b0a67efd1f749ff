/**
 * Other commands on images with persistent bitmaps, ours against qemu-img 7.2
 * on copies of one image: amend (a compat=0.10 downgrade loses the bitmaps
 * and leaks their clusters in QEMU, and so in ours), snapshot create and
 * apply (refused while bitmaps exist), resize both ways (bitmaps follow the
 * size) and check -r. Same exit code, same bitmaps listed, same dirty
 * granules read back through qemu-nbd, same qemu-img check verdict.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qemuDirtyRanges } from '../../src/qemu/index.js';
import { ours, qemuImg, qemuIo, scratchDir } from '../cli/helpers.js';

const dir = scratchDir('bitmap-interplay');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const CASES: [string, string[]][] = [
  ['amend compat=0.10', ['amend', '-o', 'compat=0.10', 'F']],
  ['amend refcount_bits=8', ['amend', '-o', 'refcount_bits=8', 'F']],
  ['amend lazy_refcounts=on', ['amend', '-o', 'lazy_refcounts=on', 'F']],
  ['snapshot -c', ['snapshot', '-c', 's1', 'F']],
  ['snapshot -a (refused)', ['snapshot', '-a', 'nope', 'F']],
  ['resize grow', ['resize', 'F', '8M']],
  ['resize shrink', ['resize', '--shrink', 'F', '1M']],
  ['check -r all', ['check', '-r', 'all', 'F']],
];

async function outcome(f: string, rc: number): Promise<unknown> {
  const info = await qemuImg(['info', '--output=json', f]);
  const bitmaps = (JSON.parse(info.stdout) as { 'format-specific': { data: { bitmaps?: { name: string }[] } } })['format-specific'].data.bitmaps ?? [];
  const dirty = [];
  for (const b of bitmaps) dirty.push([b.name, await qemuDirtyRanges(f, b.name)]);
  const chk = await qemuImg(['check', '--output=json', f]);
  const leaks = (JSON.parse(chk.stdout) as { leaks?: number }).leaks ?? 0;
  return { rc, bitmaps, dirty, check: chk.rc, leaks, warning: /lacking bitmap support|may have been modified/.test(info.stderr) };
}

describe.concurrent('commands on images with bitmaps, as qemu-img', () => {
  it.each(CASES)('%s', async (label, cmd) => {
    const results: unknown[] = [];
    for (const who of ['qemu', 'ours'] as const) {
      const f = path.join(dir, `${who}-${label.replace(/\W+/g, '_')}.qcow2`);
      expect((await qemuImg(['create', '-q', '-f', 'qcow2', f, '4M'])).rc).toBe(0);
      expect((await qemuImg(['bitmap', '--add', f, 'b0'])).rc).toBe(0);
      expect((await qemuImg(['bitmap', '--add', '-g', '512', f, 'fine'])).rc).toBe(0);
      expect((await qemuIo(['-c', 'write 1000 64k', '-c', 'write 3M 512', f])).rc).toBe(0);
      const args = cmd.map((a) => (a === 'F' ? f : a));
      const r = who === 'qemu' ? await qemuImg(args) : await ours(dir, args);
      results.push(await outcome(f, r.rc));
    }
    expect(results[1]).toEqual(results[0]);
  });
});
