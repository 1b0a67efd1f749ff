import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DiskModel } from '../model/disk.js';
import { opSeedsArb, resolveOp, configArb } from './arbitraries.js';
import { configProblems, toModelConfig } from './config.js';
import { describeSector, makeData, sectorMatches } from './data.js';
import { ALL_OP_KINDS, formatOp, OpParseError, parseOp, type Op } from './ops.js';

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
    ]);
  });

  it('round-trips every op kind', () => {
    for (const op of samples) expect(parseOp(formatOp(op))).toEqual(op);
    expect(new Set(samples.map((o) => o.kind))).toEqual(new Set(ALL_OP_KINDS));
  });

  it('round-trips every generated op', () => {
    fc.assert(
      fc.property(configArb, opSeedsArb(20), (cfg, seeds) => {
        const model = new DiskModel(toModelConfig(cfg));
        for (const s of seeds) {
          const op = resolveOp(s, model, { capabilities: new Set(ALL_OP_KINDS) });
          if (op) expect(parseOp(formatOp(op))).toEqual(op);
        }
      }),
      { seed: 42, numRuns: 200 },
    );
  });

  it('rejects malformed lines', () => {
    for (const bad of ['write', 'write 1', 'write 1 2 3', 'write -x 1 2', 'amend foo=1', 'amend compat=2', 'snapshot -x a', 'resize', 'nope']) {
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

  it('range ops stay inside the disk and sector aligned', () => {
    fc.assert(
      fc.property(configArb, opSeedsArb(20), (cfg, seeds) => {
        const model = new DiskModel(toModelConfig(cfg));
        for (const s of seeds) {
          const op = resolveOp(s, model, { capabilities: new Set(ALL_OP_KINDS) });
          if (op && 'off' in op) {
            expect(op.off % 512).toBe(0);
            expect(op.len % 512).toBe(0);
            expect(op.len).toBeGreaterThan(0);
            expect(op.off + op.len).toBeLessThanOrEqual(model.size);
          }
        }
      }),
      { seed: 9, numRuns: 300 },
    );
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
