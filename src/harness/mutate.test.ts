import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { decodeHeader, HEADER_FIELDS, type HeaderFieldName } from '../qcow2/format/index.js';
import { HOSTILE_RECIPES } from './hostile-images.js';
import { analyzeImage, listMutations, refcountOf, type Mutation } from './mutate/index.js';

const dir = mkdtempSync(join(tmpdir(), 'mutate-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const images = new Map<string, Uint8Array>();
beforeAll(async () => {
  for (const name of ['v2-64k-snap', 'v3-64k-compressed-snaps', 'v3-32k-extl2']) {
    const r = HOSTILE_RECIPES.find((x) => x.name === name)!;
    images.set(name, readFileSync(await r.build(dir)));
  }
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
    const original = img().slice();
    const first = a[0].apply();
    const unchanged: string[] = [];
    a.forEach((m: Mutation, i) => {
      const x = m.apply();
      expect(Buffer.compare(x, b[i].apply()), m.name).toBe(0);
      if (x.length === img().length && Buffer.compare(x, img()) === 0) unchanged.push(m.name);
      expect(m.description.length).toBeGreaterThan(0);
    });
    expect(unchanged).toEqual([]);
    // apply() never touches the caller's image, nor the copy the next mutation starts from.
    expect(Buffer.compare(img(), original)).toBe(0);
    expect(Buffer.compare(a[0].apply(), first)).toBe(0);
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

  test("header mutations change only HEADER_FIELDS' bytes of the fields they name, to the value they name", () => {
    const fields = new Set<string>(Object.keys(HEADER_FIELDS));
    // The two mutations that set several fields at once, and which fields.
    const multi: Record<string, HeaderFieldName[]> = {
      'backing=header-bytes': ['backingFileOffset', 'backingFileSize'],
      'backing=past-eof': ['backingFileOffset', 'backingFileSize'],
      'compressionType=zstd-without-bit': ['compressionType', 'incompatibleFeatures'],
    };
    const ms = listMutations(img()).filter((m) => m.kind === 'header');
    expect(ms.length).toBeGreaterThan(50);
    for (const m of ms) {
      const label = m.name.slice('header:'.length);
      const field = label.split('=')[0];
      const named = multi[label] ?? [field as HeaderFieldName];
      for (const f of named) expect(fields.has(f), `${m.name} names a field HEADER_FIELDS has`).toBe(true);
      const out = m.apply();
      expect(out.length, m.name).toBe(img().length);
      // Header fields all lie in the first KiB; past it the bytes must be untouched.
      expect(Buffer.compare(out.subarray(1024), img().subarray(1024)), `${m.name} wrote past the header`).toBe(0);
      const changed: number[] = [];
      for (let i = 0; i < 1024; i++) if (out[i] !== img()[i]) changed.push(i);
      expect(changed.length, m.name).toBeGreaterThan(0);
      const inField = (i: number): boolean => named.some((f) => i >= HEADER_FIELDS[f].offset && i < HEADER_FIELDS[f].offset + HEADER_FIELDS[f].width);
      expect(changed.filter((i) => !inField(i)), `${m.name} wrote outside ${named.join(', ')}`).toEqual([]);
      if (multi[label]) continue;
      // The description says "<field> set to <value> (...)"; the field's bytes must hold that value.
      const said = /set to (\d+) /.exec(m.description)?.[1];
      const { offset, width } = HEADER_FIELDS[field as HeaderFieldName];
      let held = 0n;
      for (let i = offset; i < offset + width; i++) held = (held << 8n) | BigInt(out[i]);
      // Numbers above 2^53 print in their shortest round-trip form, bigints exactly.
      expect([String(held), String(Number(held))], m.name).toContain(said);
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
