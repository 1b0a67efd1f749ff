/**
 * Child entry of the limits suite: creates a real (sparse) image file at a
 * size limit with our engine, writes at scattered offsets, reopens it,
 * reads everything back, and checks it; the parent bounds its RSS.
 */
import { FileStorage } from '../../src/qcow2/storage/file.js';
import { Qcow2Image } from '../../src/qcow2/image.js';
import { describeError } from '../../src/harness/hostile.js';
import { readJob, serveCases, type CaseJob } from '../hostile/child-lib.js';

export interface LimitCase {
  id: string;
  path: string;
  size: number;
  clusterSize: number;
  writes: { offset: number; byte: number }[];
  /** Guest offsets never written (must read as zeros). */
  holes: number[];
}

export interface LimitReport {
  ok: boolean;
  failure?: string;
  check?: { corruptions: number; leaks: number; checkErrors: number };
  virtualSize?: number;
}

export const WRITE_LEN = 4096;

const job = readJob<CaseJob & { cases: LimitCase[] }>();

await serveCases<CaseJob, LimitCase>(job, (c): LimitReport => {
  let stage = 'create';
  try {
    const img = Qcow2Image.create(FileStorage.create(c.path), { size: c.size, clusterSize: c.clusterSize });
    stage = 'write';
    for (const w of c.writes) img.write(w.offset, new Uint8Array(WRITE_LEN).fill(w.byte));
    stage = 'close';
    img.close();
    stage = 'reopen';
    const ro = Qcow2Image.open(FileStorage.open(c.path, { readOnly: true }), { readOnly: true });
    stage = 'read';
    for (const w of c.writes) {
      const got = ro.read(w.offset, WRITE_LEN);
      const bad = got.findIndex((b) => b !== w.byte);
      if (bad >= 0) return { ok: false, failure: `read at ${w.offset}: byte ${bad} is ${got[bad]}, wrote ${w.byte}` };
    }
    for (const h of c.holes) {
      const got = ro.read(h, WRITE_LEN);
      if (got.some((b) => b !== 0)) return { ok: false, failure: `unwritten range at ${h} does not read as zeros` };
    }
    stage = 'check';
    const r = ro.check('none');
    const virtualSize = ro.virtualSize;
    ro.close();
    return { ok: true, virtualSize, check: { corruptions: r.corruptions, leaks: r.leaks, checkErrors: r.checkErrors } };
  } catch (e) {
    const d = describeError(e);
    return { ok: false, failure: `${stage}: ${d.name}: ${d.message}${d.stack ? `\n${d.stack}` : ''}` };
  }
});
