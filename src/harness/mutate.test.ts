import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { decodeHeader } from '../qcow2/format/index.js';
import { HOSTILE_RECIPES } from './hostile-images.js';
import { analyzeImage, headerFieldPositions, listMutations, refcountOf, type Mutation } from './mutate.js';

const dir = mkdtempSync(join(tmpdir(), 'mutate-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const images = new Map<string, Uint8Array>();
beforeAll(async () => {
  for (const name of ['v2-64k-snap', 'v3-64k-compressed-snaps', 'v3-32k-extl2']) {
    const r = HOSTILE_RECIPES.find((x) => x.name === name)!;
    images.set(name, readFileSync(await r.build(dir)));
  }
}, 60_000);

describe('header field positions learnt from the codec', () => {
  test('match the offsets qcow2.txt gives', () => {
    const p = headerFieldPositions();
    // The spec's table, written out once here only to check the probe.
    const spec: Record<string, [number, number]> = {
      version: [4, 4], backingFileOffset: [8, 8], backingFileSize: [16, 4], clusterBits: [20, 4], size: [24, 8],
      cryptMethod: [32, 4], l1Size: [36, 4], l1TableOffset: [40, 8], refcountTableOffset: [48, 8],
      refcountTableClusters: [56, 4], nbSnapshots: [60, 4], snapshotsOffset: [64, 8], incompatibleFeatures: [72, 8],
      compatibleFeatures: [80, 8], autoclearFeatures: [88, 8], refcountOrder: [96, 4], headerLength: [100, 4],
      compressionType: [104, 1],
    };
    for (const [f, [off, w]] of Object.entries(spec)) expect(p.get(f as never), f).toEqual({ offset: off, width: w });
  });
});

describe.each(['v2-64k-snap', 'v3-64k-compressed-snaps', 'v3-32k-extl2'])('%s', (name) => {
  const img = (): Uint8Array => images.get(name)!;

  test('the analysis finds the metadata qemu wrote', () => {
    const lay = analyzeImage(img());
    expect(lay.l2Tables.length).toBeGreaterThan(0);
    expect(lay.refblocks.length).toBeGreaterThan(0);
    expect(lay.dataClusters.length).toBeGreaterThan(0);
    // Every metadata cluster qemu allocated has refcount >= 1.
    for (const off of [0, lay.header.l1TableOffset, lay.header.refcountTableOffset, ...lay.refblocks, ...lay.l2Tables]) {
      expect(refcountOf(img(), lay, Math.floor(off / lay.clusterSize))).toBeGreaterThanOrEqual(1);
    }
  });

  test('mutations are deterministic, uniquely named, and each changes the image', () => {
    const a = listMutations(img(), { seed: 7 });
    const b = listMutations(img(), { seed: 7 });
    expect(a.map((m) => m.name)).toEqual(b.map((m) => m.name));
    expect(new Set(a.map((m) => m.name)).size).toBe(a.length);
    const unchanged: string[] = [];
    a.forEach((m: Mutation, i) => {
      const x = m.apply();
      expect(Buffer.compare(x, b[i].apply()), m.name).toBe(0);
      if (x.length === img().length && Buffer.compare(x, img()) === 0) unchanged.push(m.name);
      expect(m.description.length).toBeGreaterThan(0);
    });
    expect(unchanged).toEqual([]);
    // apply() never touches the original.
    expect(analyzeImage(img()).header.size).toBe(decodeHeader(img()).size);
  });

  test('a different seed gives different byte flips', () => {
    const f1 = listMutations(img(), { seed: 1 }).filter((m) => m.kind === 'flip');
    const f2 = listMutations(img(), { seed: 2 }).filter((m) => m.kind === 'flip');
    expect(f1.map((m) => m.description)).not.toEqual(f2.map((m) => m.description));
  });

  test('covers every family the brief names', () => {
    const kinds = new Set(listMutations(img()).map((m) => m.kind));
    for (const k of ['header', 'extension', 'l1', 'l2', 'reftable', 'refcount', 'leak', 'overlap', 'truncate', 'flip']) {
      expect(kinds.has(k as never), k).toBe(true);
    }
  });

  test('header mutations write the value they name', () => {
    const ms = listMutations(img());
    const h0 = decodeHeader(img());
    const l1 = ms.find((m) => m.name === 'header:l1TableOffset=just-past-eof')!;
    const cs = 2 ** h0.clusterBits;
    expect(decodeHeader(l1.apply()).l1TableOffset).toBe(Math.ceil(img().length / cs) * cs);
    const cb = ms.find((m) => m.name === 'header:clusterBits=22')!;
    expect(decodeHeader(cb.apply()).clusterBits).toBe(22);
    if (h0.version === 3) {
      const unk = ms.find((m) => m.name === 'header:incompatibleFeatures=unknown-bit5')!;
      expect(decodeHeader(unk.apply()).incompatibleFeatures & (1n << 5n)).toBe(1n << 5n);
    }
  });

  test('refcount and leak mutations change exactly what they say', () => {
    const lay = analyzeImage(img());
    const z = listMutations(img()).find((m) => m.name === 'refcount:l1=zero')!;
    const out = z.apply();
    expect(refcountOf(out, lay, Math.floor(lay.header.l1TableOffset / lay.clusterSize))).toBe(0);
    const leak = listMutations(img()).find((m) => m.name === 'leak:append-3')!;
    const grown = leak.apply();
    expect(grown.length).toBe(Math.ceil(img().length / lay.clusterSize) * lay.clusterSize + 3 * lay.clusterSize);
    const first = Math.ceil(img().length / lay.clusterSize);
    for (let i = 0; i < 3; i++) expect(refcountOf(grown, lay, first + i)).toBe(1);
  });
});
