/**
 * The aio op's model side: a group's outcome is any serial order, and
 * nothing else. A target that loses a request, or tears overlapping writes
 * into something no order gives, is caught; every serial order passes.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeTarget } from '../targets/index.js';
import { reproScript } from '../repro.js';
import { runTrace } from '../execute.js';
import { TsTarget } from '../targets/ts.js';
import type { OpOutcome, StampedOp } from '../targets/types.js';
import type { TraceConfig } from '../config.js';
import { engineOrder, parseOp, type AioOp, type Op } from '../ops.js';

const config: TraceConfig = {
  size: 1024 * 1024,
  clusterSize: 65536,
  refcountBits: 16,
  compat: '1.1',
  lazyRefcounts: false,
  extendedL2: false,
  compressionType: 'zlib',
};

const group = parseOp('aio write -P 0x41 0 4096 ; write -P 0x42 2048 4096 ; write -z 65536 512 ; write -P 0x43 65536 1024') as AioOp;

/** Our engine, running groups in a given order and optionally dropping a request. */
class OrderedTarget extends TsTarget {
  constructor(
    private readonly order: number[],
    private readonly drop?: number,
  ) {
    super();
  }
  override async run(ops: StampedOp[]): Promise<OpOutcome[]> {
    const out: OpOutcome[] = [];
    for (const o of ops) {
      if (o.op.kind !== 'aio') {
        out.push(...(await super.run([o])));
        continue;
      }
      const g = o.op;
      const serial: StampedOp[] = this.order
        .filter((i) => i !== this.drop)
        .map((i) => {
          const r = g.reqs[i]!;
          const op: Op = r.kind === 'write' ? { kind: 'write', off: r.off, len: r.len } : { kind: 'write-zeroes', off: r.off, len: r.len, unmap: r.unmap };
          return { op, index: o.index, data: r.kind === 'write' ? new Uint8Array(r.len).fill(r.pattern) : undefined };
        });
      const rs = await super.run(serial);
      out.push(rs.every((x) => x.ok) ? { ok: true } : rs.find((x) => !x.ok)!);
    }
    return out;
  }
}

const permutations = (n: number): number[][] =>
  n === 0 ? [[]] : permutations(n - 1).flatMap((p) => Array.from({ length: n }, (_, i) => [...p.slice(0, i), n - 1, ...p.slice(i)]));

describe('aio groups', () => {
  it('every serial order of a group passes', async () => {
    for (const order of permutations(group.reqs.length)) {
      const r = await runTrace(new OrderedTarget(order), config, { ops: [{ kind: 'write', off: 0, len: 131072 }, group] });
      expect(r.failure, `order ${order.join(',')}`).toBeUndefined();
    }
  }, 60_000);

  it('a lost request is caught, overlapping or not, unless some order hides it', async () => {
    // Request 2 (zeroes at 65536+512) lies under request 3: "2 then 3" leaves what losing 2 leaves.
    for (const drop of [0, 1, 3]) {
      const r = await runTrace(new OrderedTarget([0, 1, 2, 3], drop), config, { ops: [{ kind: 'write', off: 0, len: 131072 }, group] });
      expect(r.failure?.oracle, `request ${drop} dropped`).toBe('read');
    }
  }, 60_000);

  it('our engine runs a group in an order drawn from the group itself', () => {
    const order = engineOrder(group);
    expect([...order].sort()).toEqual([0, 1, 2, 3]);
    expect(engineOrder(group)).toEqual(order);
  });

  it('on QEMU a group passes, and repro.sh replays it with qemu-io alone to the expected view', async () => {
    // No two requests overlap (three allocations in one L2 table racing), so every order gives one view.
    const apart = parseOp('aio write -P 0x41 0 4096 ; write -P 0x42 65536 1024 ; write -z 131072 512 ; write -P 0x43 196608 512') as AioOp;
    const ops: Op[] = [{ kind: 'write', off: 131072, len: 65536 }, apart, { kind: 'write', off: 4096, len: 512 }];
    const r = await runTrace(makeTarget('qemu'), config, { ops });
    expect(r.failure).toBeUndefined();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-aio-repro-'));
    try {
      const script = path.join(dir, 'repro.sh');
      const text = reproScript({ target: 'qemu', config, ops: r.ops, model: r.model!, refused: r.refused, oracle: 'read', message: 'none' });
      expect(text).toContain(`-c 'aio_write -q -P 0x41 0 4096'`);
      fs.writeFileSync(script, text);
      const run = spawnSync('sh', [script], { encoding: 'utf8' });
      expect(run.stdout.trim().split('\n').pop()).toBe('no problem found');
      expect(run.status).toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
