/**
 * The crash oracle (DESIGN.md "Crash consistency"). The tracker remembers the
 * model at the last flush and, cheaply, what changed since: the stamps each
 * range op left on the sectors it touched, and a copy of the whole view after
 * each op that changes the view wholesale (snapshot apply, resize). A crash
 * image passes when it opened, its size is one the disk had since the flush,
 * every sector holds a value that sector held since the flush (so untouched
 * sectors hold exactly their value at the flush), and qemu-img check finds no
 * corruption (leaks are what an interrupted allocation may leave, so allowed).
 *
 * Which crash images: at each `crash` op the target lists the crash states of
 * its write log since the last flush (RecordingStorage.crashPlan: every
 * subset, or every prefix, or a sample, plus torn writes) within
 * CRASH_STATE_BUDGET. Every state is opened and its guest view judged in
 * process; qemu-img check, a process each, runs on CRASH_QEMU_CHECKS_PER_OP
 * of them. `crashTotals` counts what was done, for suites to assert on.
 */
import type { DiskModel } from '../model/disk.js';
import { ANY, SECTOR, type Layer } from '../model/layer.js';
import type { CheckOutcome } from '../qemu/index.js';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Qcow2Image } from '../qcow2/image.js';
import type { MemoryStorage } from '../qcow2/storage/memory.js';
import { staleSectorOrigin, type CrashFill, type CrashMode, type RecordingStorage } from '../qcow2/storage/recording.js';
import type { BlockStorage } from '../qcow2/storage/types.js';
import { prng } from './prng.js';
import { describeSector, describeStamp, fillSector } from './data.js';
import { isRangeOp, type Op } from './ops.js';
import type { CrashCoverage, CrashImage, Target } from './targets/types.js';

/** Crash states examined per `crash` op at most; each is opened and read whole in process. */
export const CRASH_STATE_BUDGET = 24;
/** Of those, how many qemu-img check also judges (one process each: the expensive part). */
export const CRASH_QEMU_CHECKS_PER_OP = 2;

/** What the crash oracle did in this process, summed over every crash op. */
export const crashTotals = {
  crashOps: 0,
  states: 0,
  qemuChecks: 0,
  tornStates: 0,
  byMode: { 'every-subset': 0, 'every-prefix': 0, sampled: 0 } as Record<CrashMode, number>,
};

export function describeCoverage(c: CrashCoverage): string {
  const torn = c.tornKnown ? `, ${c.torn} of ${c.tornKnown} torn-write states` : '';
  return `${c.mode}: ${c.states} crash states of ${c.pending} pending writes${torn}`;
}

interface Allowed {
  sizes: number[];
  allowed: number[][];
  expected: Buffer;
  single: [number, number][];
  /** The other sectors (several allowed values, or any), ascending: the only ones judged one by one. */
  multi: number[];
  /** For each of `multi`, the bytes of each allowed value in turn (built once, compared by every state). */
  multiBytes: Buffer[];
}

export class CrashTracker {
  private atFlush: Layer;
  /** Sector -> stamps it held after each range op since the flush (only sectors touched since). */
  private touched = new Map<number, Set<number>>();
  /** The whole view after each wholesale change since the flush. */
  private versions: Layer[] = [];

  constructor(private readonly model: DiskModel) {
    this.atFlush = model.active.clone();
  }

  /** Call after every op, once the model has been updated (accepted ops only change it). */
  afterOp(op: Op, accepted: boolean): void {
    // A fault op changes what the op it wraps changes (the model holds what the target kept).
    if (op.kind === 'fault') return this.afterOp(op.op, accepted);
    if (op.kind === 'crash') return;
    this.allowedCache = undefined;
    if (op.kind === 'flush' || op.kind === 'reopen' || op.kind === 'aio') {
      // reopen closes the image, which flushes; an aio group ends with a flush.
      if (accepted) this.reset();
      return;
    }
    const m = this.model;
    if (isRangeOp(op)) {
      const end = Math.min(op.off + op.len, m.size) / SECTOR;
      for (let s = op.off / SECTOR; s < end; s++) {
        let h = this.touched.get(s);
        if (!h) this.touched.set(s, (h = new Set()));
        h.add(m.stampAt(m.active, s));
      }
      return;
    }
    // Snapshot create/delete and amend leave the guest view as it is.
    if (accepted && ((op.kind === 'snapshot' && op.action === 'apply') || op.kind === 'resize')) {
      this.versions.push(m.active.clone());
    }
  }

  private reset(): void {
    this.atFlush = this.model.active.clone();
    this.touched.clear();
    this.versions = [];
  }

