/**
 * The crash oracle (DESIGN.md "Crash consistency"). The tracker remembers the
 * model at the last flush and, cheaply, what changed since: the stamps each
 * range op left on the sectors it touched, and a copy of the whole view after
 * each op that changes the view wholesale (snapshot apply, resize). A crash
 * image passes when it opened, its size is one the disk had since the flush,
 * every sector holds a value that sector held since the flush (so untouched
 * sectors hold exactly their value at the flush), and qemu-img check finds no
 * corruption (leaks are what an interrupted allocation may leave, so allowed).
 */
import type { DiskModel } from '../model/disk.js';
import { ANY, SECTOR, type Layer } from '../model/layer.js';
import type { CheckOutcome } from '../qemu/index.js';
import { describeSector, describeStamp, fillSector } from './data.js';
import { isRangeOp, type Op } from './ops.js';

/** Crash images examined per `crash` op. */
export const CRASH_IMAGES_PER_OP = 2;

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
    if (op.kind === 'flush' || op.kind === 'reopen') {
      // reopen closes the image, which flushes.
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

  /** What is wrong with a crash image's guest view (`size` bytes in `guest`), if anything. */
  verifyGuest(size: number, guest: Uint8Array): string | undefined {
    const m = this.model;
    const layers = [this.atFlush, ...this.versions];
    const sizes = [...new Set(layers.map((l) => l.size))];
    if (!sizes.includes(size)) return `virtual size ${size} is none the disk had since the last flush (${sizes.join(', ')})`;
    const buf = Buffer.from(guest.buffer, guest.byteOffset, guest.byteLength);
    const zeros = Buffer.alloc(SECTOR);
    const scratch = Buffer.alloc(SECTOR);
    const matches = (stamp: number, s: number): boolean => {
      if (stamp === ANY) return true;
      if (stamp === 0) return buf.compare(zeros, 0, SECTOR, s * SECTOR, (s + 1) * SECTOR) === 0;
      fillSector(scratch, 0, stamp, s);
      return buf.compare(scratch, 0, SECTOR, s * SECTOR, (s + 1) * SECTOR) === 0;
    };
    let bad: string | undefined;
    let count = 0;
    for (let s = 0; s < size / SECTOR; s++) {
      const allowed = new Set<number>();
      for (const l of layers) if (s < l.sectorCount) allowed.add(m.stampAt(l, s));
      for (const st of this.touched.get(s) ?? []) allowed.add(st);
      let ok = false;
      for (const st of allowed) if ((ok = matches(st, s))) break;
      if (ok) continue;
      count++;
      bad ??=
        `at guest offset ${s * SECTOR} read ${describeSector(guest, s * SECTOR)}, ` +
        `which it never held since the last flush (${[...allowed].map(describeStamp).join(' or ')}` +
        `${this.touched.has(s) || this.versions.length ? '' : '; untouched since the flush'})`;
    }
    return bad && (count > 1 ? `${bad} (${count} sectors differ)` : bad);
  }
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
