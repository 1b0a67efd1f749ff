/**
 * The hostile suite's per-case work, run inside a bounded child process by
 * the tests: open a corrupted image with our engine, answer info, read the
 * whole guest disk, check it; and, on a copy, open it read-write and write.
 * Every step must either succeed or throw a Qcow2Error subclass; anything
 * else (TypeError, RangeError from an allocation, …) is a bug it reports.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { Qcow2Error, StorageIoError } from '../qcow2/errors.js';
import { Qcow2Image } from '../qcow2/image.js';
import { MemoryStorage } from '../qcow2/storage/memory.js';
import type { BackingFormat, CheckResult, GuestDevice, OpenOptions } from '../qcow2/types.js';

export interface ErrorInfo {
  name: string;
  message: string;
  /** True when the error is a Qcow2Error subclass (a clean refusal). */
  qcow2: boolean;
  /** First stack lines, only for errors that are not Qcow2Error (they are bugs). */
  stack?: string;
}

export interface StepResult {
  step: 'open' | 'info' | 'read' | 'check' | 'open-rw' | 'write' | 'close' | 'reopen';
  ok: boolean;
  ms: number;
  error?: ErrorInfo;
  note?: string;
}

export function describeError(e: unknown): ErrorInfo {
  if (e instanceof Qcow2Error) return { name: e.constructor.name, message: e.message, qcow2: true };
  if (e instanceof Error) {
    return { name: e.constructor.name, message: e.message, qcow2: false, stack: e.stack?.split('\n').slice(0, 8).join('\n') };
  }
  return { name: typeof e, message: String(e), qcow2: false };
}

function step<T>(steps: StepResult[], name: StepResult['step'], fn: () => T): T | undefined {
  const t0 = performance.now();
  try {
    const v = fn();
    steps.push({ step: name, ok: true, ms: performance.now() - t0 });
    return v;
  } catch (e) {
    steps.push({ step: name, ok: false, ms: performance.now() - t0, error: describeError(e) });
    return undefined;
  }
}

/**
 * Backing files of in-memory cases: resolved relative to `dir` like a file
 * opener would, loaded into memory read-only; a missing file is the same
 * StorageIoError a file opener gives.
 */
export function memoryBackingOpener(dir: string): NonNullable<OpenOptions['openBacking']> {
  const opener = (name: string, format: BackingFormat | undefined): GuestDevice | null => {
    const path = resolve(dir, name);
    if (!existsSync(path) || !statSync(path).isFile()) {
      throw new StorageIoError(`could not open backing file '${name}': no such file`, 'ENOENT');
    }
    const bytes = new Uint8Array(readFileSync(path));
    if (format === 'raw') return rawDevice(bytes);
    return Qcow2Image.open(new MemoryStorage(bytes, { readOnly: true }), { readOnly: true, openBacking: opener });
  };
  return opener;
}

function rawDevice(bytes: Uint8Array): GuestDevice {
  return {
    virtualSize: bytes.length,
    read: (o, l) => {
      const out = new Uint8Array(l);
      out.set(bytes.subarray(o, o + l));
      return out;
    },
    readInto: (o, dst) => {
      dst.fill(0);
      dst.set(bytes.subarray(o, o + dst.length));
    },
    close: () => {},
  };
}

export interface ReadCaseOptions {
  openBacking?: OpenOptions['openBacking'];
  /** Stop reading after this many guest bytes (a hostile size must not make the case slow). */
  readBudget?: number;
}

export interface ReadCaseResult {
  steps: StepResult[];
  virtualSize?: number;
  check?: Pick<CheckResult, 'checkErrors' | 'corruptions' | 'leaks' | 'corruptionsFixed' | 'leaksFixed'>;
}

const CHUNK = 1 << 20;

/**
 * Reads the guest disk the way convert -O raw would: block status first, and
 * only the ranges that are not known zeros. Returns the bytes read.
 */
