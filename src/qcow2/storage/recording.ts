/**
 * A storage that remembers what is durable, for crash simulation
 * (DESIGN.md "Crash consistency"). The crash model, in the manner of
 * SQLite's src/test6.c (which simulates the same thing for database files):
 *
 * Durable state: the bytes at the last completed flush(). Every write and
 * truncate issued since is pending, kept in issue order (the write log).
 * flush() is the only barrier; nothing orders two pending operations.
 *
 * A crash keeps any subset of the pending operations, applied in issue
 * order: a volatile write cache may persist a later write without an
 * earlier one. A kept write may be torn: each SECTOR_SIZE sector it overlaps
 * (sectors counted from the start of the file, not of the write) holds
 * either its old bytes or its new ones, never garbage. Here we part from
 * test6.c, whose default mode also fills sectors of an interrupted write with
 * random bytes: qcow2 metadata carries no checksums and QEMU's qcow2 driver
 * relies on sector-atomic writes (test6.c's IOCAP_ATOMIC512 mode), so a
 * garbage sector would turn every metadata write into a corruption no driver
 * can avoid.
 *
 * A pending truncate is never torn: it happened, in its place in the order,
 * or it did not (test6.c never trashes a truncate either). Bytes a kept
 * truncate cut off are gone; a growing truncate adds zeros.
 *
 * Space the file gained since the flush is filled per CrashFill:
 * - 'stale' (the default): bytes past the durable end that a pending write
 *   covered but the crash state did not keep hold stale, recognisable bytes
 *   (staleSectorOrigin names the host sector they stand for), and the file
 *   keeps the length those writes gave it. That is what a block device, or a
 *   file system that persists a file's size before its data (ext4
 *   data=writeback), leaves behind; a reused cluster inside the durable
 *   length shows its old content the same way. A guest that reads them sees
 *   data it never wrote: the symptom of an L2 entry reaching the disk before
 *   the data it points to (a missing data barrier), which zeros would hide
 *   wherever the guest sector was unallocated at the flush.
 * - 'zeros': lost space reads as zeros and the file is only as long as the
 *   kept operations make it (the behaviour before stale fill existed).
 * Holes no pending write covered read as zeros in both modes, as in a file.
 *
 * writeZeroes, when the recording is made with { writeZeroes: true } (off by
 * default, so the fuzzing target's write logs stay as they were), is
 * recorded as a pending write of zeros: a zero range that did not reach the
 * disk leaves the old bytes, or stale ones past the durable end, exactly as a
 * lost write does (a file system persisting fallocate's size change before
 * its extents is that case).
 *
 * crashPlan() lists the crash states one crash point is checked with:
 * every subset of the write log when it is short, every prefix (and the
 * whole log but one operation) when it is longer, random states when even that
 * exceeds the budget; then torn writes, as far as the budget allows.
 */
import { SECTOR_SIZE } from '../format/constants.js';
import { MemoryStorage } from './memory.js';
import type { BlockStorage } from './types.js';

type Pending = { kind: 'write'; offset: number; data: Uint8Array } | { kind: 'truncate'; length: number };

export type CrashFill = 'stale' | 'zeros';

/**
 * What a crash state keeps of one pending operation: all of it (true), none
 * (false), or for a write the sectors it overlaps that are marked true.
 */
export type OpFate = boolean | readonly boolean[];

export interface CrashState {
  /** Names the state in failure messages, e.g. "ops 1-3 of 5" or "all but op 2 of 5". */
  label: string;
  fates: OpFate[];
}

/**
 * How the whole-operation part of the state space was covered:
 * 'every-subset' — all 2^n subsets of the n pending operations;
 * 'every-prefix' — each prefix, and the whole log with one operation left
 *   out (a later write persisted without an earlier one);
 * 'sampled' — random states (random subsets, random tears).
 */
export type CrashMode = 'every-subset' | 'every-prefix' | 'sampled';

export interface CrashPlan {
  mode: CrashMode;
  /** Pending operations (writes and truncates) since the last flush. */
  pending: number;
  states: CrashState[];
  /**
   * Torn-write states among `states`, and how many the enumeration knows
   * (each multi-sector write torn into its first or its second half, on the
   * prefix before it).
   */
  torn: number;
  tornKnown: number;
}

/** Stale sectors begin with these bytes, then the host sector number (u64 big-endian). */
const STALE_MAGIC = [0x53, 0x54, 0x41, 0x4c, 0x45, 0x21, 0x21, 0x00]; // "STALE!!\0"

/** The stale byte at host offset `at`: the magic and sector number, then a fill a guest pattern will not match. */
function staleByte(at: number): number {
  const s = Math.floor(at / SECTOR_SIZE);
  const i = at % SECTOR_SIZE;
  if (i < 8) return STALE_MAGIC[i]!;
  if (i < 16) return Math.floor(s / 2 ** (8 * (15 - i))) & 0xff;
  return 0xa5 ^ (i & 0xff);
}

