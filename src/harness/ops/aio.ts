/**
 * aio REQ ; REQ [; REQ [; REQ]]: two to four requests in flight at once, then
 * a flush (issue 12 item 3). A REQ is `write -P 0xNN OFF LEN` (the range
 * filled with byte NN), `write -z [-u] OFF LEN`, `read OFF LEN` or
 * `discard OFF LEN`; the first request is always a write or write-zeroes.
 * QEMU runs them as qemu-io aio_write/aio_read requests submitted together and
 * drained by aio_flush (qemu-io 7.2 has no aio_discard and no compressed
 * aio_write, and aio_write has no -s source file, hence pattern data; so the
 * qemu target declines discards in groups: Target.aioRequests); our engine is
 * synchronous and runs them in a serial order drawn from the group itself.
 *
 * What must hold: each sector covered by one request holds its result; a
 * sector covered by several holds the result of one of them (some serial
 * order); a read returns, per sector, the value before the group or one a
 * request of the group leaves there; every other sector is unchanged;
 * metadata stays consistent (the end qemu-img check). Groups are biased
 * toward what races in real drivers (QEMU's handle_dependencies and the 4.1
 * partial-cluster corruption): two allocations in one L2 table, a partial
 * write racing a COW, write-zeroes or discard of the same cluster,
 * allocations in two L2 tables sharing a refcount block, a read of a cluster
 * being allocated.
 */
import { applyGroup, expectGroup, groupCandidates, readCandidates, settleSector, type GroupRequest } from '../../model/group.js';
import type { DiskModel } from '../../model/disk.js';
import { SECTOR } from '../../model/layer.js';
import { patternStamp, sectorMatches } from '../data.js';
import { l2Span, MAX_WRITE_BYTES } from './seed.js';
import { num, shq } from './text.js';
import { OpParseError, type AioOp, type AioRequest, type AioRequestKind, type Op, type OpOutcome, type OpSpec, type OpSeed } from './types.js';

const AIO_SHARE = 4; // one guest write seed in AIO_SHARE becomes a group, where the target runs groups
const AIO_PICK = 1; // pick % AIO_SHARE that chooses a group (fault ops take pick % 4 == 3: never both)

/** The nearest seed `pick` (0..1000) that makes a guest write an aio group (for generation biased toward groups). */
export function aioPick(pick: number): number {
  const p = pick - (pick % AIO_SHARE) + AIO_PICK;
  return p > 1000 ? p - AIO_SHARE : p;
}

const hex = (b: number) => `0x${b.toString(16).padStart(2, '0')}`;

function formatReq(r: AioRequest): string {
  switch (r.kind) {
    case 'write':
      return `write -P ${hex(r.pattern)} ${r.off} ${r.len}`;
    case 'write-zeroes':
      return `write -z${r.unmap ? ' -u' : ''} ${r.off} ${r.len}`;
    default:
      return `${r.kind} ${r.off} ${r.len}`;
  }
}

const REQ_FORMS = `'write -P 0xNN OFF LEN', 'write -z [-u] OFF LEN', 'read OFF LEN' or 'discard OFF LEN'`;

function parseReq(text: string, line: string): AioRequest {
  const w = text.trim().split(/\s+/);
  if (w[0] === 'read' || w[0] === 'discard') {
    if (w.length !== 3) throw new OpParseError(`expected '${w[0]} OFF LEN' in '${line}'`);
    return { kind: w[0], off: num(w[1], line), len: num(w[2], line) };
  }
  if (w[0] !== 'write') throw new OpParseError(`expected ${REQ_FORMS} in '${line}'`);
  if (w[1] === '-P') {
    const m = /^0x([0-9a-f]{2})$/i.exec(w[2] ?? '');
    const pattern = m ? parseInt(m[1]!, 16) : 0;
    if (!m || pattern === 0) throw new OpParseError(`expected a pattern byte 0x01..0xff in '${line}'`);
    if (w.length !== 5) throw new OpParseError(`trailing words in '${line}'`);
    return { kind: 'write', pattern, off: num(w[3], line), len: num(w[4], line) };
  }
  if (w[1] === '-z') {
    const unmap = w[2] === '-u';
    const i = unmap ? 3 : 2;
    if (w.length !== i + 2) throw new OpParseError(`trailing words in '${line}'`);
    return { kind: 'write-zeroes', unmap, off: num(w[i], line), len: num(w[i + 1], line) };
  }
  throw new OpParseError(`expected ${REQ_FORMS} in '${line}'`);
}

