/**
 * fast-check arbitraries: image configurations, and op *seeds* that are
 * resolved into concrete ops against the model's state when they run (so an
 * op after a resize or a snapshot apply still lands on the interesting
 * boundaries of the image as it is then). Offsets and lengths are biased to
 * where bugs live: cluster and subcluster edges and a sector either side, L2
 * table spans, refcount block spans, the last partial cluster, the whole disk.
 */
import fc from 'fast-check';
import { SECTOR } from '../model/layer.js';
import type { DiskModel } from '../model/disk.js';
import type { BackingConfig, TraceConfig } from './config.js';
import type { Op, OpKind } from './ops.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Keep runs fast: virtual sizes stay at or below this. */
export const MAX_VIRTUAL_SIZE = 64 * MiB;
/** Sizes chosen to straddle an L2 table or refcount block span only when the span is at most this. */
const MAX_STRADDLE_SPAN = 16 * MiB;
/** Data-carrying writes stay at or below this many clusters (and bytes). */
const MAX_WRITE_CLUSTERS = 4;
const MAX_WRITE_BYTES = 8 * MiB;

const L2_ENTRY_BYTES = 8;
const EXTL2_ENTRY_BYTES = 16;
const SUBCLUSTERS = 32;

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

export function l2Span(clusterSize: number, extendedL2: boolean): number {
  return (clusterSize / (extendedL2 ? EXTL2_ENTRY_BYTES : L2_ENTRY_BYTES)) * clusterSize;
}

/** Guest bytes whose host clusters one refcount block covers, if the guest maps linearly. */
export function refblockSpan(clusterSize: number, refcountBits: number): number {
  return ((clusterSize * 8) / refcountBits) * clusterSize;
}

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
  backing: { format: 'raw' | 'qcow2'; factor: number; clusterSize: number; writes: [number, number, number][] } | null;
}

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
      writes: fc.array(fc.tuple(fc.nat(1_000_000), fc.integer({ min: 1, max: 4 }), fc.constantFrom(512, 4096, 65536)), {
        minLength: 1,
        maxLength: 4,
      }),
    }),
    { freq: 3 },
  ),
});

const roundSector = (n: number) => Math.max(SECTOR, Math.floor(n / SECTOR) * SECTOR);

function resolveConfig(s: ConfigSeed): TraceConfig {
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
  if (s.backing) {
    const bsize = roundSector(size * s.backing.factor);
    const writes: [number, number][] = [];
    for (const [frac, count, unit] of s.backing.writes) {
      const off = roundSector((frac / 1_000_000) * bsize) - SECTOR;
      const len = Math.min(count * unit, bsize - off, MAX_WRITE_BYTES);
      if (len >= SECTOR) writes.push([off, roundSector(len)]);
    }
    const b: BackingConfig = { format: s.backing.format, size: bsize, writes };
    if (b.format === 'qcow2') b.clusterSize = s.backing.clusterSize;
    cfg.backing = b;
  }
  return cfg;
}

export const configArb: fc.Arbitrary<TraceConfig> = configSeedArb.map(resolveConfig);

// ---- op seeds --------------------------------------------------------------

export type Anchor = 'cluster' | 'subcluster' | 'l2' | 'refblock' | 'end' | 'start' | 'any';
export type LenUnit = 'sector' | 'subcluster' | 'cluster' | 'whole' | 'toend';

export interface OpSeed {
  kind: number; // 0..99, mapped through KIND_TABLE (shrinks toward plain writes)
  anchor: Anchor;
  frac: number; // 0..1e6: where among the anchors
  delta: number; // -2..2 sectors off the anchor
  unit: LenUnit;
  count: number; // 1..4 units
  lenDelta: number; // -1..1 sectors
  flag: boolean; // write -z: unmap; resize: pass --shrink when shrinking
  pick: number; // snapshot choice, amend value, resize amount
}

const KIND_TABLE: [number, OpKind | 'snapshot-c' | 'snapshot-a' | 'snapshot-d'][] = [
  [30, 'write'],
  [6, 'write-compressed'],
  [12, 'write-zeroes'],
  [12, 'discard'],
  [4, 'flush'],
  [4, 'reopen'],
  [6, 'snapshot-c'],
  [5, 'snapshot-a'],
  [5, 'snapshot-d'],
  [8, 'amend'],
  [8, 'resize'],
  [4, 'crash'],
];
const KIND_TOTAL = KIND_TABLE.reduce((a, [w]) => a + w, 0);

