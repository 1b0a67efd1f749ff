/**
 * fast-check arbitraries: image configurations, and op *seeds* that are
 * resolved into concrete ops against the model's state when they run (the op
 * table's resolveOp, ./ops/index.ts, with the biasing helpers of
 * ./ops/seed.ts).
 */
import fc from 'fast-check';
import { SECTOR } from '../model/layer.js';
import type { BackingConfig, TraceConfig } from './config.js';
import { faultPick, KIND_TOTAL, seedKindOf, type Anchor, type LenUnit, type OpSeed } from './ops/index.js';
import { l2Span, MAX_VIRTUAL_SIZE, MAX_WRITE_BYTES, MAX_WRITE_CLUSTERS, refblockSpan } from './ops/seed.js';
import { prng } from './prng.js';

export { resolveOp, type Anchor, type LenUnit, type OpSeed, type ResolveContext } from './ops/index.js';
export { l2Span, MAX_VIRTUAL_SIZE, refblockSpan, SNAPSHOT_NAMES } from './ops/seed.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Sizes chosen to straddle an L2 table or refcount block span only when the span is at most this. */
const MAX_STRADDLE_SPAN = 16 * MiB;

// ---- configurations ------------------------------------------------------

const clusterSizeArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant(512) },
  { weight: 2, arbitrary: fc.constantFrom(1 * KiB, 2 * KiB) },
  { weight: 3, arbitrary: fc.constant(4 * KiB) },
  { weight: 2, arbitrary: fc.constantFrom(8 * KiB, 16 * KiB, 32 * KiB) },
  { weight: 2, arbitrary: fc.constant(64 * KiB) },
  { weight: 1, arbitrary: fc.constantFrom(128 * KiB, 256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB) },
);

const refcountBitsArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant(16) },
  { weight: 4, arbitrary: fc.constantFrom(1, 2, 4, 8, 32, 64) },
);

interface ConfigSeed {
  v3: boolean;
  clusterSize: number;
  refcountBits: number;
  lazy: boolean;
  extl2: boolean;
  zstd: boolean;
  sizeMode: number; // 0 small, 1 around an L2 span, 2 around a refblock span
  clusters: number;
  extraSectors: number; // makes the size not cluster aligned
  backing: BackingSeed | null;
}

interface BackingSeed {
  format: 'raw' | 'qcow2';
  factor: number;
  clusterSize: number;
  writes: [number, number, number][];
}

const backingWritesArb = fc.array(fc.tuple(fc.nat(1_000_000), fc.integer({ min: 1, max: 4 }), fc.constantFrom(512, 4096, 65536)), {
  minLength: 1,
  maxLength: 4,
});

