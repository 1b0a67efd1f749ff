/** resize [--shrink] SIZE, as qemu-img resize. */
import { SECTOR } from '../../model/layer.js';
import type { DiskModel } from '../../model/disk.js';
import { l2Span, MAX_VIRTUAL_SIZE, refblockSpan } from './seed.js';
import { exactly, num } from './text.js';
import type { OpOf, OpSeed, OpSpec } from './types.js';

type ResizeOp = OpOf<'resize'>;

function resolveResize(seed: OpSeed, model: DiskModel): ResizeOp {
  const size = model.size;
  const cs = model.meta.clusterSize;
  const grow = seed.count % 2 === 1;
  // Sizes right at an L2 table span or refcount block span (± a sector), so that
  // shrinking drops whole L2 tables and growing adds L1 entries.
  const span = seed.anchor === 'refblock' ? refblockSpan(cs, model.meta.refcountBits) : l2Span(cs, model.meta.extendedL2);
  if (seed.anchor === 'l2' || seed.anchor === 'refblock' || (seed.anchor === 'cluster' && size > span)) {
    const k = grow ? Math.floor(size / span) + 1 : Math.floor((size - 1) / span);
    const target = k * span + seed.delta * SECTOR;
    if (target >= SECTOR && target <= MAX_VIRTUAL_SIZE && target !== size && grow === target > size) {
      return { kind: 'resize', size: target, shrink: !grow && (seed.flag || seed.lenDelta !== 1) };
    }
  }
  const amounts = [SECTOR, cs, cs + SECTOR, cs - SECTOR, 3 * cs, Math.floor(size / 2 / SECTOR) * SECTOR];
  const amount = Math.max(SECTOR, amounts[seed.pick % amounts.length]! + seed.delta * SECTOR);
  if (grow) return { kind: 'resize', size: Math.min(MAX_VIRTUAL_SIZE + cs, size + amount), shrink: false };
  const target = Math.max(SECTOR, size - amount);
  // Mostly pass --shrink; sometimes leave it out, which must be refused.
  return { kind: 'resize', size: target, shrink: seed.flag || seed.lenDelta !== 1 };
}

export const resize: OpSpec<ResizeOp> = {
  kind: 'resize',
  verb: 'resize',
  format: (op) => `resize ${op.shrink ? '--shrink ' : ''}${op.size}`,
  parse: (w, line) => {
    const shrink = w[1] === '--shrink';
    return exactly(w, shrink ? 3 : 2, line, { kind: 'resize', shrink, size: num(w[shrink ? 2 : 1], line) });
  },
  expect: (m, op) => m.expectResize(op.size, op.shrink),
  apply: (m, op) => m.resize(op.size),
  touches: () => 'whole',
  engine: ({ image }, op) => image.resize(op.size, { shrink: op.shrink }),
  probe: (i) => (i.resize(8 * i.clusterSize), i.resize(4 * i.clusterSize, { shrink: true })),
  qemu: (op, q) => q.img(['resize', '-q', '-f', 'qcow2', ...(op.shrink ? ['--shrink'] : []), q.image, String(op.size)]),
  repro: (op) => ({ shell: `qemu-img resize -q -f qcow2 ${op.shrink ? '--shrink ' : ''}image.qcow2 ${op.size}` }),
  variants: [{ weight: 8, resolve: resolveResize }],
};