function kindOf(k: number): (typeof KIND_TABLE)[number][1] {
  let x = k % KIND_TOTAL;
  for (const [w, kind] of KIND_TABLE) {
    if (x < w) return kind;
    x -= w;
  }
  return 'write';
}

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
const CRASH_KIND = KIND_TABLE.slice(0, KIND_TABLE.findIndex(([, k]) => k === 'crash')).reduce((a, [w]) => a + w, 0);

/**
 * Op seed lists. `crashBias` turns about one seed in four into a crash (for
 * properties about crash consistency, where crashes are otherwise rare).
 */
export function opSeedsArb(maxOps: number, o: { crashBias?: boolean } = {}): fc.Arbitrary<OpSeed[]> {
  const one = o.crashBias
    ? fc.tuple(opSeedArb, fc.nat(3)).map(([s, r]) => (r === 0 ? { ...s, kind: CRASH_KIND } : s))
    : opSeedArb;
  return fc.array(one, { minLength: 1, maxLength: maxOps });
}

export const SNAPSHOT_NAMES = ['s0', 's1', 's2'];

const clamp = (x: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, x));

/**
 * Turns a seed into a concrete op for the image as the model sees it now.
 * Returns null when the seed's op kind is not supported by the target.
 */
export interface ResolveContext {
  capabilities: ReadonlySet<OpKind>;
  knownBugs?: ReadonlySet<string>;
}

/** Above this many entries per refcount block, QEMU's refcount amend takes seconds to minutes. */
const QEMU_AMEND_MAX_REFBLOCK_ENTRIES = 65536;

export function resolveOp(seed: OpSeed, model: DiskModel, ctx: ResolveContext): Op | null {
  const caps = ctx.capabilities;
  const k = kindOf(seed.kind);
  const kind: OpKind = k.startsWith('snapshot') ? 'snapshot' : (k as OpKind);
  if (!caps.has(kind)) return null;
  const size = model.size;
  const cs = model.meta.clusterSize;
  switch (k) {
    case 'write':
    case 'write-zeroes':
    case 'discard': {
      const dataCap = k === 'write' ? Math.min(MAX_WRITE_BYTES, MAX_WRITE_CLUSTERS * cs) : Number.POSITIVE_INFINITY;
      const { off, len } = resolveRange(seed, model, dataCap);
      if (k === 'write') return { kind: 'write', off, len };
      if (k === 'discard') return { kind: 'discard', off, len };
      return { kind: 'write-zeroes', off, len, unmap: seed.flag };
    }
    case 'write-compressed': {
      const clusters = Math.ceil(size / cs);
      let off = Math.floor((seed.frac / 1_000_001) * clusters) * cs;
      if (seed.anchor === 'end') off = (clusters - 1) * cs;
      let len = Math.min(cs, size - off);
      // Now and then a misaligned one, which must be refused.
      if (seed.delta === 2 && len > SECTOR) {
        off += SECTOR;
        len -= SECTOR;
      }
      return { kind: 'write-compressed', off, len };
    }
    case 'flush':
      return { kind: 'flush' };
    case 'reopen':
      return { kind: 'reopen' };
    case 'crash':
      return { kind: 'crash' };
    case 'snapshot-c':
      return { kind: 'snapshot', action: 'create', name: SNAPSHOT_NAMES[seed.pick % SNAPSHOT_NAMES.length]! };
    case 'snapshot-a':
    case 'snapshot-d': {
      const action = k === 'snapshot-a' ? 'apply' : 'delete';
      const snaps = model.snapshots;
      if (snaps.length === 0 || seed.pick % 7 === 0) {
        return { kind: 'snapshot', action, name: SNAPSHOT_NAMES[seed.pick % SNAPSHOT_NAMES.length]! };
      }
      const s = snaps[seed.pick % snaps.length]!;
      return { kind: 'snapshot', action, name: seed.flag ? s.id : s.name };
    }
    case 'amend': {
      let which = seed.pick % 3;
      if (which === 0 && ctx.knownBugs?.has('slow-refcount-amend')) {
        const entries = (cs * 8) / Math.min(model.meta.refcountBits, 2 ** (Math.floor(seed.pick / 3) % 7));
        if (entries > QEMU_AMEND_MAX_REFBLOCK_ENTRIES) which = 2;
      }
      if (which === 0) return { kind: 'amend', key: 'refcount_bits', value: 2 ** (Math.floor(seed.pick / 3) % 7) };
      if (which === 1) return { kind: 'amend', key: 'compat', value: seed.flag ? '0.10' : '1.1' };
      return { kind: 'amend', key: 'lazy_refcounts', value: seed.flag };
    }
    case 'resize':
      return resolveResize(seed, model);
    default:
      return null;
  }
}