const configSeedArb: fc.Arbitrary<ConfigSeed> = fc.record({
  v3: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  clusterSize: clusterSizeArb,
  refcountBits: refcountBitsArb,
  lazy: fc.boolean(),
  extl2: fc.oneof({ weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  zstd: fc.oneof({ weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  sizeMode: fc.oneof(
    { weight: 3, arbitrary: fc.constant(0) },
    { weight: 2, arbitrary: fc.constant(1) },
    { weight: 1, arbitrary: fc.constant(2) },
  ),
  clusters: fc.integer({ min: 1, max: 40 }),
  extraSectors: fc.oneof({ weight: 2, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 4095 }) }),
  backing: fc.option(
    fc.record({
      format: fc.constantFrom<'raw' | 'qcow2'>('raw', 'qcow2'),
      factor: fc.constantFrom(1, 0.5, 1.5),
      clusterSize: fc.constantFrom(512, 4 * KiB, 64 * KiB),
      writes: backingWritesArb,
    }),
    { freq: 3 },
  ),
});

/**
 * The configuration features added after the fixed-seed suites were tuned
 * (preallocation=metadata, dirty images, backing chains) draw nothing from
 * fast-check: they come from a PRNG seeded by a hash of the drawn seed, so a
 * suite's seed still yields the same configurations and op seeds as before,
 * now with these features on some of them. About one image in ten is
 * preallocated, half of the lazy-refcount images are left dirty, and half of
 * the qcow2 backing files have a backing file of their own (chains of up to
 * three files). Drawn after those, so they stay as they were: about one
 * image in eight has an external data file (half of them data_file_raw) and
 * one in ten is encrypted (two in three LUKS, the rest legacy AES; a LUKS
 * image costs qemu-img create two PBKDF2 benchmarks of half a second or more).
 */
interface Extras {
  prealloc: boolean;
  dirty: boolean;
  lower: BackingSeed[];
  dataFile?: { raw: boolean };
  encrypt?: 'luks' | 'aes';
}

function seedHash(s: ConfigSeed): number {
  let h = 0x811c9dc5;
  const text = JSON.stringify(s);
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

function extrasOf(s: ConfigSeed): Extras {
  const r = prng(seedHash(s));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const out: Extras = { prealloc: r() < 0.1, dirty: r() < 0.5, lower: [] };
  let above = s.backing;
  while (above && above.format === 'qcow2' && out.lower.length < 2 && r() < 0.5) {
    const writes = above.writes.map(([frac, count, unit]) => [Math.floor(r() * 1_000_001), count, unit] as [number, number, number]);
    const level: BackingSeed = { format: pick(['raw', 'qcow2'] as const), factor: pick([1, 0.5, 1.5]), clusterSize: pick([512, 4 * KiB, 64 * KiB]), writes };
    out.lower.push(level);
    above = level;
  }
  if (r() < 1 / 8) out.dataFile = { raw: r() < 0.5 };
  if (r() < 1 / 10) out.encrypt = r() < 2 / 3 ? 'luks' : 'aes';
  return out;
}

const roundSector = (n: number) => Math.max(SECTOR, Math.floor(n / SECTOR) * SECTOR);

function resolveConfig(s: ConfigSeed, extras = true): TraceConfig {
  const cs = s.clusterSize;
  const compat = s.v3 ? '1.1' : '0.10';
  const extendedL2 = s.v3 && s.extl2 && cs >= 16 * KiB;
  const refcountBits = s.v3 ? s.refcountBits : 16;
  // Big images cost time in every oracle; keep the straddling sizes only where
  // the span they straddle is small, and few clusters when clusters are big.
  let clusters = cs >= 256 * KiB ? 1 + (s.clusters % 8) : s.clusters;
  const span = s.sizeMode === 1 ? l2Span(cs, extendedL2) : s.sizeMode === 2 ? refblockSpan(cs, refcountBits) : 0;
  if (span > 0 && span <= MAX_STRADDLE_SPAN) clusters = Math.ceil(span / cs) + s.clusters - 20;
  clusters = Math.max(1, Math.min(clusters, Math.floor(MAX_VIRTUAL_SIZE / cs)));
  const extra = (s.extraSectors % (cs / SECTOR)) * SECTOR;
  let size = clusters * cs + extra;
  if (size > MAX_VIRTUAL_SIZE) size = MAX_VIRTUAL_SIZE;
  const cfg: TraceConfig = {
    size,
    clusterSize: cs,
    refcountBits,
    compat,
    lazyRefcounts: s.v3 && s.lazy,
    extendedL2,
    compressionType: s.v3 && s.zstd ? 'zstd' : 'zlib',
  };
  const x: Extras = extras ? extrasOf(s) : { prealloc: false, dirty: false, lower: [] };
  if (s.backing) cfg.backing = resolveBacking([s.backing, ...x.lower], size);
  // qcow2_co_create refuses preallocation over a backing file unless extended L2 keeps subclusters unallocated.
  if (x.prealloc && (!cfg.backing || extendedL2)) cfg.preallocation = 'metadata';
  if (cfg.lazyRefcounts && x.dirty) cfg.dirty = true;
  // Data files need v3, and data_file_raw neither a backing file nor encryption (ciphertext is no guest view).
  if (x.dataFile && s.v3 && !(x.dataFile.raw && (cfg.backing || x.encrypt))) cfg.dataFile = x.dataFile;
  // LUKS is generated on v3 only; preallocated clusters of an encrypted image read garbage (config.ts).
  if (x.encrypt && !cfg.preallocation && (x.encrypt === 'aes' || s.v3)) cfg.encrypt = { format: x.encrypt };
  return cfg;
}

/** The backing chain top down: each level sized from the one above it. */
function resolveBacking(levels: BackingSeed[], above: number): BackingConfig {
  const s = levels[0]!;
  const bsize = roundSector(above * s.factor);
  const writes: [number, number][] = [];
  for (const [frac, count, unit] of s.writes) {
    const off = roundSector((frac / 1_000_000) * bsize) - SECTOR;
    const len = Math.min(count * unit, bsize - off, MAX_WRITE_BYTES);
    if (len >= SECTOR) writes.push([off, roundSector(len)]);
  }
  const b: BackingConfig = { format: s.format, size: bsize, writes };
  if (b.format === 'qcow2') {
    b.clusterSize = s.clusterSize;
    if (levels.length > 1) b.backing = resolveBacking(levels.slice(1), bsize);
  }
  return b;
}

/** The whole configuration space: campaigns, readers and the property suites draw from it. */
export const configArb: fc.Arbitrary<TraceConfig> = configSeedArb.map((s) => resolveConfig(s));

/**
 * The space without the extras above (no preallocation, dirty images or
 * chains), the same configurations for the same draws: for a suite whose
 * coverage guard was tuned on it (qemu-model.prop: compressed writes onto
 * preallocated clusters are refused by QEMU, which its seed's guard counts).
 */
export const classicConfigArb: fc.Arbitrary<TraceConfig> = configSeedArb.map((s) => resolveConfig(s, false));

// ---- op seeds --------------------------------------------------------------

export const opSeedArb: fc.Arbitrary<OpSeed> = fc.record({
  kind: fc.integer({ min: 0, max: KIND_TOTAL - 1 }),
  anchor: fc.constantFrom<Anchor>('cluster', 'cluster', 'subcluster', 'l2', 'refblock', 'end', 'start', 'any'),
  frac: fc.nat(1_000_000),
  delta: fc.oneof({ weight: 2, arbitrary: fc.constant(0) }, { weight: 2, arbitrary: fc.constantFrom(-1, 1) }, { weight: 1, arbitrary: fc.constantFrom(-2, 2) }),
  unit: fc.constantFrom<LenUnit>('sector', 'cluster', 'cluster', 'subcluster', 'whole', 'toend'),
  count: fc.integer({ min: 1, max: MAX_WRITE_CLUSTERS }),
  lenDelta: fc.constantFrom(0, 0, -1, 1),
  flag: fc.boolean(),
  pick: fc.nat(1000),
});

/** The seed kind that resolves to a crash op. */
const CRASH_KIND = seedKindOf('crash');

/**
 * Op seed lists. `crashBias` turns about one seed in four into a crash (for
 * properties about crash consistency, where crashes are otherwise rare).
 * `faultBias` sets the fault choice of about half the seeds (./ops/fault.ts
 * reads it from `pick`), so that guest I/O runs with a fault wherever the
 * target can inject one.
 */
export function opSeedsArb(maxOps: number, o: { crashBias?: boolean; faultBias?: boolean } = {}): fc.Arbitrary<OpSeed[]> {
  let one = o.crashBias
    ? fc.tuple(opSeedArb, fc.nat(3)).map(([s, r]) => (r === 0 ? { ...s, kind: CRASH_KIND } : s))
    : opSeedArb;
  if (o.faultBias) one = fc.tuple(one, fc.boolean()).map(([s, f]) => (f ? { ...s, pick: faultPick(s.pick) } : s));
  return fc.array(one, { minLength: 1, maxLength: maxOps });
}

/**
 * Configurations that all have an external data file (raw on or off), for
 * the data-file suite: configArb has them in one run in eight, this in every
 * run, so the suite meets the refusals only data files have on every seed. A
 * v3 image (data files need compat=1.1) and, with data_file_raw, no backing
 * file (qemu-img refuses the pair).
 */
// The classic space, so the data-file suite draws what it drew before the extras (preallocation, dirty, chains).
export const dataFileConfigArb: fc.Arbitrary<TraceConfig> = fc.tuple(classicConfigArb, fc.boolean()).map(([c, raw]) => {
  const v3: TraceConfig = c.compat === '1.1' ? c : { ...c, compat: '1.1' };
  const out: TraceConfig = { ...v3, dataFile: { raw } };
  if (raw) delete out.backing;
  return out;
});
