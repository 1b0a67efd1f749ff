/**
 * fault WHERE ERRNO OP: OP runs with one I/O error injected into its I/O
 * (issue 12; QEMU's iotest 026 and SQLite's fault loops do the same). WHERE is
 * `read@N`, `write@N` or `flush@N` on our engine (the N-th request of that
 * kind OP makes to the storage, through FaultyStorage) or a blkdebug event on
 * QEMU (the first time the event fires, blkdebug fails the next request).
 *
 * What must hold (the model's side): OP fails, or succeeds if the
 * implementation recovered or the fault point was never reached; each sector
 * of OP's range then holds its old or its new value, every other sector is
 * unchanged, qemu-img check finds no corruption (leaks are allowed, as 026
 * allows them), and later ops behave normally. On our engine, in addition,
 * nothing may be written into a data cluster OP may not touch.
 */
import { SECTOR } from '../../model/layer.js';
import { entryOffset, isCompressedEntry, isCopied } from '../../qcow2/format/entries.js';
import { UnsupportedFeatureError } from '../../qcow2/errors.js';
import type { Qcow2Image } from '../../qcow2/image.js';
import type { FaultKind } from '../../qcow2/storage/faulty.js';
import { sectorMatches } from '../data.js';
import { shq } from './text.js';
import { OpParseError, type FaultErrno, type FaultOp, type Op, type OpSpec } from './types.js';

/** What the fault spec needs of the table it sits in (passed in, so the modules form no import cycle). */
export interface OpTable {
  specOf<O extends Op>(op: O): OpSpec<O>;
  formatOp(op: Op): string;
  parseOp(line: string): Op;
}

/** blkdebug events of QEMU 7.2's qcow2 driver worth failing at (qapi BlkdebugEvent). */
export const BLKDEBUG_EVENTS = [
  'l1_update',
  'l2_load',
  'l2_update',
  'l2_alloc_write',
  'l2_alloc_cow_read',
  'refblock_load',
  'refblock_update',
  'refblock_alloc',
  'refblock_alloc_write',
  'refblock_alloc_hookup',
  'refblock_alloc_switch_table',
  'cluster_alloc',
  'cluster_alloc_bytes',
  'cluster_free',
  'cow_read',
  'cow_write',
  'write_aio',
  'write_compressed',
  'read_aio',
  'read_backing_aio',
  'pwritev',
  'pwritev_zero',
  'flush_to_os',
  'flush_to_disk',
  'cor_write',
] as const;

/** Storage request kinds our engine's fault points count. */
export const STORAGE_FAULT_KINDS: readonly FaultKind[] = ['read', 'write', 'flush'];

/**
 * The same in the external data file (`data-write@2`: the second write to the
 * data file): guest data lives there, so these fail the data path itself,
 * with the metadata in the image file going on around it. Drawn only for
 * images that have a data file; `data-read@N` parses too, but no guest write
 * of our engine reads the data file (copy-on-write reads come from the
 * backing file, and a data file rules out snapshots and compression), so it
 * is not drawn.
 */
export const DATA_FILE_FAULT_POINTS = ['data-write', 'data-flush'] as const;

/** Fault points of our engine: the image file's requests, then the data file's. */
export const TS_FAULT_POINTS: readonly string[] = [...STORAGE_FAULT_KINDS, ...DATA_FILE_FAULT_POINTS];

const ERRNO_CODE: Record<FaultErrno, { code: string; value: number }> = {
  eio: { code: 'EIO', value: 5 },
  enospc: { code: 'ENOSPC', value: 28 },
};

/** A storage fault point (`write@3`, `data-write@3`), or undefined for a blkdebug event. */
export function storagePoint(where: string): { kind: FaultKind; n: number; file: 'image' | 'data' } | undefined {
  const m = /^(data-)?(read|write|flush)@([1-9]\d*)$/.exec(where);
  return m ? { kind: m[2] as FaultKind, n: Number(m[3]), file: m[1] ? 'data' : 'image' } : undefined;
}