/**
 * The group as the model sees it. A discard is write-zeroes of the whole
 * clusters it covers (the last, partial cluster counts when the range reaches
 * the end), and nothing on a v2 image with a backing file, as DiskModel.discard.
 */
function asGroup(op: AioOp, m: DiskModel): GroupRequest[] {
  const out: GroupRequest[] = [];
  for (const r of op.reqs) {
    if (r.kind === 'write') out.push({ off: r.off, len: r.len, zero: false, stamp: patternStamp(r.pattern) });
    else if (r.kind === 'write-zeroes') out.push({ off: r.off, len: r.len, zero: true, stamp: 0 });
    else if (r.kind === 'read') out.push({ off: r.off, len: r.len, zero: false, stamp: 0, read: true });
    else out.push(...discardedClusters(r.off, r.len, m));
  }
  return out;
}

function discardedClusters(off: number, len: number, m: DiskModel): GroupRequest[] {
  if (m.meta.compat === '0.10' && m.backing) return [];
  const cs = m.meta.clusterSize;
  const end = Math.min(off + len, m.size);
  const first = Math.ceil(off / cs) * cs;
  const last = end === m.size ? end : Math.floor(end / cs) * cs;
  return last > first ? [{ off: first, len: last - first, zero: true, stamp: 0 }] : [];
}

