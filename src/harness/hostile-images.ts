/**
 * Real images made by qemu-img/qemu-io, the seeds of the hostile suite: each
 * recipe exercises a different part of the metadata (v2, v3, snapshots,
 * compressed clusters, backing file, extended L2, small clusters with many
 * tables).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { imgCreate, imgSnapshot, qemuIoBatch, QEMU_IMG, runTool } from '../qemu/index.js';

export interface HostileRecipe {
  name: string;
  description: string;
  /** Builds the image in dir (and any backing file next to it); returns its path. */
  build(dir: string): Promise<string>;
}

const KiB = 1024;
const MiB = 1024 * KiB;

async function io(path: string, commands: string[]): Promise<void> {
  const r = await qemuIoBatch(path, commands);
  const bad = r.results.find((x) => !x.ok);
  if (bad) throw new Error(`qemu-io ${bad.command}: ${bad.error}`);
}

async function snapshot(path: string, name: string): Promise<void> {
  const r = await imgSnapshot(path, 'c', name);
  if (r.rc !== 0) throw new Error(`qemu-img snapshot -c ${name}: ${r.stderr}`);
}

export const HOSTILE_RECIPES: HostileRecipe[] = [
  {
    name: 'v2-64k-snap',
    description: 'compat 0.10, 64 KiB clusters, data, one snapshot, writes after it (shared clusters)',
    async build(dir) {
      const p = join(dir, 'v2-64k-snap.qcow2');
      await imgCreate(p, { size: 16 * MiB, compat: '0.10' });
      await io(p, ['write -P 0x11 0 192k', 'write -P 0x22 5M 64k', 'write -P 0x33 9000k 4k']);
      await snapshot(p, 's1');
      await io(p, ['write -P 0x44 64k 4k', 'write -P 0x55 12M 64k']);
      return p;
    },
  },
  {
    name: 'v3-64k-compressed-snaps',
    description: 'compat 1.1, compressed clusters (convert -c), normal writes, zero clusters, two snapshots',
    async build(dir) {
      const raw = join(dir, 'compress-src.raw');
      const data = new Uint8Array(4 * MiB);
      // Compressible but distinct content per cluster, so a misplaced cluster is visible.
      for (let i = 0; i < data.length; i++) data[i] = (Math.floor(i / 65536) * 7 + (i % 97)) & 0xff;
      writeFileSync(raw, data);
      const p = join(dir, 'v3-64k-compressed-snaps.qcow2');
      const r = await runTool(QEMU_IMG, ['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=1.1', raw, p]);
      if (r.rc !== 0) throw new Error(`convert -c: ${r.stderr}`);
      await runTool(QEMU_IMG, ['resize', '-q', '-f', 'qcow2', p, String(8 * MiB)]);
      await snapshot(p, 's1');
      await io(p, ['write -P 0x66 64k 64k', 'write -z 128k 64k', 'write -P 0x77 6M 8k', 'discard 192k 64k']);
      await snapshot(p, 's2');
      await io(p, ['write -P 0x78 0 4k']);
      return p;
    },
  },
  {
    name: 'v3-32k-extl2',
    description: 'extended L2 with 32 KiB clusters: partial subcluster writes, zeroed subclusters',
    async build(dir) {
      const p = join(dir, 'v3-32k-extl2.qcow2');
      await imgCreate(p, { size: 8 * MiB, clusterSize: 32 * KiB, extendedL2: true });
      await io(p, ['write -P 0x21 0 1k', 'write -P 0x22 33k 2k', 'write -P 0x23 1M 32k', 'write -z 1M 1k', 'write -z -u 2M 32k']);
      return p;
    },
  },
  {
    name: 'v3-64k-backing',
    description: 'qcow2 overlay on a qcow2 backing file (relative name, backing format extension), partial-cluster COW',
    async build(dir) {
      const base = join(dir, 'backing-base.qcow2');
      await imgCreate(base, { size: 8 * MiB });
      await io(base, ['write -P 0xb1 0 1M', 'write -P 0xb2 4M 128k']);
      const p = join(dir, 'v3-64k-backing.qcow2');
      await imgCreate(p, { size: 8 * MiB, backingFile: 'backing-base.qcow2', backingFormat: 'qcow2' });
      await io(p, ['write -P 0xc1 4k 4k', 'write -P 0xc2 4M 64k', 'write -z 512k 64k']);
      return p;
    },
  },
  {
    name: 'v3-512b-rc8-zstd',
    description: '512-byte clusters, 8-bit refcounts, zstd, many L2 tables and refblocks, a snapshot',
    async build(dir) {
      const p = join(dir, 'v3-512b-rc8-zstd.qcow2');
      await imgCreate(p, { size: 2 * MiB, clusterSize: 512, refcountBits: 8, compressionType: 'zstd' });
      await io(p, ['write -P 0x31 0 8k', 'write -P 0x32 100k 3k', 'write -c -P 0x33 1M 512', 'write -P 0x34 1536k 512']);
      await snapshot(p, 'snap');
      await io(p, ['write -P 0x35 1k 1k']);
      return p;
    },
  },
];
