/**
 * Read-ahead hints for streams of long reads (convert's copy loop): when
 * they are issued, the addon call itself, and that streamed reads return
 * the file's bytes exactly.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Lcg } from '../../../tests/support/bytes.js';
import { FileStorage, planReadAhead, READ_AHEAD, STREAM_READ_MIN, type ReadAheadState } from './file.js';
import { nativeAddon } from './native.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'read-ahead-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
const fresh = (): ReadAheadState => ({ streamEnd: -1, advisedTo: 0 });

describe('planReadAhead', () => {
  const size = 1024 * MiB;

  it('hints from the second contiguous long read on, 2 x READ_AHEAD past its end', () => {
    const st = fresh();
    expect(planReadAhead(st, 0, 2 * MiB, size)).toBeUndefined();
    expect(planReadAhead(st, 2 * MiB, 2 * MiB, size)).toEqual([4 * MiB, 2 * READ_AHEAD]);
  });

  it('hints again only once less than READ_AHEAD is left queued, continuing where the last hint ended', () => {
    const st = fresh();
    planReadAhead(st, 0, 2 * MiB, size);
    const first = planReadAhead(st, 2 * MiB, 2 * MiB, size)!;
    const hinted: [number, number][] = [];
    let off = 4 * MiB;
    for (; off < first[0] + first[1]; off += 2 * MiB) {
      const h = planReadAhead(st, off, 2 * MiB, size);
      if (h) hinted.push(h);
    }
    // The queue ran below READ_AHEAD once; each hint picks up exactly at the previous one's end.
    expect(hinted.length).toBeGreaterThan(0);
    expect(hinted[0]![0]).toBe(first[0] + first[1]);
    for (let i = 1; i < hinted.length; i++) expect(hinted[i]![0]).toBe(hinted[i - 1]![0] + hinted[i - 1]![1]);
    const calls = hinted.length + 1;
    // One call per READ_AHEAD or so of stream, not one per read.
    expect(calls).toBeLessThanOrEqual(Math.ceil(off / READ_AHEAD) + 1);
  });

  it('neither starts nor breaks a stream on short reads (tables between data runs)', () => {
    const st = fresh();
    planReadAhead(st, 0, 2 * MiB, size);
    expect(planReadAhead(st, 512 * MiB, 64 * 1024, size)).toBeUndefined();
    expect(planReadAhead(st, 700 * MiB, STREAM_READ_MIN - 1, size)).toBeUndefined();
    expect(planReadAhead(st, 2 * MiB, 2 * MiB, size)).toEqual([4 * MiB, 2 * READ_AHEAD]);
  });

  it('restarts after a jump, hinting nothing for the read that jumped', () => {
    const st = fresh();
    planReadAhead(st, 0, 2 * MiB, size);
    planReadAhead(st, 2 * MiB, 2 * MiB, size);
    expect(planReadAhead(st, 100 * MiB, 2 * MiB, size)).toBeUndefined();
    expect(planReadAhead(st, 102 * MiB, 2 * MiB, size)).toEqual([104 * MiB, 2 * READ_AHEAD]);
    // Backwards too: the old queue far ahead is not taken as still covering the new position.
    expect(planReadAhead(st, 10 * MiB, 2 * MiB, size)).toBeUndefined();
    expect(planReadAhead(st, 12 * MiB, 2 * MiB, size)).toEqual([14 * MiB, 2 * READ_AHEAD]);
  });

  it('never hints past the end of the file', () => {
    const st = fresh();
    planReadAhead(st, 0, 2 * MiB, 10 * MiB);
    expect(planReadAhead(st, 2 * MiB, 2 * MiB, 10 * MiB)).toEqual([4 * MiB, 6 * MiB]);
    expect(planReadAhead(st, 4 * MiB, 2 * MiB, 10 * MiB)).toBeUndefined();
    expect(planReadAhead(st, 6 * MiB, 2 * MiB, 10 * MiB)).toBeUndefined();
  });
});

describe('the addon hints', () => {
  const addon = nativeAddon();
  if (addon instanceof Error) throw addon;

  it('willNeed succeeds on a regular file and change nothing', () => {
    const file = path.join(dir, 'h.bin');
    const bytes = seeded(7, 3 * MiB);
    fs.writeFileSync(file, bytes);
    const fd = fs.openSync(file, 'r+');
    try {
      expect(addon.willNeed!(fd, 0, 3 * MiB)).toBe(0);
      expect(addon.willNeed!(fd, 2 * MiB, 64 * MiB)).toBe(0); // past the end is fine, as for posix_fadvise
    } finally {
      fs.closeSync(fd);
    }
    expect(Buffer.compare(fs.readFileSync(file), bytes)).toBe(0);
  });

  it('reports -ESPIPE on a pipe and throw on bad arguments', () => {
    const [r, w] = pipeFds();
    try {
      expect(addon.willNeed!(r, 0, 4096)).toBe(-os.constants.errno.ESPIPE);
    } finally {
      fs.closeSync(r);
      fs.closeSync(w);
    }
    expect(() => addon.willNeed!(-1, 0, 1)).toThrow(RangeError);
    expect(() => addon.willNeed!(0, 0, 0)).toThrow(RangeError);
    expect(() => (addon.willNeed as unknown as (...a: unknown[]) => number)(0, 'x', 1)).toThrow(TypeError);
  });
});

describe('FileStorage streaming reads', () => {
  it('return the file bytes exactly across hinted, short and jumping reads', () => {
    const file = path.join(dir, 's.bin');
    const bytes = seeded(11, 40 * MiB + 12345);
    fs.writeFileSync(file, bytes);
    const st = FileStorage.open(file, { readOnly: true, lock: false });
    try {
      const reads: [number, number][] = [];
      for (let off = 0; off < bytes.length; off += 2 * MiB) reads.push([off, Math.min(2 * MiB, bytes.length - off)]);
      reads.splice(5, 0, [123, 4096], [30 * MiB + 7, 3 * MiB]);
      reads.push([bytes.length - 100, 2 * MiB]); // runs past the end: zeros there
      for (const [off, len] of reads) {
        const got = new Uint8Array(len);
        st.readInto(off, got);
        const want = new Uint8Array(len);
        want.set(bytes.subarray(off, Math.min(bytes.length, off + len)));
        expect(Buffer.compare(got, want)).toBe(0);
      }
    } finally {
      st.close();
    }
  });
});

/** A pipe's two descriptors, from a FIFO in the test directory (Node has no pipe(2)). */
function pipeFds(): [number, number] {
  const fifo = path.join(dir, `fifo-${process.pid}`);
  fs.rmSync(fifo, { force: true });
  execFileSync('mkfifo', [fifo]);
  // O_RDWR on a FIFO opens without waiting for a peer (Linux); both ends then exist.
  const r = fs.openSync(fifo, fs.constants.O_RDWR);
  const w = fs.openSync(fifo, fs.constants.O_RDWR);
  return [r, w];
}

/** length bytes from a fixed seed, 32 bits at a time. */
function seeded(seed: number, length: number): Buffer {
  const g = new Lcg(seed);
  const b = Buffer.alloc(length);
  for (let p = 0; p + 4 <= length; p += 4) b.writeUInt32LE(g.next(), p);
  return b;
}