export function readWholeDisk(img: Qcow2Image, budget: number): { bytes: number; note?: string } {
  const size = img.virtualSize;
  let off = 0;
  let bytes = 0;
  let calls = 0;
  const buf = new Uint8Array(CHUNK);
  while (off < size) {
    const st = img.blockStatus(off, Math.min(size - off, 2 ** 40));
    if (!(st.length > 0) || off + st.length > size) {
      throw new Error(`blockStatus(${off}) returned length ${st.length} (virtual size ${size})`);
    }
    if (!st.zero) {
      for (let p = off; p < off + st.length; p += CHUNK) {
        const n = Math.min(CHUNK, off + st.length - p);
        img.readInto(p, n === CHUNK ? buf : buf.subarray(0, n));
        bytes += n;
        if (bytes >= budget) return { bytes, note: `read budget of ${budget} bytes reached at ${p}` };
      }
    }
    off += st.length;
    if (++calls > 1_000_000) return { bytes, note: 'a million block-status extents; stopped' };
  }
  return { bytes };
}

/** Read-only side: open, info, read the disk, check('none'). */
export function runReadCase(bytes: Uint8Array, o: ReadCaseOptions = {}): ReadCaseResult {
  const steps: StepResult[] = [];
  const res: ReadCaseResult = { steps };
  const img = step(steps, 'open', () =>
    Qcow2Image.open(new MemoryStorage(bytes, { readOnly: true }), { readOnly: true, openBacking: o.openBacking }),
  );
  if (!img) return res;
  res.virtualSize = img.virtualSize;
  step(steps, 'info', () => img.info());
  const r = step(steps, 'read', () => readWholeDisk(img, o.readBudget ?? 256 * CHUNK));
  if (r?.note) steps[steps.length - 1].note = r.note;
  const c = step(steps, 'check', () => img.check('none'));
  if (c) {
    res.check = {
      checkErrors: c.checkErrors,
      corruptions: c.corruptions,
      leaks: c.leaks,
      corruptionsFixed: c.corruptionsFixed,
      leaksFixed: c.leaksFixed,
    };
  }
  step(steps, 'close', () => img.close());
  return res;
}

export interface WriteCaseResult {
  steps: StepResult[];
  /** The image after our writes and close, when every write went through. */
  after?: Uint8Array;
  /** Whether the engine accepted the writes (as opposed to refusing cleanly). */
  wrote: boolean;
  plan: PlannedWrite[];
  /** After writing: undefined when not reopened, else the first mismatch or 'ok'. */
  readback?: string;
  /**
   * First guest offset outside the written ranges whose content changed, when
   * the disk was small enough to compare whole (-1: nothing changed). On an
   * image whose metadata is consistent, anything but -1 means a write landed
   * on clusters it does not own.
   */
  othersChangedAt?: number;
}

/** Guest data compared before/after writing is capped at this many bytes. */
const COMPARE_LIMIT = 64 * CHUNK;

/** Guest ranges that are not known zeros (block status), up to `limit` bytes in all. */
function dataExtents(img: Qcow2Image, limit: number): [number, number][] | undefined {
  const out: [number, number][] = [];
  let total = 0;
  for (let off = 0; off < img.virtualSize; ) {
    const st = img.blockStatus(off, img.virtualSize - off);
    if (!(st.length > 0)) return undefined;
    if (!st.zero) {
      out.push([off, st.length]);
      total += st.length;
      if (total > limit) return undefined;
    }
    off += st.length;
  }
  return out;
}

export interface PlannedWrite {
  offset: number;
  /** Every byte of the write (a qemu-io `write -P` pattern, so QEMU can replay it). */
  byte: number;
  length: number;
}

/** Guest ranges the write side writes: start, middle (crossing a cluster boundary) and end of the disk. */
export function writePlan(virtualSize: number, clusterSize: number): PlannedWrite[] {
  const plan: PlannedWrite[] = [];
  const length = 4096;
  if (virtualSize < length) return plan;
  plan.push({ offset: 0, byte: 0xa1, length });
  const mid = Math.floor(virtualSize / 2 / clusterSize) * clusterSize - length / 2;
  if (mid > length && mid + length <= virtualSize) plan.push({ offset: mid, byte: 0xa2, length });
  const end = Math.floor((virtualSize - length) / 512) * 512;
  if (end > Math.max(mid, 0) + length) plan.push({ offset: end, byte: 0xa3, length });
  return plan;
}

