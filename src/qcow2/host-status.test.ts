/**
 * hostRun's run boundaries, as qcow2_get_host_offset draws them: a run ends
 * where the subcluster type changes, where host clusters stop being
 * consecutive, at the end of the L2 table, and after every compressed
 * cluster. (tests/cli/map.test.ts checks the same runs end to end against
 * qemu-img map.)
 */
import { describe, expect, it } from 'vitest';
import { HostKind } from './host-status.js';
import { Qcow2Image } from './image.js';
import { MemoryStorage } from './storage/memory.js';

const K = 1024;
const fill = (n: number, v: number) => new Uint8Array(n).fill(v);

describe('hostRun', () => {
  it('standard L2: data runs end where host clusters stop being consecutive', () => {
    const img = Qcow2Image.create(new MemoryStorage(), { size: 1024 * K, clusterSize: 4 * K });
    img.write(0, fill(8 * K, 1)); // two consecutive host clusters
    img.write(64 * K, fill(4 * K, 2)); // allocated later: not after the first two
    img.write(8 * K, fill(4 * K, 3)); // consecutive on the host with 64k's cluster, not with 4k's
    const a = img.hostRun(0, 1024 * K);
    expect([a.kind, a.bytes]).toEqual([HostKind.Normal, 8 * K]);
    const b = img.hostRun(1000, 1024 * K - 1000);
    expect([b.kind, b.bytes, b.host - a.host]).toEqual([HostKind.Normal, 8 * K - 1000, 1000]);
    expect(img.hostRun(8 * K, 4 * K).bytes).toBe(4 * K);
    expect(img.hostRun(12 * K, 52 * K)).toEqual({ kind: HostKind.UnallocatedPlain, bytes: 52 * K, host: 0 });
    img.close();
  });

  it('zero clusters, compressed clusters one at a time, the end of the L2 table', () => {
    // 512-byte clusters: an L2 table maps 64 clusters (32 KiB).
    const img = Qcow2Image.create(new MemoryStorage(), { size: 256 * K, clusterSize: 512 });
    img.writeZeroes(0, 2 * K);
    img.writeCompressed(2 * K, fill(512, 5));
    img.writeCompressed(2 * K + 512, fill(512, 6));
    img.write(30 * K, fill(4 * K, 7));
    expect(img.hostRun(0, 256 * K)).toMatchObject({ kind: HostKind.ZeroPlain, bytes: 2 * K });
    expect(img.hostRun(2 * K, 254 * K)).toMatchObject({ kind: HostKind.Compressed, bytes: 512, host: 0 });
    expect(img.hostRun(2 * K + 512, 253 * K)).toMatchObject({ kind: HostKind.Compressed, bytes: 512 });
    // 30k..34k is data, but the run stops at the table's end (32 KiB).
    expect(img.hostRun(30 * K, 200 * K)).toMatchObject({ kind: HostKind.Normal, bytes: 2 * K });
    // Past what any L2 table maps: one run to the next table boundary.
    expect(img.hostRun(64 * K, 192 * K)).toMatchObject({ kind: HostKind.UnallocatedPlain, bytes: 32 * K });
    img.close();
  });

  it('extended L2: each subcluster state is a run, an allocated cluster keeps its host offset throughout', () => {
    const img = Qcow2Image.create(new MemoryStorage(), { size: 1024 * K, clusterSize: 64 * K, extendedL2: true });
    img.write(0, fill(4 * K, 1)); // subclusters 0-1 of cluster 0
    img.writeZeroes(8 * K, 2 * K); // subcluster 4
    const a = img.hostRun(0, 1024 * K);
    expect([a.kind, a.bytes]).toEqual([HostKind.Normal, 4 * K]);
    const b = img.hostRun(4 * K, 1020 * K);
    expect([b.kind, b.bytes, b.host - a.host]).toEqual([HostKind.UnallocatedAlloc, 4 * K, 4 * K]);
    expect(img.hostRun(8 * K, 1016 * K)).toMatchObject({ kind: HostKind.ZeroAlloc, bytes: 2 * K });
    expect(img.hostRun(10 * K, 1014 * K)).toMatchObject({ kind: HostKind.UnallocatedAlloc, bytes: 54 * K });
    expect(img.hostRun(64 * K, 960 * K)).toMatchObject({ kind: HostKind.UnallocatedPlain, bytes: 960 * K });
    img.close();
  });
});
