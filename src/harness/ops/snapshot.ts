/** Internal snapshots: snapshot -c|-a|-d NAME, as qemu-img snapshot. */
import { SNAPSHOT_NAMES } from './seed.js';
import { exactly, shq } from './text.js';
import { OpParseError, type OpOf, type OpSeed, type OpSpec, type Variant } from './types.js';
import type { DiskModel } from '../../model/disk.js';

type SnapshotOp = OpOf<'snapshot'>;
const FLAG = { create: '-c', apply: '-a', delete: '-d' } as const;
const ACTION = { '-c': 'create', '-a': 'apply', '-d': 'delete' } as const;

/** Apply and delete mostly name a snapshot that exists (by name or id), now and then one that does not. */
function existing(action: 'apply' | 'delete'): Variant<SnapshotOp> {
  return {
    weight: 5,
    resolve: (seed: OpSeed, model: DiskModel) => {
      const snaps = model.snapshots;
      if (snaps.length === 0 || seed.pick % 7 === 0) {
        return { kind: 'snapshot', action, name: SNAPSHOT_NAMES[seed.pick % SNAPSHOT_NAMES.length]! };
      }
      const s = snaps[seed.pick % snaps.length]!;
      return { kind: 'snapshot', action, name: seed.flag ? s.id : s.name };
    },
  };
}

export const snapshot: OpSpec<SnapshotOp> = {
  kind: 'snapshot',
  verb: 'snapshot',
  format: (op) => `snapshot ${FLAG[op.action]} ${op.name}`,
  parse: (w, line) => {
    const action = ACTION[w[1] as keyof typeof ACTION];
    if (!action || !w[2]) throw new OpParseError(`expected snapshot -c|-a|-d <name> in '${line}'`);
    return exactly(w, 3, line, { kind: 'snapshot', action, name: w[2] });
  },
  expect: (m, op) => {
    if (op.action === 'create') return m.expectSnapshotCreate(op.name);
    if (op.action === 'apply') return m.expectSnapshotApply(op.name);
    return m.expectSnapshotDelete(op.name);
  },
  apply: (m, op) => {
    if (op.action === 'create') return m.snapshotCreate(op.name);
    if (op.action === 'apply') return m.snapshotApply(op.name);
    return m.snapshotDelete(op.name);
  },
  touches: () => 'whole',
  engine: ({ image }, op) => {
    if (op.action === 'create') return image.createSnapshot(op.name);
    if (op.action === 'apply') return image.applySnapshot(op.name);
    return image.deleteSnapshot(op.name);
  },
  probe: (i) => (i.createSnapshot('p'), i.applySnapshot('p'), i.deleteSnapshot('p')),
  qemu: (op, q) => q.img(['snapshot', FLAG[op.action], op.name, q.image]),
  repro: (op) => ({ shell: `qemu-img snapshot ${FLAG[op.action]} ${shq(op.name)} image.qcow2` }),
  variants: [
    {
      weight: 6,
      resolve: (seed) => ({ kind: 'snapshot', action: 'create', name: SNAPSHOT_NAMES[seed.pick % SNAPSHOT_NAMES.length]! }),
    },
    existing('apply'),
    existing('delete'),
  ],
};