/** The serial order our engine runs a group in: a permutation drawn from the group's own text. */
export function engineOrder(op: AioOp): number[] {
  let h = 2166136261;
  for (const c of op.reqs.map(formatReq).join(';')) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  const order = op.reqs.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    h = Math.imul(h ^ (h >>> 13), 0x5bd1e995) >>> 0;
    const j = h % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/**
 * qemu-io's commands for the group: submitted together, drained by aio_flush,
 * then flushed. `dump`: reads print what they read (aio_read -v), for the
 * target to check; repro.sh reads quietly.
 */
export function aioCommands(op: AioOp, dump = false): string[] {
  const reqs = op.reqs.map((r) => {
    switch (r.kind) {
      case 'write':
        return `aio_write -q -P ${hex(r.pattern)} ${r.off} ${r.len}`;
      case 'write-zeroes':
        return `aio_write -q -z ${r.unmap ? '-u ' : ''}${r.off} ${r.len}`;
      case 'read':
        return dump ? `aio_read -v ${r.off} ${r.len}` : `aio_read -q ${r.off} ${r.len}`;
      default:
        // qemu-io 7.2 has no aio_discard: a synchronous discard while the others are in flight is
        // one order they may run in (repro.sh of a ts finding; the qemu target declines discards in groups).
        return `discard -q ${r.off} ${r.len}`;
    }
  });
  return [...reqs, 'aio_flush', 'flush'];
}

/**
 * What the reads of a group returned, in the group's order, from qemu-io's
 * output: each aio_read -v prints its hex dump, then `read LEN/LEN bytes at
 * offset OFF`, as it completes (in any order). Dumps of two reads of one
 * range are interchangeable: both are judged against the same candidates.
 */
export function parseAioReads(op: AioOp, stdout: string): Uint8Array[] | string {
  const done: { off: number; len: number; bytes: Uint8Array }[] = [];
  let bytes: number[] = [];
  for (const line of stdout.split('\n')) {
    const d = /^[0-9a-f]{8}:  ((?:[0-9a-f]{2} ){1,16})/.exec(line);
    if (d) {
      for (const h of d[1]!.trim().split(' ')) bytes.push(parseInt(h, 16));
      continue;
    }
    const r = /^read (\d+)\/(\d+) bytes at offset (\d+)$/.exec(line.trim());
    if (r) {
      done.push({ off: Number(r[3]), len: Number(r[1]), bytes: Uint8Array.from(bytes) });
      bytes = [];
    }
  }
  const out: Uint8Array[] = [];
  for (const q of op.reqs) {
    if (q.kind !== 'read') continue;
    const i = done.findIndex((x) => x.off === q.off && x.len === q.len && x.bytes.length === q.len);
    if (i < 0) return `qemu-io printed no complete dump of 'read ${q.off} ${q.len}'`;
    out.push(done.splice(i, 1)[0]!.bytes);
  }
  return out;
}

/**
 * Every request that reached the driver but a read dirties the granules of
 * its whole range in enabled bitmaps, as the same request alone does
 * (bdrv_co_write_req_finish; ./bitmap.ts bitmapEffects): a discard its whole
 * range, not only the clusters it frees.
 */
function dirtyBitmaps(m: DiskModel, op: AioOp): void {
  for (const r of op.reqs) if (r.kind !== 'read') m.bitmaps.markDirty(r.off, r.len);
}

/** Checks a group's reads, sector by sector, against what serial orders allow; returns what is wrong. */
function checkReads(op: AioOp, cands: (number[] | null)[][], outcome: OpOutcome): string | undefined {
  const reads = op.reqs.filter((r) => r.kind === 'read');
  if (reads.length === 0) return undefined;
  const got = outcome.ok ? outcome.reads : undefined;
  if (!got || got.length !== reads.length) return `after '${aio.format(op)}' the target returned ${got?.length ?? 0} reads for the group's ${reads.length}`;
  const scratch = new Uint8Array(SECTOR);
  for (let k = 0; k < reads.length; k++) {
    const r = reads[k]!;
    if (got[k]!.length !== r.len) return `'read ${r.off} ${r.len}' in '${aio.format(op)}' returned ${got[k]!.length} bytes`;
    for (let i = 0; i < r.len / SECTOR; i++) {
      const c = cands[k]![i]!;
      if (c !== null && !c.some((st) => sectorMatches(got[k]!, i * SECTOR, st, r.off / SECTOR + i, scratch))) {
        return `'read ${r.off} ${r.len}' in '${aio.format(op)}' returned at sector ${r.off / SECTOR + i} none of the values a serial order of the group gives`;
      }
    }
  }
  return undefined;
}

/**
 * The requests a seed's guest write (or write-zeroes) grows into: it, plus one
 * to three neighbours chosen to race with it. Pattern bytes differ within a
 * group, so a lost or misplaced request shows.
 */
function growGroup(
  seed: OpSeed,
  base: Extract<Op, { kind: 'write' | 'write-zeroes' }>,
  size: number,
  cs: number,
  extendedL2: boolean,
  kinds?: ReadonlySet<AioRequestKind>,
): AioRequest[] | null {
  let x = (Math.imul(seed.frac + 1, 0x9e3779b1) ^ Math.imul(seed.pick + 7, 0x85ebca6b)) >>> 0;
  const next = (n: number) => {
    x = Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) >>> 0;
    return x % n;
  };
  const pattern = (j: number) => 1 + ((seed.frac + 37 * j) % 255);
  const first: AioRequest =
    base.kind === 'write' ? { kind: 'write', pattern: pattern(0), off: base.off, len: base.len } : { kind: 'write-zeroes', unmap: base.unmap, off: base.off, len: base.len };
  const reqs: AioRequest[] = [first];
  const cstart = Math.floor(base.off / cs) * cs;
  const extra = 1 + next(3);
  for (let j = 1; j <= extra; j++) {
    let off: number;
    let len: number;
    switch (next(4)) {
      case 0: // a partial write of the same cluster: races its allocation or COW
        off = cstart + next(cs / SECTOR) * SECTOR;
        len = SECTOR * (1 + next(4));
        break;
      case 1: // a neighbouring cluster: a second allocation in the same L2 table
        off = cstart + cs * (1 + next(2)) + (next(2) ? SECTOR : 0);
        len = next(2) ? cs : SECTOR * (1 + next(8));
        break;
      case 2: // the same range: overlapping writes
        off = base.off;
        len = base.len;
        break;
      default: // one L2 table further: two L2 allocations sharing a refcount block
        off = cstart + l2Span(cs, extendedL2);
        if (off >= size) off = cstart + 3 * cs;
        len = SECTOR * (1 + next(8));
    }
    len = Math.min(len, MAX_WRITE_BYTES, size - off);
    if (off >= size || len < SECTOR) continue;
    len -= len % SECTOR;
    reqs.push(next(3) === 0 ? { kind: 'write-zeroes', unmap: next(2) === 1, off, len } : { kind: 'write', pattern: pattern(j), off, len });
  }
  if (kinds) asReadsAndDiscards(seed, reqs, size, cs, kinds);
  return reqs.length >= 2 ? reqs : null;
}

