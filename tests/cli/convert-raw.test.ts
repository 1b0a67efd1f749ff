/**
 * convert -O raw's output (src/cli/convert-raw.ts), written through the page
 * cache (the CLI) and O_DIRECT (convertToRaw's { direct: true }): the same bytes as qemu-img convert -O raw, and the same holes (qemu-img map of both raw files, which reads SEEK_DATA/SEEK_HOLE),
 * on images whose data clusters hold zero granules, partial granules, a
 * size that is no multiple of 4 KiB, and 512-byte clusters whose data runs
 * start off any 4 KiB boundary.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bufferContext } from '../../src/cli/context.js';
import { convertToRaw } from '../../src/cli/convert-raw.js';
import { openReadable } from '../../src/cli/open.js';
import { firstDiff, ioArgs, ok, ours, qemuImg, qemuIo, scratchDir } from './helpers.js';

const dir = scratchDir('convert-raw');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const KiB = 1024;
const MiB = 1024 * KiB;

/** Writes that leave zero granules inside data clusters and data in partial granules, around chunk boundaries. */
const WRITES = [
  'write -P 7 0 64k',
  'write -P 0 4k 8k', // zeros written as data: a hole in qemu-img's output
  'write -P 9 20992 512', // one sector in the middle of a granule
  `write -P 3 ${2 * MiB - 4 * KiB} 12k`, // across the 2 MiB chunk boundary
  `write -P 0 ${2 * MiB + 4 * KiB} 4k`,
  `write -P 5 ${3 * MiB + 512} 3k`, // starts and ends off a granule
  `write -z ${3 * MiB + 64 * KiB} 64k`,
  `write -P 11 ${5 * MiB} 1m`,
];

interface Case {
  name: string;
  cs: number;
  size: number;
}

const cases: Case[] = [
  { name: '64 KiB clusters, size a multiple of 4 KiB plus 1536', cs: 64 * KiB, size: 8 * MiB + 1536 },
  { name: '512 B clusters', cs: 512, size: 6 * MiB + 512 },
];

async function dataMap(file: string): Promise<unknown> {
  const r = ok(await qemuImg(['map', '--output=json', '-f', 'raw', file]), 'qemu-img map');
  return (JSON.parse(r.stdout) as { start: number; length: number; data: boolean; zero: boolean }[]).map(({ start, length, data, zero }) => ({ start, length, data, zero }));
}

describe('convert -O raw gives qemu-img\'s bytes and holes', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const img = path.join(dir, `${c.cs}.qcow2`);
      ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${c.cs}`, img, String(c.size)]), 'qemu-img create');
      ok(await qemuIo(['-f', 'qcow2', ...ioArgs([...WRITES, `write -P 13 ${c.size - 1536} 1536`]), img]), 'qemu-io');
      const ref = path.join(dir, `${c.cs}.qemu.raw`);
      ok(await qemuImg(['convert', '-O', 'raw', img, ref]), 'qemu-img convert');
      const refMap = await dataMap(ref);
      expect((refMap as { data: boolean }[]).some((e) => !e.data), 'qemu-img left holes').toBe(true);

      const viaCli = path.join(dir, `${c.cs}.cli.raw`);
      const r = await ours(dir, ['convert', '-O', 'raw', img, viaCli]);
      expect(r.stderr).toBe('');
      expect(r.rc).toBe(0);
      const direct = path.join(dir, `${c.cs}.direct.raw`);
      const src = openReadable(bufferContext(dir), img, { format: 'qcow2' });
      try {
        await convertToRaw(src, direct, { direct: true });
      } finally {
        src.device.close();
      }
      for (const mine of [viaCli, direct]) {
        const name = path.basename(mine);
        expect(fs.statSync(mine).size, `${name}: size`).toBe(c.size);
        expect(firstDiff(mine, ref), `${name}: first differing byte (-1 = identical)`).toBe(-1);
        expect(await dataMap(mine), `${name}: data and holes`).toEqual(refMap);
      }
    });
  }
});
