/**
 * The real qemu-img as a test's judge, on top of src/qemu's wrappers (every
 * call has their timeout and their error classes): check with its counts,
 * the guest view as raw bytes, compare, and the guest-visible allocation map.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { imgCheck, imgCompare, imgConvertToRaw, QEMU_IMG, QemuToolError, runTool, type CheckOutcome, type QemuCheck } from '../../src/qemu/index.js';

/** Keeps failure messages and child reports short; qemu-img check can print an error per cluster. */
const MAX_STDERR = 4000;

/** The counts of qemu-img check's JSON (its two string fields, filename and format, left out). */
export type QemuCheckCounts = { [K in keyof QemuCheck as QemuCheck[K] extends number | undefined ? K : never]?: number };

export interface QemuCheckResult extends Omit<CheckOutcome, 'json'> {
  json?: QemuCheckCounts;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  /** stdout JSON and stderr together, for an assertion message. */
  out: string;
}

/** qemu-img check --output=json (optionally repairing); never throws on a non-zero exit. */
export async function qemuCheck(file: string, repair?: 'leaks' | 'all'): Promise<QemuCheckResult> {
  const c = await imgCheck(file, { repair });
  let j: QemuCheckCounts | undefined;
  if (c.json) {
    const { filename: _f, format: _t, ...counts } = c.json;
    j = counts;
  }
  const stderr = c.stderr.slice(0, MAX_STDERR);
  return {
    rc: c.rc,
    json: j,
    stderr,
    corruptions: j?.corruptions ?? 0,
    leaks: j?.leaks ?? 0,
    checkErrors: j?.['check-errors'] ?? 0,
    out: `${j ? JSON.stringify(j) : 'no JSON'}\n${stderr}`,
  };
}

/** qemu-img check of image bytes held in memory, written to `file` first. */
export async function qemuCheckBytes(bytes: Uint8Array, file: string): Promise<QemuCheckResult> {
  fs.writeFileSync(file, bytes);
  return qemuCheck(file);
}

let rawSeq = 0;

/** The guest view of an image according to qemu-img convert -O raw. */
export async function qemuRaw(file: string, format = 'qcow2'): Promise<Uint8Array> {
  const out = path.join(path.dirname(file), `${path.basename(file)}.${process.pid}-${++rawSeq}.raw`);
  try {
    await imgConvertToRaw(file, out, { format });
    return new Uint8Array(fs.readFileSync(out));
  } finally {
    fs.rmSync(out, { force: true });
  }
}

/** qemu-img compare: 'identical', or the exit code and what qemu-img said. */
export async function qemuCompare(a: string, b: string, formatA = 'qcow2', formatB = 'qcow2'): Promise<string> {
  const r = await imgCompare(a, b, { formatA, formatB });
  return r.rc === 0 ? 'identical' : `rc ${r.rc}: ${r.stdout}${r.stderr}`;
}

interface MapExtent {
  start: number;
  length: number;
  depth: number;
  zero: boolean;
  data: boolean;
}

/** qemu-img map as guest-visible status per range, one line each (host offsets left out). */
export async function qemuMap(file: string): Promise<string> {
  const r = await runTool(QEMU_IMG, ['map', '--output=json', file]);
  if (r.rc !== 0) throw new QemuToolError(`qemu-img map ${file} failed (rc ${r.rc}): ${r.stderr.trim()}`, r.rc, r.stderr);
  const extents = JSON.parse(r.stdout) as MapExtent[];
  // qemu-img splits extents where host offsets are not contiguous; host placement is not
  // guest-visible, so neighbours with the same status are merged.
  const merged: MapExtent[] = [];
  for (const e of extents) {
    const last = merged[merged.length - 1];
    if (last && last.start + last.length === e.start && last.depth === e.depth && last.zero === e.zero && last.data === e.data) {
      last.length += e.length;
    } else merged.push({ ...e });
  }
  return merged.map((e) => `${e.start}+${e.length} depth=${e.depth} zero=${e.zero} data=${e.data}`).join('\n');
}