/** The --image-opts string that opens `image` through blkdebug with one error at `event`. */
export function blkdebugOptions(image: string, event: string, errno: FaultErrno): string {
  // In a QemuOpts string a comma is escaped by doubling it.
  const file = image.replace(/,/g, ',,');
  return [
    'driver=qcow2',
    'file.driver=blkdebug',
    `file.image.filename=${file}`,
    `file.inject-error.0.event=${event}`,
    `file.inject-error.0.errno=${ERRNO_CODE[errno].value}`,
    'file.inject-error.0.once=on',
  ].join(',');
}

/** A write into a data cluster the op had no business touching (a finding, not a refusal). */
export class FaultContainmentError extends Error {
  override name = 'FaultContainmentError';
}

/**
 * Host ranges of data clusters `op` may not write: those of every guest
 * cluster outside its range, and inside it those shared with a snapshot (no
 * COPIED flag: a write there must copy on write). Compressed clusters are not
 * listed (they share host clusters at byte granularity).
 */
function protectedClusters(img: Qcow2Image, range: [number, number] | undefined): Map<number, number> {
  const cs = img.clusterSize;
  const out = new Map<number, number>(); // host offset -> guest cluster
  const first = range ? Math.floor(range[0] / cs) : 0;
  const end = range ? Math.ceil((range[0] + range[1]) / cs) : 0;
  const clusters = Math.ceil(img.virtualSize / cs);
  for (let vc = 0; vc < clusters; vc++) {
    const e = img.entryFor(vc);
    if (isCompressedEntry(e.hi)) continue;
    const host = entryOffset(e.hi, e.lo);
    if (host === 0) continue;
    if (vc >= first && vc < end && isCopied(e.hi)) continue;
    out.set(host, vc);
  }
  return out;
}

function checkContainment(writes: [number, number][], guarded: Map<number, number>, cs: number, what: string): void {
  for (const [off, len] of writes) {
    for (let c = Math.floor(off / cs) * cs; c < off + len; c += cs) {
      const vc = guarded.get(c);
      if (vc !== undefined) {
        throw new FaultContainmentError(`${what} wrote host bytes ${off}+${len} into the data cluster at ${c} of guest cluster ${vc}, which it may not touch`);
      }
    }
  }
}

const FAULT_SHARE = 4; // one guest I/O seed in FAULT_SHARE runs with a fault, where the target can inject them

/** The nearest seed `pick` (0..1000) that chooses a fault (for generation biased toward faults). */
export function faultPick(pick: number): number {
  const p = pick - (pick % FAULT_SHARE) + FAULT_SHARE - 1;
  return p > 1000 ? p - FAULT_SHARE : p;
}