/**
 * The group without the write-zeroes and discard requests that share a
 * cluster with one of its writes (the known QEMU race), or null when fewer
 * than two requests are left.
 */
function zeroingApartFromWrites(reqs: AioRequest[], cs: number): AioRequest[] | null {
  const clusters = (r: AioRequest): [number, number] => [Math.floor(r.off / cs), Math.floor((r.off + r.len - 1) / cs)];
  const writes = reqs.filter((r) => r.kind === 'write').map(clusters);
  const kept = reqs.filter((r) => {
    if (r.kind !== 'write-zeroes' && r.kind !== 'discard') return true;
    const [a, b] = clusters(r);
    return !writes.some(([c, d]) => a <= d && c <= b);
  });
  return kept.length >= 2 ? kept : null;
}

/** Longest read in a group: qemu-io prints what it read as a hex dump. */
const MAX_GROUP_READ = 16 * SECTOR;

/**
 * Turns about a third of a group's neighbours into reads of their range (a
 * read racing an allocation, a COW or a write-zeroes) or discards of their
 * whole cluster (a discard racing a write into it), where the target runs
 * them. The choice comes from a stream of its own, so the groups of targets
 * without reads and discards are what they were.
 */
function asReadsAndDiscards(seed: OpSeed, reqs: AioRequest[], size: number, cs: number, kinds: ReadonlySet<AioRequestKind>): void {
  const more = (['read', 'discard'] as const).filter((k) => kinds.has(k));
  if (more.length === 0) return;
  let y = (Math.imul(seed.frac + 3, 0x27d4eb2f) ^ Math.imul(seed.pick + 11, 0x165667b1)) >>> 0;
  const next = (n: number) => {
    y = Math.imul(y ^ (y >>> 13), 0x5bd1e995) >>> 0;
    return y % n;
  };
  for (let j = 1; j < reqs.length; j++) {
    if (next(3) !== 0) continue;
    const r = reqs[j]!;
    if (more[next(more.length)] === 'read') reqs[j] = { kind: 'read', off: r.off, len: Math.min(r.len, MAX_GROUP_READ) };
    else {
      const off = Math.floor(r.off / cs) * cs;
      reqs[j] = { kind: 'discard', off, len: Math.min(cs, size - off) };
    }
  }
}