  /**
   * What a crash image may hold now, computed once per crash point (the
   * tracker does not change while its crash states are judged): per sector
   * the stamps it may hold, and for the sectors with exactly one (most of
   * them) the expected bytes, compared run by run instead of sector by sector.
   */
  private allowedCache: Allowed | undefined;

  private allowedNow(): Allowed {
    if (this.allowedCache) return this.allowedCache;
    const m = this.model;
    const layers = [this.atFlush, ...this.versions];
    const sectors = Math.max(...layers.map((l) => l.sectorCount));
    const allowed: number[][] = [];
    const expected = Buffer.alloc(sectors * SECTOR);
    const single: [number, number][] = [];
    const multi: number[] = [];
    const multiBytes: Buffer[] = [];
    for (let s = 0; s < sectors; s++) {
      const set = new Set<number>();
      for (const l of layers) if (s < l.sectorCount) set.add(m.stampAt(l, s));
      for (const st of this.touched.get(s) ?? []) set.add(st);
      const list = [...set];
      allowed.push(list);
      if (list.length !== 1 || list[0] === ANY) {
        multi.push(s);
        const bytes = Buffer.alloc(list.length * SECTOR);
        list.forEach((st, k) => st > 0 && fillSector(bytes, k * SECTOR, st, s));
        multiBytes.push(bytes);
        continue;
      }
      if (list[0] !== 0) fillSector(expected, s * SECTOR, list[0]!, s);
      const last = single[single.length - 1];
      if (last && last[1] === s) last[1] = s + 1;
      else single.push([s, s + 1]);
    }
    this.allowedCache = { sizes: [...new Set(layers.map((l) => l.size))], allowed, expected, single, multi, multiBytes };
    return this.allowedCache;
  }

  /** What is wrong with a crash image's guest view (`size` bytes in `guest`), if anything. */
  verifyGuest(size: number, guest: Uint8Array): string | undefined {
    const { sizes, allowed, expected, single, multi, multiBytes } = this.allowedNow();
    if (!sizes.includes(size)) return `virtual size ${size} is none the disk had since the last flush (${sizes.join(', ')})`;
    const buf = Buffer.from(guest.buffer, guest.byteOffset, guest.byteLength);
    const sectors = size / SECTOR;
    // A sector with several allowed values passes when it holds any one of them (ANY: whatever it holds).
    const matches = (m: number, s: number): boolean => {
      const list = allowed[s]!;
      const bytes = multiBytes[m]!;
      for (let k = 0; k < list.length; k++) {
        if (list[k] === ANY || buf.compare(bytes, k * SECTOR, (k + 1) * SECTOR, s * SECTOR, (s + 1) * SECTOR) === 0) return true;
      }
      return false;
    };
    const bad: number[] = [];
    // Sectors with one allowed value: whole runs at a time, sector by sector only where a run differs.
    for (const [a, b0] of single) {
      const b = Math.min(b0, sectors);
      if (a >= b || buf.compare(expected, a * SECTOR, b * SECTOR, a * SECTOR, b * SECTOR) === 0) continue;
      for (let s = a; s < b; s++) if (buf.compare(expected, s * SECTOR, (s + 1) * SECTOR, s * SECTOR, (s + 1) * SECTOR) !== 0) bad.push(s);
    }
    for (let m = 0; m < multi.length && multi[m]! < sectors; m++) if (!matches(m, multi[m]!)) bad.push(multi[m]!);
    if (bad.length === 0) return undefined;
    const first = bad.reduce((a, b) => Math.min(a, b));
    const msg = this.describeBad(guest, first, allowed[first]!);
    return bad.length > 1 ? `${msg} (${bad.length} sectors differ)` : msg;
  }

  private describeBad(guest: Uint8Array, s: number, allowed: number[]): string {
    const stale = staleSectorOrigin(guest, s * SECTOR);
    const read =
      stale === undefined
        ? describeSector(guest, s * SECTOR)
        : `stale bytes of host sector ${stale} (space a lost write would have filled: data the guest never wrote)`;
    return (
      `at guest offset ${s * SECTOR} read ${read}, ` +
      `which it never held since the last flush (${allowed.map(describeStamp).join(' or ')}` +
      `${this.touched.has(s) || this.versions.length ? '' : '; untouched since the flush'})`
    );
  }
}

/**
 * The crash oracle at one crash point: every crash state the target lists
 * must open and read as the tracker allows, and CRASH_QEMU_CHECKS_PER_OP of
 * them, spread by `seed`, must pass qemu-img check. Returns the first
 * problem (naming the state and what was covered) and the checks run.
 */
