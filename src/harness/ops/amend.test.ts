import { describe, expect, it } from 'vitest';
import { DiskModel } from '../../model/disk.js';
import { toModelConfig } from '../config.js';
import { makeTarget } from '../targets/index.js';
import { plainConfig } from '../../../tests/support/trace.js';
import { KIND_TOTAL, resolveOp, type OpKind, type OpSeed } from '../ops.js';

describe('amend generation', () => {
  it('with the known QEMU zstd downgrade bug, no compat=0.10 is drawn for a zstd image with snapshots', () => {
    const downgrades = (snapshots: boolean, knownBugs?: ReadonlySet<string>) => {
      const model = new DiskModel(toModelConfig(plainConfig({ compressionType: 'zstd' })));
      if (snapshots) model.snapshotCreate('s0');
      let n = 0;
      for (let kind = 0; kind < KIND_TOTAL; kind++) {
        for (let pick = 0; pick < 60; pick++) {
          const seed: OpSeed = { kind, anchor: 'cluster', frac: 0, delta: 0, unit: 'sector', count: 1, lenDelta: 0, flag: true, pick };
          const op = resolveOp(seed, model, { capabilities: new Set<OpKind>(['amend']), knownBugs });
          if (op?.kind === 'amend' && op.key === 'compat' && op.value === '0.10') n++;
        }
      }
      return n;
    };
    const qemu = makeTarget('qemu').knownBugs;
    expect(downgrades(true)).toBeGreaterThan(0);
    expect(downgrades(true, qemu)).toBe(0);
    expect(downgrades(false, qemu)).toBe(downgrades(false));
    expect(downgrades(true, makeTarget('qemu', { strict: true }).knownBugs)).toBe(downgrades(true));
  });
});
