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
import { DiskModel } from '../../model/disk.js';
import { toModelConfig } from '../config.js';
import { aioPick, engineOrder, parseAioReads, parseOp, resolveOp, type AioOp, type AioRequestKind, type Op, type OpKind, type OpSeed } from '../ops.js';
import { plainConfig } from '../../../tests/support/trace.js';

const config = plainConfig();

const group = parseOp('aio write -P 0x41 0 4096 ; write -P 0x42 2048 4096 ; write -z 65536 512 ; write -P 0x43 65536 1024') as AioOp;

/** Our engine, running groups in a given order (reads among them) and optionally dropping a request or spoiling reads. */
class OrderedTarget extends TsTarget {
  constructor(
    private readonly order: number[],
    private readonly drop?: number,
    private readonly spoilReads = false,
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
      const reads = new Map<number, Uint8Array>();
      for (const i of this.order) {
        if (i === this.drop) continue;
        const r = g.reqs[i]!;
        if (r.kind === 'read') {
          const b = await super.read(r.off, r.len);
          if (this.spoilReads) b[b.length - 1]! ^= 0x5a;
          reads.set(i, b);
          continue;
        }
        const op: Op =
          r.kind === 'write'
            ? { kind: 'write', off: r.off, len: r.len }
            : r.kind === 'write-zeroes'
              ? { kind: 'write-zeroes', off: r.off, len: r.len, unmap: r.unmap }
              : { kind: 'discard', off: r.off, len: r.len };
        const [x] = await super.run([{ op, index: o.index, data: r.kind === 'write' ? new Uint8Array(r.len).fill(r.pattern) : undefined }]);
        if (!x!.ok) {
          out.push(x!);
          continue;
        }
      }
      const got = g.reqs.flatMap((r, i) => (reads.has(i) ? [reads.get(i)!] : []));
      out.push(got.length ? { ok: true, reads: got } : { ok: true });
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
  });

  it('a lost request is caught, overlapping or not, unless some order hides it', async () => {
    // Request 2 (zeroes at 65536+512) lies under request 3: "2 then 3" leaves what losing 2 leaves.
    for (const drop of [0, 1, 3]) {
      const r = await runTrace(new OrderedTarget([0, 1, 2, 3], drop), config, { ops: [{ kind: 'write', off: 0, len: 131072 }, group] });
      expect(r.failure?.oracle, `request ${drop} dropped`).toBe('read');
    }
  });

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
  });

  // Reads see the state before the group or after any of its requests, sector by sector; a discard zeroes whole clusters.
  const mixed = parseOp('aio write -P 0x41 0 4096 ; read 2048 4096 ; discard 65536 65536 ; write -P 0x43 66048 1024') as AioOp;
  const before: Op[] = [{ kind: 'write', off: 0, len: 196608 }];

  it('every serial order of a group with a read and a discard passes', async () => {
    for (const order of permutations(mixed.reqs.length)) {
      const r = await runTrace(new OrderedTarget(order), config, { ops: [...before, mixed] });
      expect(r.failure, `order ${order.join(',')}`).toBeUndefined();
    }
  });

  it('a read returning what no serial order gives, a lost discard, or missing reads are caught', async () => {
    const spoiled = await runTrace(new OrderedTarget([0, 1, 2, 3], undefined, true), config, { ops: [...before, mixed] });
    expect(spoiled.failure?.message).toMatch(/'read 2048 4096' in 'aio .*' returned at sector 11 none of the values a serial order of the group gives/);
    const lost = await runTrace(new OrderedTarget([0, 1, 2, 3], 2), config, { ops: [...before, mixed] });
    expect(lost.failure?.oracle).toBe('read');
    const noRead = await runTrace(new OrderedTarget([0, 1, 2, 3], 1), config, { ops: [...before, mixed] });
    expect(noRead.failure?.message).toContain("the target returned 0 reads for the group's 1");
  });

  it('our engine runs groups with reads and discards', async () => {
    const r = await runTrace(makeTarget('ts'), config, { ops: [...before, mixed, parseOp('aio discard 0 65536 ; read 0 1024 ; write -z 512 512')] });
    expect(r.failure).toBeUndefined();
  });

  it("qemu-io's aio_read dumps are read back per request, whatever order they completed in", () => {
    const g = parseOp('aio write -P 0x41 0 1024 ; read 0 1024 ; read 512 512') as AioOp;
    const dump = (off: number, len: number, b: number) =>
      Array.from({ length: len / 16 }, (_, i) => `${(off + 16 * i).toString(16).padStart(8, '0')}:  ${`${b.toString(16)} `.repeat(16)} ${'A'.repeat(16)}`).join('\n') +
      `\nread ${len}/${len} bytes at offset ${off}\n${len} bytes, 1 ops; 00.00 sec\n`;
    const reads = parseAioReads(g, dump(512, 512, 0x42) + dump(0, 1024, 0x41));
    expect(Array.isArray(reads)).toBe(true);
    expect((reads as Uint8Array[]).map((b) => [b.length, b[0]])).toEqual([
      [1024, 0x41],
      [512, 0x42],
    ]);
    expect(parseAioReads(g, dump(0, 1024, 0x41))).toBe("qemu-io printed no complete dump of 'read 512 512'");
  });

  it('on QEMU a group with reads passes: aio_read -v output is judged per sector', async () => {
    const g = parseOp('aio write -P 0x41 0 4096 ; read 0 4096 ; write -z 65536 512 ; read 65024 1024') as AioOp;
    const r = await runTrace(makeTarget('qemu'), config, { ops: [{ kind: 'write', off: 0, len: 131072 }, g] });
    expect(r.failure).toBeUndefined();
  });

  it('generation: groups hold reads and discards where the target runs them, and only there', () => {
    const model = new DiskModel(toModelConfig(config));
    const capabilities = new Set<OpKind>(['write', 'write-zeroes', 'aio']);
    const kinds = (aioRequests?: ReadonlySet<AioRequestKind>) => {
      const seen = new Set<string>();
      let groups = 0;
      for (let i = 0; i < 400; i++) {
        const seed: OpSeed = { kind: 0, anchor: 'cluster', frac: (i * 7919) % 1_000_000, delta: 0, unit: 'sector', count: 1 + (i % 4), lenDelta: 0, flag: false, pick: aioPick((i * 37) % 1000) };
        const op = resolveOp(seed, model, { capabilities, aioRequests });
        if (op?.kind !== 'aio') continue;
        groups++;
        for (const r of op.reqs) seen.add(r.kind);
        expect(['write', 'write-zeroes']).toContain(op.reqs[0]!.kind);
      }
      expect(groups).toBeGreaterThan(100);
      return [...seen].sort();
    };
    expect(kinds()).toEqual(['write', 'write-zeroes']);
    expect(kinds(makeTarget('qemu').aioRequests)).toEqual(['read', 'write', 'write-zeroes']);
    expect(kinds(makeTarget('ts').aioRequests)).toEqual(['discard', 'read', 'write', 'write-zeroes']);
  });

  it('a group dirties enabled bitmaps as its requests alone would (reads do not), on our engine and on QEMU', async () => {
    const runs: [string, string][] = [
      ['ts', 'aio write -P 0x41 0 4096 ; discard 196608 65536 ; read 262144 512 ; write -z 131072 512'],
      ['qemu', 'aio write -P 0x41 0 4096 ; read 262144 512 ; write -z 131072 512'],
    ];
    for (const [t, g] of runs) {
      const r = await runTrace(makeTarget(t), config, { ops: ['bitmap --add b0', 'write 196608 512', g].map(parseOp) });
      expect(r.failure, t).toBeUndefined();
      // 64 KiB granules: 0 (the group's write), 2 (its write-zeroes), 3 (the plain write, and on ts the discard); not 4 (the read).
      expect([...r.model!.bitmaps.find('b0')!.dirty].sort(), t).toEqual([0, 2, 3]);
    }
  });

  it("repro.sh of a ts trace whose group holds a discard and a read runs with qemu-io alone (the discard synchronous amid the group)", async () => {
    // Apart, so every order gives one view: the script's end check then passes.
    const g = parseOp('aio write -P 0x41 0 4096 ; discard 131072 65536 ; read 262144 512') as AioOp;
    const r = await runTrace(makeTarget('ts'), config, { ops: [{ kind: 'write', off: 131072, len: 65536 }, g] });
    expect(r.failure).toBeUndefined();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-aio-repro-'));
    try {
      const script = path.join(dir, 'repro.sh');
      const text = reproScript({ target: 'ts', config, ops: r.ops, model: r.model!, refused: r.refused, oracle: 'read', message: 'none' });
      expect(text).toContain(`-c 'discard -q 131072 65536'`);
      expect(text).toContain(`-c 'aio_read -q 262144 512'`);
      fs.writeFileSync(script, text);
      const run = spawnSync('sh', [script], { encoding: 'utf8' });
      expect(run.stdout.trim().split('\n').pop()).toBe('no problem found');
      expect(run.status).toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('aio groups on a target with the known zeroing race', () => {
  it('generation: with the known QEMU zeroing race, no group zeroes a cluster one of its writes touches', () => {
    const model = new DiskModel(toModelConfig(config));
    const capabilities = new Set<OpKind>(['write', 'write-zeroes', 'aio']);
    const cs = config.clusterSize;
    const mixed = (knownBugs?: ReadonlySet<string>) => {
      let n = 0;
      let groups = 0;
      for (let i = 0; i < 400; i++) {
        const seed: OpSeed = { kind: 0, anchor: 'cluster', frac: (i * 7919) % 1_000_000, delta: 0, unit: 'sector', count: 1 + (i % 4), lenDelta: 0, flag: false, pick: aioPick((i * 37) % 1000) };
        const op = resolveOp(seed, model, { capabilities, knownBugs });
        if (op?.kind !== 'aio') continue;
        groups++;
        const span = (r: { off: number; len: number }) => [Math.floor(r.off / cs), Math.floor((r.off + r.len - 1) / cs)];
        const writes = op.reqs.filter((r) => r.kind === 'write').map(span);
        const clash = op.reqs.some((r) => r.kind === 'write-zeroes' && writes.some(([a, b]) => span(r)[0]! <= b! && a! <= span(r)[1]!));
        if (clash) n++;
      }
      expect(groups).toBeGreaterThan(50);
      return n;
    };
    expect(mixed()).toBeGreaterThan(10);
    expect(mixed(makeTarget('qemu').knownBugs)).toBe(0);
    expect(mixed(makeTarget('qemu', { strict: true }).knownBugs)).toBeGreaterThan(10);
  });
});
