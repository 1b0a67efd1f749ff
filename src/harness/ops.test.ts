import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DiskModel } from '../model/disk.js';
import { opSeedsArb, resolveOp, configArb } from './arbitraries.js';
import { configProblems, toModelConfig } from './config.js';
import { describeSector, makeData, sectorMatches } from './data.js';
import { ALL_OP_KINDS, applyOp, expectOp, formatOp, OpParseError, parseOp, specOf, touchedBy, type Op, type OpKind } from './ops.js';

const samples: Op[] = [
  { kind: 'write', off: 0, len: 512 },
  { kind: 'write-compressed', off: 65536, len: 65536 },
  { kind: 'write-zeroes', off: 512, len: 1024, unmap: false },
  { kind: 'write-zeroes', off: 512, len: 1024, unmap: true },
  { kind: 'discard', off: 4096, len: 8192 },
  { kind: 'flush' },
  { kind: 'reopen' },
  { kind: 'crash' },
  { kind: 'snapshot', action: 'create', name: 's0' },
  { kind: 'snapshot', action: 'apply', name: '1' },
  { kind: 'snapshot', action: 'delete', name: 's2' },
  { kind: 'amend', key: 'refcount_bits', value: 64 },
  { kind: 'amend', key: 'compat', value: '0.10' },
  { kind: 'amend', key: 'lazy_refcounts', value: true },
  { kind: 'resize', size: 1048576, shrink: false },
  { kind: 'resize', size: 512, shrink: true },
  { kind: 'bitmap', action: 'add', name: 'b0', granularity: 4096, disabled: true },
  { kind: 'bitmap', action: 'add', name: 'b1' },
  { kind: 'bitmap', action: 'merge', name: 'b1', source: 'b0' },
  { kind: 'bitmap', action: 'disable', name: 'b1' },
  { kind: 'fault', where: 'write@2', errno: 'eio', op: { kind: 'write', off: 0, len: 4096 } },
  { kind: 'fault', where: 'l2_update', errno: 'enospc', op: { kind: 'write-zeroes', off: 512, len: 512, unmap: true } },
  { kind: 'fault', where: 'flush@1', errno: 'eio', op: { kind: 'flush' } },
  {
    kind: 'aio',
    reqs: [
      { kind: 'write', pattern: 0x41, off: 0, len: 4096 },
      { kind: 'write-zeroes', unmap: true, off: 512, len: 512 },
      { kind: 'write-zeroes', unmap: false, off: 65536, len: 512 },
    ],
  },
];

describe('op text form', () => {
  it('reads like qemu-io/qemu-img', () => {
    expect(samples.map(formatOp)).toEqual([
      'write 0 512',
      'write -c 65536 65536',
      'write -z 512 1024',
      'write -z -u 512 1024',
      'discard 4096 8192',
      'flush',
      'reopen',
      'crash',
      'snapshot -c s0',
      'snapshot -a 1',
      'snapshot -d s2',
      'amend refcount_bits=64',
      'amend compat=0.10',
      'amend lazy_refcounts=on',
      'resize 1048576',
      'resize --shrink 512',
      'bitmap --add -g 4096 --disable b0',
      'bitmap --add b1',
      'bitmap --merge b0 b1',
      'bitmap --disable b1',
      'fault write@2 eio write 0 4096',
      'fault l2_update enospc write -z -u 512 512',
      'fault flush@1 eio flush',
      'aio write -P 0x41 0 4096 ; write -z -u 512 512 ; write -z 65536 512',
    ]);
  });

  it('round-trips every op kind of the table, and the table covers every Op kind', () => {
    for (const op of samples) expect(parseOp(formatOp(op))).toEqual(op);
    // The samples name every member of the Op union (the compiler checks this
    // record is total), and each member's kind has a spec of that kind.
    const everyKind: Record<OpKind, true> = {
      write: true,
      'write-compressed': true,
      'write-zeroes': true,
      discard: true,
      flush: true,
      reopen: true,
      crash: true,
      snapshot: true,
      amend: true,
      resize: true,
      bitmap: true,
      fault: true,
      aio: true,
    };
    expect(new Set(samples.map((o) => o.kind))).toEqual(new Set(Object.keys(everyKind)));
    expect(new Set(ALL_OP_KINDS)).toEqual(new Set(Object.keys(everyKind)));
    for (const op of samples) expect(specOf(op).kind).toBe(op.kind);
  });

  it('round-trips every generated op', () => {
    fc.assert(
      fc.property(configArb, opSeedsArb(20), (cfg, seeds) => {
        const model = new DiskModel(toModelConfig(cfg));
        for (const s of seeds) {
          const op = resolveOp(s, model, { capabilities: new Set(ALL_OP_KINDS), faultPoints: ['read', 'flush_to_disk'] });
          if (op) expect(parseOp(formatOp(op))).toEqual(op);
        }
      }),
      { seed: 42, numRuns: 200 },
    );
  });

  it('rejects malformed lines', () => {
    for (const bad of [
      'write',
      'write 1',
      'write 1 2 3',
      'write -x 1 2',
      'amend foo=1',
      'amend compat=2',
      'snapshot -x a',
      'resize',
      'nope',
      'fault write@0 eio write 0 512',
      'fault nowhere eio write 0 512',
      'fault write@1 ebusy write 0 512',
      'fault write@1 eio',
      'fault write@1 eio resize 512',
      'fault write@1 eio fault write@1 eio write 0 512',
    ]) {
      expect(() => parseOp(bad), bad).toThrow(OpParseError);
    }
  });
});

