/**
 * A storage that remembers what is durable, for crash simulation
 * (DESIGN.md "Crash consistency"): the state at the last completed flush,
 * plus the writes issued since. A crash image is the durable state with any
 * subset of the later writes applied, each possibly torn at sector
 * granularity — what a disk with a volatile write cache may leave.
 */
import { MemoryStorage } from './memory.js';
import type { BlockStorage } from './types.js';

const SECTOR = 512;

type Pending = { kind: 'write'; offset: number; data: Uint8Array } | { kind: 'truncate'; length: number };

export class RecordingStorage implements BlockStorage {
  readonly readOnly = false;
  private readonly live: MemoryStorage;
  private durable: Uint8Array;
  private pending: Pending[] = [];

  constructor(initial?: Uint8Array) {
    this.live = new MemoryStorage(initial);
    this.durable = this.live.bytes();
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
  }
  truncate(length: number): void {
    this.live.truncate(length);
    this.pending.push({ kind: 'truncate', length });
  }
  flush(): void {
    if (this.pending.length === 0) return;
    this.durable = this.live.bytes();
    this.pending = [];
  }
  close(): void {
    // Nothing to release: a closed recording can still produce crash images.
  }

  /** The current contents (what a clean shutdown would leave). */
  bytes(): Uint8Array {
    return this.live.bytes();
  }

  /** Writes issued since the last flush. */
  get pendingWrites(): number {
    return this.pending.length;
  }

  /**
   * One crash image: the durable state plus the pending writes `keep` selects,
   * each cut down to the sectors `keepSector` selects (in issue order).
   */
  crashImage(keep: (index: number) => boolean, keepSector: (index: number, sector: number) => boolean): Uint8Array {
    const img = new MemoryStorage(this.durable);
    this.pending.forEach((p, i) => {
      if (!keep(i)) return;
      if (p.kind === 'truncate') {
        img.truncate(p.length);
        return;
      }
      const sectors = Math.ceil(p.data.length / SECTOR);
      for (let s = 0; s < sectors; s++) {
        if (!keepSector(i, s)) continue;
        img.write(p.offset + s * SECTOR, p.data.subarray(s * SECTOR, Math.min((s + 1) * SECTOR, p.data.length)));
      }
    });
    return img.bytes();
  }

  /** A random crash image from a [0,1) random source: each write kept with p=1/2, torn with p=1/4. */
  randomCrashImage(random: () => number): Uint8Array {
    const kept = this.pending.map(() => random() < 0.5);
    const torn = this.pending.map(() => random() < 0.25);
    return this.crashImage(
      (i) => kept[i],
      (i) => !torn[i] || random() < 0.5,
    );
  }
}
