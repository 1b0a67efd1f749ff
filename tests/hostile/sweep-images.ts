/**
 * Seeds of the robustness sweep beyond HOSTILE_RECIPES: the QEMU features the
 * hostile suite's images leave out (external data file, 1-bit and 64-bit
 * refcounts, 4 KiB and 2 MiB clusters, a persistent bitmap, a compat=0.10
 * image over a raw backing file with compressed clusters). Made by qemu-img
 * and qemu-io only.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HOSTILE_RECIPES, type HostileRecipe } from '../../src/harness/hostile-images.js';
import { QEMU_IMG, QEMU_IO, runTool } from '../../src/qemu/index.js';

const MiB = 1024 * 1024;

async function must(tool: string, args: string[]): Promise<void> {
  const r = await runTool(tool, args, 60_000);
  if (r.rc !== 0) throw new Error(`${tool} ${args.join(' ')}: ${r.stderr}`);
}

const io = (p: string, cmds: string[]): Promise<void> => must(QEMU_IO, ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), p]);

export const SWEEP_RECIPES: HostileRecipe[] = [
  ...HOSTILE_RECIPES,
  {
    name: 'v3-4k-rc1-datafile',
    description: 'external data file (absolute name: qemu-img create makes a relative one relative to its working directory), 4 KiB clusters, 1-bit refcounts',
    async build(dir) {
      const p = join(dir, 'v3-4k-rc1-datafile.qcow2');
      await must(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=4k,refcount_bits=1,data_file=${join(dir, 'v3-4k-rc1-datafile.data')}`, p, String(4 * MiB)]);
      await io(p, ['write -P 0x41 0 12k', 'write -P 0x42 1M 4k', 'write -z 8k 4k']);
      return p;
    },
  },
  {
    name: 'v3-2m-rc64-bitmap',
    description: '2 MiB clusters, 64-bit refcounts, a persistent dirty bitmap, lazy refcounts',
    async build(dir) {
      const p = join(dir, 'v3-2m-rc64-bitmap.qcow2');
      await must(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M,refcount_bits=64,lazy_refcounts=on', p, String(64 * MiB)]);
      await io(p, ['write -P 0x51 0 3M', 'write -P 0x52 40M 64k']);
      await must(QEMU_IMG, ['bitmap', '--add', p, 'b0']);
      await io(p, ['write -P 0x53 8M 4k']);
      return p;
    },
  },
  {
    name: 'v2-16k-rawbacking-compressed',
    description: 'compat 0.10, 16 KiB clusters over a raw backing file, compressed clusters, a snapshot',
    async build(dir) {
      const base = join(dir, 'v2-16k-base.raw');
      const data = new Uint8Array(2 * MiB);
      for (let i = 0; i < data.length; i++) data[i] = (i >> 14) & 0xff;
      writeFileSync(base, data);
      const p = join(dir, 'v2-16k-rawbacking-compressed.qcow2');
      await must(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=16k', '-b', 'v2-16k-base.raw', '-F', 'raw', p, String(2 * MiB)]);
      await io(p, ['write -c -P 0x61 0 16k', 'write -c -P 0x62 64k 16k', 'write -P 0x63 100k 2k']);
      await must(QEMU_IMG, ['snapshot', '-c', 's1', p]);
      await io(p, ['write -P 0x64 0 4k']);
      return p;
    },
  },
];
