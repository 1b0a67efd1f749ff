/**
 * aio REQ ; REQ [; REQ [; REQ]]: two to four requests in flight at once, then
 * a flush (issue 12 item 3). A REQ is `write -P 0xNN OFF LEN` (the range
 * filled with byte NN) or `write -z [-u] OFF LEN`. QEMU runs them as qemu-io
 * aio_write requests submitted together and drained by aio_flush (qemu-io
 * 7.2 has no aio_discard and no compressed aio_write, and aio_write has no
 * -s source file, hence pattern data); our engine is synchronous and runs
 * them in a serial order drawn from the group itself.
 *
 * What must hold: each sector covered by one request holds its result; a
 * sector covered by several holds the result of one of them (some serial
 * order); every other sector is unchanged; metadata stays consistent (the end
 * qemu-img check). Groups are biased toward what races in real drivers
 * (QEMU's handle_dependencies and the 4.1 partial-cluster corruption): two
 * allocations in one L2 table, a partial write racing a COW or write-zeroes
 * of the same cluster, allocations in two L2 tables sharing a refcount block.
 */
import { applyGroup, expectGroup, groupCandidates, settleSector, type GroupRequest } from '../../model/group.js';
import { SECTOR } from '../../model/layer.js';
import { patternStamp, sectorMatches } from '../data.js';
import { l2Span, MAX_WRITE_BYTES } from './seed.js';
import { num, shq } from './text.js';
import { OpParseError, type AioOp, type AioRequest, type Op, type OpSpec, type OpSeed } from './types.js';

const AIO_SHARE = 4; // one guest write seed in AIO_SHARE becomes a group, where the target runs groups
const AIO_PICK = 1; // pick % AIO_SHARE that chooses a group (fault ops take pick % 4 == 3: never both)

/** The nearest seed `pick` (0..1000) that makes a guest write an aio group (for generation biased toward groups). */
export function aioPick(pick: number): number {
  const p = pick - (pick % AIO_SHARE) + AIO_PICK;
  return p > 1000 ? p - AIO_SHARE : p;
}

const hex = (b: number) => `0x${b.toString(16).padStart(2, '0')}`;

function formatReq(r: AioRequest): string {
  return r.kind === 'write' ? `write -P ${hex(r.pattern)} ${r.off} ${r.len}` : `write -z${r.unmap ? ' -u' : ''} ${r.off} ${r.len}`;
}

function parseReq(text: string, line: string): AioRequest {
  const w = text.trim().split(/\s+/);
  if (w[0] !== 'write') throw new OpParseError(`expected 'write -P 0xNN OFF LEN' or 'write -z [-u] OFF LEN' in '${line}'`);
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
  throw new OpParseError(`expected 'write -P 0xNN OFF LEN' or 'write -z [-u] OFF LEN' in '${line}'`);
}

const asGroup = (op: AioOp): GroupRequest[] =>
  op.reqs.map((r) => ({ off: r.off, len: r.len, zero: r.kind === 'write-zeroes', stamp: r.kind === 'write' ? patternStamp(r.pattern) : 0 }));

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

/** qemu-io's commands for the group: submitted together, drained by aio_flush, then flushed. */
export function aioCommands(op: AioOp): string[] {
  const reqs = op.reqs.map((r) => (r.kind === 'write' ? `aio_write -q -P ${hex(r.pattern)} ${r.off} ${r.len}` : `aio_write -q -z ${r.unmap ? '-u ' : ''}${r.off} ${r.len}`));
  return [...reqs, 'aio_flush', 'flush'];
}

/**
 * The requests a seed's guest write (or write-zeroes) grows into: it, plus one
 * to three neighbours chosen to race with it. Pattern bytes differ within a
 * group, so a lost or misplaced request shows.
 */
function growGroup(seed: OpSeed, base: Extract<Op, { kind: 'write' | 'write-zeroes' }>, size: number, cs: number, extendedL2: boolean): AioRequest[] | null {
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
  return reqs.length >= 2 ? reqs : null;
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
  expect: (m, op) => expectGroup(m, asGroup(op)),
  apply: (m, op) => applyGroup(m, asGroup(op)),
  settle: async (m, op, _stamp, read) => {
    const reqs = asGroup(op);
    applyGroup(m, reqs);
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
    for (const i of engineOrder(op)) {
      const r = op.reqs[i]!;
      if (r.kind === 'write') s.image.write(r.off, new Uint8Array(r.len).fill(r.pattern));
      else s.image.writeZeroes(r.off, r.len, { unmap: r.unmap });
    }
    s.image.flush();
  },
  probe: (i) => {
    i.write(0, new Uint8Array(512).fill(1));
    i.writeZeroes(512, 512);
    i.flush();
  },
  qemu: async (op, q) => {
    if (!q.ioCommands) return { ok: false, error: 'this qemu runner cannot keep requests in flight across commands' };
    return q.ioCommands(aioCommands(op));
  },
  repro: (op) => ({ shell: `qemu-io ${aioCommands(op).map((c) => `-c ${shq(c)}`).join(' ')} image.qcow2` }),
  wrap: (seed, op, model) => {
    if ((op.kind !== 'write' && op.kind !== 'write-zeroes') || seed.pick % AIO_SHARE !== AIO_PICK) return null;
    const reqs = growGroup(seed, op, model.size, model.meta.clusterSize, model.meta.extendedL2);
    return reqs ? { kind: 'aio', reqs } : null;
  },
};
