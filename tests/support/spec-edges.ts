/**
 * Tools of the spec-edge suites (src/qcow2/spec-edges*.test.ts): qemu-img and
 * qemu-io run in one scratch directory, raw u64 peeks and pokes into an image
 * file, our whole-disk read, and sector-distinct data.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, expect } from 'vitest';
import { openQcow2File } from '../../src/qcow2/open-file.js';
import { firstDiff, Lcg } from './bytes.js';
import { qemuCheck } from './qemu.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
/** Host offset bits of an L1/L2 entry, as a bigint mask. */
export const OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;

/** A scratch directory removed after the file's tests, and the tools bound to it. */
export function edgeTools(prefix: string) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const p = (name: string) => path.join(dir, name);

  function run(cmd: string, args: string[]): { rc: number; stdout: string; stderr: string } {
    const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: dir, timeout: 30_000 });
    return { rc: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  function qemuImg(...args: string[]): string {
    const r = run('qemu-img', args);
    if (r.rc !== 0) throw new Error(`qemu-img ${args.join(' ')}: rc ${r.rc}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /** qemu-io on a file with a list of commands; fails the test on any command error. */
  function qemuIo(file: string, cmds: string[], extra: string[] = []): void {
    const r = run('qemu-io', [...extra, ...cmds.flatMap((c) => ['-c', c]), file]);
    const out = r.stdout + r.stderr;
    if (r.rc !== 0 || /fail|error/i.test(out)) throw new Error(`qemu-io ${cmds.join('; ')}: rc ${r.rc}: ${out}`);
  }

  async   function expectClean(file: string): Promise<void> {
    const c = await qemuCheck(file);
    expect(c, c.out).toMatchObject({ rc: 0, corruptions: 0, leaks: 0, checkErrors: 0 });
  }

  function expectSameBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
    expect(actual.length, `${what}: length`).toBe(expected.length);
    expect(firstDiff(actual, expected), `${what}: first differing byte`).toBe(-1);
  }

  function ourRead(file: string, opts: Parameters<typeof openQcow2File>[1] = {}): Uint8Array {
    const img = openQcow2File(file, { readOnly: true, ...opts });
    try {
      return img.read(0, img.virtualSize);
    } finally {
      img.close();
    }
  }

  /** Deterministic, sector-distinct data, compressible to about `ratio` of its size. */
  function data(len: number, seed: number, ratio = 0.5): Uint8Array {
    const d = new Uint8Array(len);
    const rnd = new Lcg(seed >>> 0 || 1);
    for (let i = 0; i < len; i++) d[i] = i % 512 < 512 * ratio ? rnd.byte() : (i >>> 9) & 0xff;
    return d;
  }

  function readU64(file: string, pos: number): bigint {
    const fd = fs.openSync(file, 'r');
    try {
      const b = Buffer.alloc(8);
      fs.readSync(fd, b, 0, 8, pos);
      return b.readBigUInt64BE(0);
    } finally {
      fs.closeSync(fd);
    }
  }

  function writeU64(file: string, pos: number, v: bigint): void {
    const fd = fs.openSync(file, 'r+');
    try {
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(v);
      fs.writeSync(fd, b, 0, 8, pos);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Host offset of the L2 table for L1 index i. */
  function l2Offset(file: string, i: number): number {
    return Number(readU64(file, Number(readU64(file, 40)) + i * 8) & OFFSET_MASK);
  }

  return { dir, p, run, qemuImg, qemuIo, expectClean, expectSameBytes, ourRead, data, readU64, writeU64, l2Offset };
}