/** The host sector whose stale bytes fill the sector at `at` in `buf`, or undefined when it is not stale. */
export function staleSectorOrigin(buf: Uint8Array, at: number): number | undefined {
  if (at + 16 > buf.length) return undefined;
  for (let i = 0; i < 8; i++) if (buf[at + i] !== STALE_MAGIC[i]) return undefined;
  let s = 0;
  for (let i = 8; i < 16; i++) s = s * 256 + buf[at + i]!;
  return s;
}

/** Sectors [first, last] a write overlaps, counted from the start of the file. */
function sectorSpan(p: { offset: number; data: Uint8Array }): [number, number] {
  return [Math.floor(p.offset / SECTOR_SIZE), Math.floor((p.offset + Math.max(1, p.data.length) - 1) / SECTOR_SIZE)];
}

export class RecordingStorage implements BlockStorage {
  readonly readOnly = false;
  private readonly live: MemoryStorage;
  /**
   * The bytes at the last flush. A flush brings it up to date by replaying
   * the write log onto it (the same operations from the same start give the
   * same bytes as `live`), which costs what was written since, not a copy of
   * the whole image: the engine flushes at every barrier.
   */
  private readonly durable: MemoryStorage;
  private pending: Pending[] = [];
  /** staleBase() for the current write log; dropped by every write, truncate and flush. */
  private staleCache: MemoryStorage | undefined;

  private readonly zeroes: boolean;

  constructor(initial?: Uint8Array, opts: { writeZeroes?: boolean } = {}) {
    this.live = new MemoryStorage(initial);
    this.durable = new MemoryStorage(initial);
    this.zeroes = opts.writeZeroes ?? false;
  }

  size(): number {
    return this.live.size();
  }
  read(offset: number, length: number): Uint8Array {
    return this.live.read(offset, length);
  }
  readInto(offset: number, dst: Uint8Array): void {
    this.live.readInto(offset, dst);
  }
  write(offset: number, data: Uint8Array): void {
    this.live.write(offset, data);
    this.pending.push({ kind: 'write', offset, data: data.slice() });
    this.staleCache = undefined;
  }
  writeZeroes(offset: number, length: number): boolean {
    if (!this.zeroes) return false;
    this.write(offset, new Uint8Array(length));
    return true;
  }
  truncate(length: number): void {
    this.live.truncate(length);
    this.pending.push({ kind: 'truncate', length });
    this.staleCache = undefined;
  }
  flush(): void {
    if (this.pending.length === 0) return;
    for (const p of this.pending) {
      if (p.kind === 'write') this.durable.write(p.offset, p.data);
      else this.durable.truncate(p.length);
    }
    this.pending = [];
    this.staleCache = undefined;
  }
  close(): void {
    // Nothing to release: a closed recording can still produce crash images.
  }

  /** The current contents (what a clean shutdown would leave). */
  bytes(): Uint8Array {
    return this.live.bytes();
  }

  /** The current contents without a copy, valid until the next write or truncate (MemoryStorage.view). */
  view(): Uint8Array {
    return this.live.view();
  }

  /** Writes and truncates issued since the last flush. */
  get pendingWrites(): number {
    return this.pending.length;
  }

  /** The image a crash in `state` leaves (see the crash model above). */
  crashImageOf(state: CrashState, fill: CrashFill = 'stale'): Uint8Array {
    return this.crashStorageOf(state, fill).bytes();
  }

  /** crashImageOf as a storage of its own, without copying the bytes out once more. */
  crashStorageOf(state: CrashState, fill: CrashFill = 'stale'): MemoryStorage {
    const img = (fill === 'stale' ? this.staleBase() : this.durable).clone();
    this.pending.forEach((p, i) => {
      const fate = state.fates[i] ?? false;
      if (fate === false) return;
      if (p.kind === 'truncate') {
        img.truncate(p.length);
        return;
      }
      if (fate === true) {
        img.write(p.offset, p.data);
        return;
      }
      const [first, last] = sectorSpan(p);
      for (let s = first; s <= last; s++) {
        if (!fate[s - first]) continue;
        const from = Math.max(p.offset, s * SECTOR_SIZE);
        const to = Math.min(p.offset + p.data.length, (s + 1) * SECTOR_SIZE);
        img.write(from, p.data.subarray(from - p.offset, to - p.offset));
      }
    });
    return img;
  }