/** The plan as qemu-io commands: the writes, then reads that verify them. */
export function planAsQemuIo(plan: PlannedWrite[]): { writes: string[]; reads: string[] } {
  return {
    writes: plan.map((w) => `write -P ${w.byte} ${w.offset} ${w.length}`),
    reads: plan.map((w) => `read -P ${w.byte} ${w.offset} ${w.length}`),
  };
}

/**
 * Write side: open read-write, write the plan, close; then reopen read-only
 * and read the written ranges back.
 */
export function runWriteCase(bytes: Uint8Array, o: ReadCaseOptions = {}): WriteCaseResult {
  const steps: StepResult[] = [];
  const storage = new MemoryStorage(bytes);
  const img = step(steps, 'open-rw', () => Qcow2Image.open(storage, { readOnly: false, openBacking: o.openBacking }));
  if (!img) return { steps, wrote: false, plan: [] };
  const plan = writePlan(img.virtualSize, img.clusterSize);
  // The guest's data before writing, when the engine can read it and there is not much of it.
  // A write that lands on a cluster it does not own shows up in one of these ranges afterwards.
  let pre: { extents: [number, number][]; data: Uint8Array[] } | undefined;
  try {
    const extents = dataExtents(img, COMPARE_LIMIT);
    if (extents) pre = { extents, data: extents.map(([o, l]) => img.read(o, l)) };
  } catch {
    pre = undefined;
  }
  let wrote = true;
  for (const w of plan) {
    const ok = step(steps, 'write', () => {
      img.write(w.offset, new Uint8Array(w.length).fill(w.byte));
      return true;
    });
    if (!ok) {
      wrote = false;
      break;
    }
  }
  const closed = step(steps, 'close', () => {
    img.close();
    return true;
  });
  if (!wrote || !closed) return { steps, wrote: false, plan, after: storage.bytes() };
  const after = storage.bytes();
  let othersChangedAt: number | undefined;
  let readback: string | undefined;
  const again = step(steps, 'reopen', () =>
    Qcow2Image.open(new MemoryStorage(after, { readOnly: true }), { readOnly: true, openBacking: o.openBacking }),
  );
  if (again) {
    try {
      readback = 'ok';
      for (const w of plan) {
        const got = again.read(w.offset, w.length);
        const bad = got.findIndex((b) => b !== w.byte);
        if (bad >= 0) {
          readback = `read back ${w.length} bytes at ${w.offset}: byte ${bad} is ${got[bad]}, wrote ${w.byte}`;
          break;
        }
      }
      if (pre) {
        othersChangedAt = -1;
        for (let k = 0; k < pre.extents.length && othersChangedAt < 0; k++) {
          const [o, l] = pre.extents[k];
          const post = again.read(o, l);
          const expect = pre.data[k];
          for (const w of plan) {
            const s = Math.max(w.offset, o);
            const e = Math.min(w.offset + w.length, o + l);
            if (e > s) expect.fill(w.byte, s - o, e - o);
          }
          const i = expect.findIndex((b, j) => b !== post[j]);
          if (i >= 0) othersChangedAt = o + i;
        }
      }
    } catch (e) {
      const d = describeError(e);
      readback = `reading back threw ${d.name}: ${d.message}`;
      if (!d.qcow2) steps.push({ step: 'reopen', ok: false, ms: 0, error: d });
    }
    again.close();
  }
  return { steps, wrote: true, plan, after, othersChangedAt, readback };
}

/** Steps whose error is not a Qcow2Error: each is a bug in the engine. */
export function uncleanSteps(steps: StepResult[]): StepResult[] {
  return steps.filter((s) => !s.ok && !s.error?.qcow2);
}