export function makeFault(t: OpTable): OpSpec<FaultOp> {
  const inner = (op: FaultOp) => t.specOf(op.op);
  return {
    kind: 'fault',
    verb: 'fault',
    format: (op) => `fault ${op.where} ${op.errno} ${t.formatOp(op.op)}`,
    parse: (w, line) => {
      const [, where, errno] = w;
      if (!where || !(storagePoint(where) || (BLKDEBUG_EVENTS as readonly string[]).includes(where))) {
        throw new OpParseError(`expected fault read@N|write@N|flush@N|<blkdebug event> in '${line}'`);
      }
      if (errno !== 'eio' && errno !== 'enospc') throw new OpParseError(`expected eio or enospc in '${line}'`);
      const op = t.parseOp(w.slice(3).join(' '));
      if (!t.specOf(op).faultable) throw new OpParseError(`'${t.formatOp(op)}' cannot run with a fault in '${line}'`);
      return { kind: 'fault', where, errno, op };
    },
    expect: (m, op) => {
      const e = inner(op).expect(m, op.op);
      if (e.verdict === 'refuse') return e;
      return { verdict: 'either', reason: `an injected ${op.errno} at ${op.where} may fail it` };
    },
    apply: (m, op, stamp) => {
      inner(op).apply(m, op.op, stamp);
      m.faultedIo();
    },
    touches: (op) => inner(op).touches(op.op),
    dataRange: (op) => inner(op).dataRange?.(op.op),
    engine: (s, op, data) => {
      const f = s.faults;
      const point = storagePoint(op.where);
      if (!f) throw new UnsupportedFeatureError('fault injection needs a storage that can fail (the ts target)');
      if (!point) throw new UnsupportedFeatureError(`fault point '${op.where}' is a blkdebug event: only QEMU has those`);
      const spec = inner(op);
      const range = spec.dataRange?.(op.op) ?? (spec.touches(op.op) as [number, number][])[0];
      const guarded = protectedClusters(s.image, range);
      const dataFile = s.dataFaults;
      if (point.file === 'data' && !dataFile) throw new UnsupportedFeatureError(`fault point '${op.where}' needs an image with an external data file`);
      const armed = point.file === 'data' ? dataFile! : f;
      armed.arm(point.kind, point.n, ERRNO_CODE[op.errno].code);
      if (dataFile && armed !== dataFile) dataFile.watch();
      try {
        spec.engine!(s, op.op, data);
      } finally {
        const imageWrites = f.disarm();
        // With a data file, data clusters live there (host offset = guest offset,
        // qcow2.txt "External data file"): the image file holds metadata only, so
        // its writes cannot land in a data cluster and must not be held against it.
        const dataWrites = dataFile?.disarm();
        checkContainment(dataWrites ?? imageWrites, guarded, s.image.clusterSize, `'${t.formatOp(op)}'`);
      }
    },
    qemu: async (op, q, data) => {
      if (storagePoint(op.where)) return { ok: false, error: `fault point '${op.where}' needs a storage the harness controls` };
      const file = data ? q.writeData(data) : undefined;
      const cmd = inner(op).qemuIo!(op.op, file);
      return q.ioWithOptions(cmd, blkdebugOptions(q.image, op.where, op.errno));
    },
    repro: (op, pattern) => {
      const step = inner(op).repro(op.op, pattern);
      if (!step || !('io' in step) || storagePoint(op.where)) return step;
      return { shell: `qemu-io --image-opts -c ${shq(step.io)} ${shq(blkdebugOptions('image.qcow2', op.where, op.errno))}` };
    },
    wrap: (seed, op, model, ctx) => {
      const points = ctx.faultPoints;
      if (!points?.length || !t.specOf(op).faultable || seed.pick % FAULT_SHARE !== FAULT_SHARE - 1) return null;
      if (op.kind === 'write-compressed' && ctx.knownBugs?.has('failed-compressed-write-keeps-l2-entry')) return null;
      // Data file points only where there is a data file (the draws elsewhere stay as they were).
      const here = model.dataFile ? points : points.filter((p) => !(DATA_FILE_FAULT_POINTS as readonly string[]).includes(p));
      const k = Math.floor(seed.pick / FAULT_SHARE);
      const p = here[k % here.length]!;
      // Our engine's points count requests (`write@3`); a blkdebug event names itself.
      const where = TS_FAULT_POINTS.includes(p) ? `${p}@${1 + (Math.floor(k / here.length) % 6)}` : p;
      return { kind: 'fault', where, errno: Math.floor(seed.pick / 100) % 3 === 0 ? 'enospc' : 'eio', op };
    },
    settleFailure: async (m, op, stamp, read) => {
      const spec = inner(op);
      const ranges = spec.touches(op.op);
      if (ranges === 'whole') return `fault around '${t.formatOp(op.op)}': the model cannot settle a wholesale change`;
      const before = m.active.clone();
      spec.apply(m, op.op, stamp);
      m.faultedIo();
      const scratch = new Uint8Array(SECTOR);
      for (const [off, len] of ranges) {
        const end = Math.min(off + len, m.size);
        if (end <= off) continue;
        const bytes = await read(off, end - off);
        for (let s = off / SECTOR; s < end / SECTOR; s++) {
          const at = s * SECTOR - off;
          const now = m.stampAt(m.active, s);
          if (now < 0 || sectorMatches(bytes, at, now, s, scratch)) continue;
          const old = m.stampAt(before, s);
          if (old >= 0 && !sectorMatches(bytes, at, old, s, scratch)) {
            return `after the failed '${t.formatOp(op)}' sector ${s} holds neither its old nor its new value`;
          }
          m.restoreSector(before, s);
        }
        m.markMaybeAllocated(off, end - off);
      }
      return undefined;
    },
    // Also when the op succeeded: a driver may recover from the error (QEMU
    // ignores some refcount errors of a discard, and retries nothing) and leak.
    mayLeak: 'an op run with an injected I/O error may leak clusters, failed or not (QEMU iotest 026 allows it)',
  };
}