  /**
   * The durable bytes with stale bytes wherever a pending write reaches past
   * the durable end (kept writes overwrite them later). Built once per crash
   * point: every crash state there starts from it.
   */
  private staleBase(): MemoryStorage {
    if (this.staleCache) return this.staleCache;
    const img = this.durable.clone();
    const durableEnd = this.durable.size();
    const sector = new Uint8Array(SECTOR_SIZE);
    for (const p of this.pending) {
      if (p.kind !== 'write' || p.offset + p.data.length <= durableEnd) continue;
      const from = Math.max(p.offset, durableEnd);
      const end = p.offset + p.data.length;
      for (let s = Math.floor(from / SECTOR_SIZE); s * SECTOR_SIZE < end; s++) {
        for (let k = 0; k < SECTOR_SIZE; k++) sector[k] = staleByte(s * SECTOR_SIZE + k);
        const a = Math.max(from, s * SECTOR_SIZE);
        const b = Math.min(end, (s + 1) * SECTOR_SIZE);
        img.write(a, sector.subarray(a - s * SECTOR_SIZE, b - s * SECTOR_SIZE));
      }
    }
    this.staleCache = img;
    return img;
  }

  /**
   * One crash image: the durable state plus the pending writes `keep` selects,
   * each cut down to the sectors `keepSector` selects (sector indexes count
   * the sectors of the file the write overlaps, first one 0), in issue order.
   */
  crashImage(keep: (index: number) => boolean, keepSector: (index: number, sector: number) => boolean, fill: CrashFill = 'stale'): Uint8Array {
    const fates = this.pending.map((p, i): OpFate => {
      if (!keep(i)) return false;
      if (p.kind === 'truncate') return true;
      const [first, last] = sectorSpan(p);
      return Array.from({ length: last - first + 1 }, (_, s) => keepSector(i, s));
    });
    return this.crashImageOf({ label: 'custom', fates }, fill);
  }

  /** A random crash image from a [0,1) random source: each write kept with p=1/2, torn with p=1/4. */
  randomCrashImage(random: () => number, fill: CrashFill = 'stale'): Uint8Array {
    return this.crashImageOf(this.randomState(random, 'random'), fill);
  }

  private randomState(random: () => number, label: string): CrashState {
    const kept = this.pending.map(() => random() < 0.5);
    const torn = this.pending.map(() => random() < 0.25);
    const fates = this.pending.map((p, i): OpFate => {
      if (!kept[i]) return false;
      if (p.kind === 'truncate' || !torn[i]) return true;
      const [first, last] = sectorSpan(p);
      return Array.from({ length: last - first + 1 }, () => random() < 0.5);
    });
    return { label, fates };
  }

  /**
   * The crash states to check at this point, at most `budget` of them
   * (see CrashMode). Three quarters of the budget go to whole operations;
   * torn writes — on each prefix, the next write with only its first or
   * only its second half of sectors — fill the rest in issue order.
   */
  crashPlan(budget: number, random: () => number): CrashPlan {
    const n = this.pending.length;
    const whole = Math.max(1, Math.floor((budget * 3) / 4));
    const states: CrashState[] = [];
    const ops = (k: number): string => (k === 0 ? 'no op' : k === 1 ? 'op 1' : `ops 1-${k}`);
    let mode: CrashMode;
    if (n <= 30 && 2 ** n <= whole) {
      mode = 'every-subset';
      for (let mask = 0; mask < 2 ** n; mask++) {
        const fates = this.pending.map((_, i) => Math.floor(mask / 2 ** i) % 2 === 1);
        const kept = fates.flatMap((f, i) => (f ? [i + 1] : []));
        states.push({ label: `ops {${kept.join(',')}} of ${n}`, fates });
      }
    } else if (2 * n <= whole) {
      mode = 'every-prefix';
      for (let k = 0; k <= n; k++) states.push({ label: `${ops(k)} of ${n}`, fates: this.pending.map((_, i) => i < k) });
      // Every op but one that a later op follows: a later write on disk without an earlier one,
      // the shape of a missing barrier between the two.
      for (let left = 0; left < n - 1; left++) {
        states.push({ label: `all but op ${left + 1} of ${n}`, fates: this.pending.map((_, i) => i !== left) });
      }
    } else {
      mode = 'sampled';
      for (let s = 0; s < budget; s++) states.push(this.randomState(random, `random state ${s + 1} of ${budget} over ${n} ops`));
    }
    let torn = 0;
    let tornKnown = 0;
    for (let k = 0; k < n; k++) {
      const p = this.pending[k]!;
      if (p.kind !== 'write') continue;
      const [first, last] = sectorSpan(p);
      const count = last - first + 1;
      if (count < 2) continue;
      tornKnown += 2;
      const half = Math.ceil(count / 2);
      for (const [part, sel] of [['first', (s: number) => s < half], ['second', (s: number) => s >= half]] as const) {
        if (mode === 'sampled' || states.length >= budget) continue;
        const fates: OpFate[] = this.pending.map((_, i) => i < k);
        fates[k] = Array.from({ length: count }, (_, s) => sel(s));
        states.push({ label: `${ops(k)} of ${n}, then op ${k + 1} torn (${part} half of its ${count} sectors)`, fates });
        torn++;
      }
    }
    // Random states tear writes of their own accord.
    if (mode === 'sampled') torn = states.filter((st) => st.fates.some((f) => typeof f !== 'boolean')).length;
    return { mode, pending: n, states, torn, tornKnown };
  }
}