export const aio: OpSpec<AioOp> = {
  kind: 'aio',
  verb: 'aio',
  format: (op) => `aio ${op.reqs.map(formatReq).join(' ; ')}`,
  parse: (_w, line) => {
    const reqs = line.trim().slice('aio'.length).split(';').map((t) => parseReq(t, line));
    if (reqs.length < 2 || reqs.length > 4) throw new OpParseError(`an aio group has 2 to 4 requests, not ${reqs.length}, in '${line}'`);
    return { kind: 'aio', reqs };
  },
  expect: (m, op) => expectGroup(m, asGroup(op, m)),
  apply: (m, op) => {
    applyGroup(m, asGroup(op, m));
    dirtyBitmaps(m, op);
  },
  settle: async (m, op, _stamp, read, outcome) => {
    const reqs = asGroup(op, m);
    const badRead = checkReads(op, readCandidates(m, reqs), outcome);
    if (badRead) return badRead;
    applyGroup(m, reqs);
    dirtyBitmaps(m, op);
    const cands = groupCandidates(reqs);
    const scratch = new Uint8Array(SECTOR);
    // Read each run of ambiguous sectors once.
    const sectors = [...cands.keys()].filter((s) => s < m.size / SECTOR).sort((a, b) => a - b);
    for (let i = 0; i < sectors.length; ) {
      let j = i;
      while (j + 1 < sectors.length && sectors[j + 1] === sectors[j]! + 1) j++;
      const first = sectors[i]!;
      const bytes = await read(first * SECTOR, (j - i + 1) * SECTOR);
      for (let s = first; s <= sectors[j]!; s++) {
        const at = (s - first) * SECTOR;
        const hit = cands.get(s)!.find((st) => sectorMatches(bytes, at, st, s, scratch));
        if (hit === undefined) return `after '${aio.format(op)}' sector ${s} holds none of the values a serial order of the group leaves there`;
        settleSector(m, s, hit);
      }
      i = j + 1;
    }
    return undefined;
  },
  touches: (op) => op.reqs.map((r) => [r.off, r.len] as [number, number]),
  engine: (s, op) => {
    const reads: Uint8Array[] = new Array(op.reqs.length);
    for (const i of engineOrder(op)) {
      const r = op.reqs[i]!;
      if (r.kind === 'write') s.image.write(r.off, new Uint8Array(r.len).fill(r.pattern));
      else if (r.kind === 'write-zeroes') s.image.writeZeroes(r.off, r.len, { unmap: r.unmap });
      else if (r.kind === 'discard') s.image.discard(r.off, r.len);
      else reads[i] = s.image.read(r.off, r.len);
    }
    s.image.flush();
    const got = reads.filter((b) => b !== undefined);
    return got.length ? got : undefined;
  },
  probe: (i) => {
    i.write(0, new Uint8Array(512).fill(1));
    i.writeZeroes(512, 512);
    i.flush();
  },
  qemu: async (op, q) => {
    if (!q.ioCommands) return { ok: false, error: 'this qemu runner cannot keep requests in flight across commands' };
    const r = await q.ioCommands(aioCommands(op, true));
    if (!r.ok || !op.reqs.some((x) => x.kind === 'read')) return r.ok ? { ok: true } : r;
    const reads = parseAioReads(op, r.stdout ?? '');
    if (typeof reads === 'string') throw new Error(reads);
    return { ok: true, reads };
  },
  repro: (op) => ({ shell: `qemu-io ${aioCommands(op).map((c) => `-c ${shq(c)}`).join(' ')} image.qcow2` }),
  wrap: (seed, op, model, ctx) => {
    if ((op.kind !== 'write' && op.kind !== 'write-zeroes') || seed.pick % AIO_SHARE !== AIO_PICK) return null;
    let reqs = growGroup(seed, op, model.size, model.meta.clusterSize, model.meta.extendedL2, ctx.aioRequests);
    if (reqs && ctx.knownBugs?.has('zero-races-allocating-write')) reqs = zeroingApartFromWrites(reqs, model.meta.clusterSize);
    return reqs ? { kind: 'aio', reqs } : null;
  },
};