export async function examineCrashStates(
  crashImages: NonNullable<Target['crashImages']>,
  tracker: CrashTracker,
  at: string,
  seed: number,
  check: (file: string) => Promise<CheckOutcome>,
): Promise<{ problem?: string; qemuChecks: number }> {
  let problem: string | undefined;
  let qemuChecks = 0;
  const visit: CrashVisit = async (c, n, total) => {
    const what = `crash state ${n + 1} of ${total} (${c.label}) at ${at}`;
    if (!c.opened) {
      problem = `${what} does not open: ${c.error}`;
      return false;
    }
    const bad = tracker.verifyGuest(c.size, c.guest);
    if (bad) {
      problem = `${what}: ${bad}`;
      return false;
    }
    if (!qemuChecked(n, total, seed)) return true;
    const outcome = await check(c.file());
    qemuChecks++;
    const judged = judgeCrashCheck(outcome);
    if (judged) problem = `${what}, after our open: ${judged}`;
    return !judged;
  };
  const coverage = await crashImages(CRASH_STATE_BUDGET, seed, visit);
  crashTotals.crashOps++;
  crashTotals.states += coverage.states;
  crashTotals.qemuChecks += qemuChecks;
  crashTotals.tornStates += coverage.torn;
  crashTotals.byMode[coverage.mode]++;
  return { problem: problem && `${problem} [${describeCoverage(coverage)}]`, qemuChecks };
}

export type CrashVisit = (image: CrashImage, n: number, total: number) => Promise<boolean>;

/**
 * Walks the crash states of a recording (RecordingStorage.crashPlan, random
 * states drawn from `seed`): each is opened read-write with `open` (which
 * repairs a dirty image), read whole, closed, and handed to `visit`; a file
 * for qemu-img is written only when `visit` asks for it.
 */
export async function visitCrashStates(
  rec: RecordingStorage,
  o: { budget: number; seed: number; dir: string; open: (s: BlockStorage) => Qcow2Image; fill?: CrashFill },
  visit: CrashVisit,
): Promise<CrashCoverage> {
  const plan = rec.crashPlan(o.budget, prng(o.seed));
  for (let n = 0; n < plan.states.length; n++) {
    const state = plan.states[n]!;
    const storage = rec.crashStorageOf(state, o.fill);
    if (!(await visit(openCrashState(storage, state.label, o, n), n, plan.states.length))) break;
  }
  return { mode: plan.mode, pending: plan.pending, states: plan.states.length, torn: plan.torn, tornKnown: plan.tornKnown };
}

function openCrashState(storage: MemoryStorage, label: string, o: { dir: string; open: (s: BlockStorage) => Qcow2Image }, n: number): CrashImage {
  let img: Qcow2Image | undefined;
  try {
    img = o.open(storage);
    const size = img.virtualSize;
    const guest = img.read(0, size);
    img.close();
    img = undefined;
    const file = path.join(o.dir, `crash-${n}.qcow2`);
    return { opened: true, label, size, guest, file: () => (fs.writeFileSync(file, storage.view()), file) };
  } catch (e) {
    // Any exception, a Qcow2Error included: a crash image must open.
    const err = e as Error;
    return { opened: false, label, error: `${err?.name ?? 'Error'}: ${err?.message ?? String(e)}` };
  } finally {
    try {
      img?.close();
    } catch {
      // Already reported: the open or the read failed.
    }
  }
}

/** Whether state n of total is one of the CRASH_QEMU_CHECKS_PER_OP that qemu-img checks: evenly spread, offset by the seed. */
function qemuChecked(n: number, total: number, seed: number): boolean {
  const k = Math.min(CRASH_QEMU_CHECKS_PER_OP, total);
  const first = seed % total;
  for (let j = 0; j < k; j++) if (n === (first + Math.floor((j * total) / k)) % total) return true;
  return false;
}

/** A crash image may leak clusters, never be corrupt. */
export function judgeCrashCheck(c: CheckOutcome): string | undefined {
  const j = c.json;
  if ((c.rc === 0 || c.rc === 3) && j && j['check-errors'] === 0 && (j.corruptions ?? 0) === 0) return undefined;
  const counts = j ? `corruptions=${j.corruptions ?? 0} leaks=${j.leaks ?? 0} check-errors=${j['check-errors']}` : 'no JSON';
  const detail = c.stderr.split('\n').filter(Boolean).slice(0, 4).join(' | ');
  return `qemu-img check rc ${c.rc}: ${counts}${detail ? `: ${detail}` : ''}`;
}

/** A deterministic seed for crash image `n` at op `index` (same trace, same crash images). */
export function crashSeed(index: number, n: number): number {
  let x = (Math.imul(index + 1, 0x9e3779b1) ^ Math.imul(n + 1, 0x85ebca6b)) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x2c1b3c6d) >>> 0;
  return (x ^ (x >>> 12)) >>> 0;
}
