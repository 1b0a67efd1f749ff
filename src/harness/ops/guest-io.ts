/**
 * Guest I/O: write, write -c, write -z [-u], discard, flush. Each is one
 * qemu-io command, so the qemu target runs consecutive ones in one process.
 */
import { SECTOR } from '../../model/layer.js';
import { MAX_WRITE_BYTES, MAX_WRITE_CLUSTERS, resolveRange } from './seed.js';
import { exactly, num } from './text.js';
import type { OpOf, OpSpec } from './types.js';

const range = (op: { off: number; len: number }): [number, number][] => [[op.off, op.len]];
const dataRange = (op: { off: number; len: number }): [number, number] => [op.off, op.len];

export const write: OpSpec<OpOf<'write'>> = {
  kind: 'write',
  verb: 'write',
  format: (op) => `write ${op.off} ${op.len}`,
  parse: (w, line) => (w[1] === '-c' || w[1] === '-z' ? null : exactly(w, 3, line, { kind: 'write', off: num(w[1], line), len: num(w[2], line) })),
  expect: (m, op) => m.expectWrite(op.off, op.len),
  apply: (m, op, stamp) => m.write(op.off, op.len, stamp),
  touches: range,
  dataRange,
  engine: (s, op, data) => s.image.write(op.off, data!),
  probe: (i) => i.write(0, new Uint8Array(512).fill(1)),
  qemuIo: (op, file) => `write -s ${file} ${op.off} ${op.len}`,
  repro: (op, p) => ({ io: `write -q -P ${p} ${op.off} ${op.len}` }),
  variants: [
    {
      weight: 30,
      resolve: (seed, model) => {
        const { off, len } = resolveRange(seed, model, Math.min(MAX_WRITE_BYTES, MAX_WRITE_CLUSTERS * model.meta.clusterSize));
        return { kind: 'write', off, len };
      },
    },
  ],
  faultable: true,
};

export const writeCompressed: OpSpec<OpOf<'write-compressed'>> = {
  kind: 'write-compressed',
  verb: 'write',
  format: (op) => `write -c ${op.off} ${op.len}`,
  parse: (w, line) => (w[1] === '-c' ? exactly(w, 4, line, { kind: 'write-compressed', off: num(w[2], line), len: num(w[3], line) }) : null),
  expect: (m, op) => m.expectWriteCompressed(op.off, op.len),
  apply: (m, op, stamp) => m.writeCompressed(op.off, op.len, stamp),
  touches: range,
  dataRange,
  engine: (s, op, data) => s.image.writeCompressed(op.off, data!),
  probe: (i) => i.writeCompressed(i.clusterSize, new Uint8Array(i.clusterSize).fill(2)),
  qemuIo: (op, file) => `write -c -s ${file} ${op.off} ${op.len}`,
  repro: (op, p) => ({ io: `write -q -c -P ${p} ${op.off} ${op.len}` }),
  variants: [
    {
      weight: 6,
      resolve: (seed, model, ctx) => {
        if (model.encrypted && ctx.knownBugs?.has('unencrypted-compressed-write')) return null;
        const size = model.size;
        const cs = model.meta.clusterSize;
        const clusters = Math.ceil(size / cs);
        let off = Math.floor((seed.frac / 1_000_001) * clusters) * cs;
        if (seed.anchor === 'end') off = (clusters - 1) * cs;
        let len = Math.min(cs, size - off);
        // Now and then a misaligned one, which must be refused.
        if (seed.delta === 2 && len > SECTOR) {
          off += SECTOR;
          len -= SECTOR;
        }
        return { kind: 'write-compressed', off, len };
      },
    },
  ],
  faultable: true,
};

export const writeZeroes: OpSpec<OpOf<'write-zeroes'>> = {
  kind: 'write-zeroes',
  verb: 'write',
  format: (op) => `write -z${op.unmap ? ' -u' : ''} ${op.off} ${op.len}`,
  parse: (w, line) => {
    if (w[1] !== '-z') return null;
    const unmap = w[2] === '-u';
    const i = unmap ? 3 : 2;
    return exactly(w, i + 2, line, { kind: 'write-zeroes', unmap, off: num(w[i], line), len: num(w[i + 1], line) });
  },
  expect: (m, op) => m.expectWriteZeroes(op.off, op.len),
  apply: (m, op) => m.writeZeroes(op.off, op.len),
  touches: range,
  engine: (s, op) => s.image.writeZeroes(op.off, op.len, { unmap: op.unmap }),
  probe: (i) => i.writeZeroes(0, 512),
  qemuIo: (op) => `write -z ${op.unmap ? '-u ' : ''}${op.off} ${op.len}`,
  repro: (op) => ({ io: `write -q -z ${op.unmap ? '-u ' : ''}${op.off} ${op.len}` }),
  variants: [
    {
      weight: 12,
      resolve: (seed, model) => {
        const { off, len } = resolveRange(seed, model, Number.POSITIVE_INFINITY);
        return { kind: 'write-zeroes', off, len, unmap: seed.flag };
      },
    },
  ],
  faultable: true,
};

export const discard: OpSpec<OpOf<'discard'>> = {
  kind: 'discard',
  verb: 'discard',
  format: (op) => `discard ${op.off} ${op.len}`,
  parse: (w, line) => exactly(w, 3, line, { kind: 'discard', off: num(w[1], line), len: num(w[2], line) }),
  expect: (m, op) => m.expectDiscard(op.off, op.len),
  apply: (m, op) => m.discard(op.off, op.len),
  touches: range,
  engine: (s, op) => s.image.discard(op.off, op.len),
  probe: (i) => i.discard(0, i.clusterSize),
  qemuIo: (op) => `discard ${op.off} ${op.len}`,
  repro: (op) => ({ io: `discard -q ${op.off} ${op.len}` }),
  variants: [
    {
      weight: 12,
      resolve: (seed, model) => {
        const { off, len } = resolveRange(seed, model, Number.POSITIVE_INFINITY);
        return { kind: 'discard', off, len };
      },
    },
  ],
  faultable: true,
};

export const flush: OpSpec<OpOf<'flush'>> = {
  kind: 'flush',
  verb: 'flush',
  format: () => 'flush',
  parse: (w, line) => exactly(w, 1, line, { kind: 'flush' }),
  expect: () => ({ verdict: 'ok' }),
  apply: () => undefined,
  touches: () => [],
  engine: (s) => s.image.flush(),
  probe: (i) => i.flush(),
  qemuIo: () => 'flush',
  repro: () => ({ io: 'flush' }),
  variants: [{ weight: 4, resolve: () => ({ kind: 'flush' }) }],
  faultable: true,
};
