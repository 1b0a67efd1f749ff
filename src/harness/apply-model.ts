/** Maps harness ops onto the model's expect/apply pairs. */
import type { DiskModel } from '../model/disk.js';
import type { Expectation } from '../model/types.js';
import type { Op } from './ops.js';

export function expectOp(model: DiskModel, op: Op): Expectation {
  switch (op.kind) {
    case 'write':
      return model.expectWrite(op.off, op.len);
    case 'write-compressed':
      return model.expectWriteCompressed(op.off, op.len);
    case 'write-zeroes':
      return model.expectWriteZeroes(op.off, op.len);
    case 'discard':
      return model.expectDiscard(op.off, op.len);
    case 'flush':
    case 'reopen':
      return { verdict: 'ok' };
    case 'crash':
      return { verdict: 'either', reason: 'crash is a pure check, offered only by targets that record their writes' };
    case 'snapshot':
      if (op.action === 'create') return model.expectSnapshotCreate(op.name);
      if (op.action === 'apply') return model.expectSnapshotApply(op.name);
      return model.expectSnapshotDelete(op.name);
    case 'amend':
      if (op.key === 'refcount_bits') return model.expectAmendRefcountBits(op.value);
      if (op.key === 'compat') return model.expectAmendCompat(op.value);
      return model.expectAmendLazyRefcounts(op.value);
    case 'resize':
      return model.expectResize(op.size, op.shrink);
  }
}

/** Applies an op the target accepted; `stamp` is the op's number (its data's stamp). */
export function applyOp(model: DiskModel, op: Op, stamp: number): void {
  switch (op.kind) {
    case 'write':
      return model.write(op.off, op.len, stamp);
    case 'write-compressed':
      return model.writeCompressed(op.off, op.len, stamp);
    case 'write-zeroes':
      return model.writeZeroes(op.off, op.len);
    case 'discard':
      return model.discard(op.off, op.len);
    case 'flush':
    case 'reopen':
    case 'crash':
      return;
    case 'snapshot':
      if (op.action === 'create') return model.snapshotCreate(op.name);
      if (op.action === 'apply') return model.snapshotApply(op.name);
      return model.snapshotDelete(op.name);
    case 'amend':
      if (op.key === 'refcount_bits') return model.amendRefcountBits(op.value);
      if (op.key === 'compat') return model.amendCompat(op.value);
      return model.amendLazyRefcounts(op.value);
    case 'resize':
      return model.resize(op.size);
  }
}