describe('generated configs and ops', () => {
  it('configs are valid for qemu-img create and small', () => {
    fc.assert(
      fc.property(configArb, (cfg) => {
        expect(configProblems(cfg)).toEqual([]);
        expect(cfg.size).toBeLessThanOrEqual(64 * 1024 * 1024);
      }),
      { seed: 7, numRuns: 500 },
    );
  });

  it('range ops stay inside the disk as it is when they run, sector aligned', () => {
    // Ops are resolved and then applied (resizes and snapshot applies change
    // the size), so each range op is checked against the disk at its moment.
    let ranges = 0;
    let resized = 0;
    let afterResize = 0;
    fc.assert(
      fc.property(configArb, opSeedsArb(30), (cfg, seeds) => {
        const model = new DiskModel(toModelConfig(cfg));
        let sizeChanged = false;
        seeds.forEach((s, i) => {
          const op = resolveOp(s, model, { capabilities: new Set(ALL_OP_KINDS), faultPoints: ['write', 'l2_update'] });
          if (!op) return;
          const touched = touchedBy(op);
          if (touched !== 'whole') {
            for (const [off, len] of touched) {
              ranges++;
              if (sizeChanged) afterResize++;
              expect(off % 512).toBe(0);
              expect(len % 512).toBe(0);
              expect(len).toBeGreaterThan(0);
              expect(off + len).toBeLessThanOrEqual(model.size);
            }
          }
          const sizeBefore = model.size;
          if (expectOp(model, op).verdict !== 'refuse') applyOp(model, op, i + 1);
          if (model.size !== sizeBefore) {
            resized++;
            sizeChanged = true;
          }
        });
      }),
      { seed: 9, numRuns: 300 },
    );
    // The property saw many range ops, many of them after the size changed.
    expect({ ranges: ranges > 800, resized: resized > 80, afterResize: afterResize > 100 }).toEqual({ ranges: true, resized: true, afterResize: true });
  });
});

describe('sector-unique data', () => {
  it('stamps op and sector into every sector', () => {
    const d = makeData(7, 1024, 2048);
    const scratch = new Uint8Array(512);
    expect(sectorMatches(d, 0, 7, 2, scratch)).toBe(true);
    expect(sectorMatches(d, 512, 7, 3, scratch)).toBe(true);
    expect(sectorMatches(d, 512, 7, 2, scratch)).toBe(false);
    expect(sectorMatches(d, 512, 8, 3, scratch)).toBe(false);
    expect(describeSector(d, 1536)).toBe('op #7 data of sector 5');
    expect(describeSector(new Uint8Array(512), 0)).toBe('zeros');
  });
});