function unitOf(anchor: Anchor | LenUnit, model: DiskModel): number {
  const cs = model.meta.clusterSize;
  const sub = model.meta.extendedL2 ? cs / SUBCLUSTERS : cs;
  switch (anchor) {
    case 'cluster':
      return cs;
    case 'subcluster':
      return sub;
    case 'l2':
      return l2Span(cs, model.meta.extendedL2);
    case 'refblock':
      return refblockSpan(cs, model.meta.refcountBits);
    default:
      return SECTOR;
  }
}

function resolveRange(seed: OpSeed, model: DiskModel, cap: number): { off: number; len: number } {
  const size = model.size;
  let len: number;
  switch (seed.unit) {
    case 'sector':
      len = seed.count * SECTOR;
      break;
    case 'whole':
      len = size;
      break;
    case 'toend':
      len = size; // fixed below, once the offset is known
      break;
    default:
      len = seed.count * unitOf(seed.unit, model) + seed.lenDelta * SECTOR;
  }
  len = clamp(len, SECTOR, Math.min(size, cap));
  let off: number;
  if (seed.unit === 'whole') off = 0;
  else if (seed.anchor === 'end') off = size - len + seed.delta * SECTOR;
  else if (seed.anchor === 'start') off = seed.delta * SECTOR;
  else {
    const unit = unitOf(seed.anchor, model);
    const n = Math.max(1, Math.ceil(size / unit));
    // Boundary `i` of the anchor grid; a range straddles it when len > |delta|.
    const i = Math.floor((seed.frac / 1_000_001) * n);
    const straddle = seed.anchor === 'l2' || seed.anchor === 'refblock' ? Math.floor(len / 2 / SECTOR) * SECTOR : 0;
    off = i * unit + seed.delta * SECTOR - straddle;
  }
  off = clamp(off, 0, size - SECTOR);
  if (seed.unit === 'toend') len = Math.min(size - off, cap);
  len = clamp(len, SECTOR, size - off);
  return { off, len };
}

function resolveResize(seed: OpSeed, model: DiskModel): Op {
  const size = model.size;
  const cs = model.meta.clusterSize;
  const grow = seed.count % 2 === 1;
  // Sizes right at an L2 table span or refcount block span (± a sector), so that
  // shrinking drops whole L2 tables and growing adds L1 entries.
  const span = seed.anchor === 'refblock' ? refblockSpan(cs, model.meta.refcountBits) : l2Span(cs, model.meta.extendedL2);
  if (seed.anchor === 'l2' || seed.anchor === 'refblock' || (seed.anchor === 'cluster' && size > span)) {
    const k = grow ? Math.floor(size / span) + 1 : Math.floor((size - 1) / span);
    const target = k * span + seed.delta * SECTOR;
    if (target >= SECTOR && target <= MAX_VIRTUAL_SIZE && target !== size && grow === target > size) {
      return { kind: 'resize', size: target, shrink: !grow && (seed.flag || seed.lenDelta !== 1) };
    }
  }
  const amounts = [SECTOR, cs, cs + SECTOR, cs - SECTOR, 3 * cs, Math.floor(size / 2 / SECTOR) * SECTOR];
  const amount = Math.max(SECTOR, amounts[seed.pick % amounts.length]! + seed.delta * SECTOR);
  if (grow) return { kind: 'resize', size: Math.min(MAX_VIRTUAL_SIZE + cs, size + amount), shrink: false };
  const target = Math.max(SECTOR, size - amount);
  // Mostly pass --shrink; sometimes leave it out, which must be refused.
  return { kind: 'resize', size: target, shrink: seed.flag || seed.lenDelta !== 1 };
}
