/**
 * bitmap --add [-g G] [--disable] | --remove | --clear | --enable | --disable | --merge SRC  NAME,
 * as qemu-img bitmap; plus how the other ops dirty the model's bitmaps
 * (bitmapEffects) and the one refusal bitmaps add to them (snapshot apply).
 *
 * No seed variants: generation weights stay as they were, so every fixed-seed
 * trace of the other suites is unchanged; properties/bitmaps.prop.test.ts
 * generates bitmap ops itself.
 */
import type { DiskModel } from '../../model/disk.js';
import type { ModelBitmapAction } from '../../model/bitmaps.js';
import type { Expectation } from '../../model/types.js';
import { exactly, num } from './text.js';
import type { Op, OpOf, OpSpec } from './types.js';

type BitmapOp = OpOf<'bitmap'>;

/** The model's action for an op (granularity defaulted as qemu-img does for the model's cluster size). */
function action(op: BitmapOp, clusterSize: number): ModelBitmapAction {
  if (op.action === 'add') {
    return { action: 'add', name: op.name, granularity: op.granularity ?? Math.min(Math.max(4096, clusterSize), 65536), disabled: op.disabled ?? false };
  }
  if (op.action === 'merge') return { action: 'merge', name: op.name, source: op.source! };
  return { action: op.action, name: op.name };
}

function words(op: BitmapOp): string[] {
  const w = [`--${op.action}`];
  if (op.action === 'merge') w.push(op.source!);
  if (op.granularity !== undefined) w.push('-g', String(op.granularity));
  if (op.disabled) w.push('--disable');
  return w;
}

function parse(w: string[], line: string): BitmapOp | null {
  const act = w[1]?.startsWith('--') ? w[1].slice(2) : undefined;
  if (!act || !['add', 'remove', 'clear', 'enable', 'disable', 'merge'].includes(act)) return null;
  const op: BitmapOp = { kind: 'bitmap', action: act as BitmapOp['action'], name: '' };
  let i = 2;
  if (act === 'merge') op.source = w[i++];
  if (act === 'add' && w[i] === '-g') {
    op.granularity = num(w[i + 1], line);
    i += 2;
  }
  if (act === 'add' && w[i] === '--disable') {
    op.disabled = true;
    i++;
  }
  op.name = w[i++] ?? '';
  return exactly(w, i, line, op);
}

export const bitmap: OpSpec<BitmapOp> = {
  kind: 'bitmap',
  verb: 'bitmap',
  format: (op) => `bitmap ${words(op).join(' ')} ${op.name}`,
  parse,
  expect: (m, op) => m.bitmaps.expect(action(op, m.meta.clusterSize), m.meta.compat === '0.10' ? 2 : 3),
  apply: (m, op) => m.bitmaps.apply(action(op, m.meta.clusterSize)),
  touches: () => [],
  engine: ({ image }, op) => {
    if (op.action === 'merge') {
      image.bitmap({ op: 'merge', name: op.name, source: op.source! });
    } else if (op.action === 'add') {
      image.bitmap({ op: 'add', name: op.name, granularity: op.granularity, disabled: op.disabled });
    } else {
      image.bitmap({ op: op.action, name: op.name });
    }
  },
  probe: (i) => (i.bitmap({ op: 'add', name: 'probe' }), i.bitmap({ op: 'remove', name: 'probe' })),
  // qemu-img bitmap runs `--add --disable` as an add, then a disable: the same end state.
  qemu: (op, q) => q.img(['bitmap', '-f', 'qcow2', ...words(op), q.image, op.name]),
  repro: (op) => ({ shell: `qemu-img bitmap -f qcow2 ${words(op).join(' ')} image.qcow2 ${op.name}` }),
};

/** The refusal persistent bitmaps add to another op: bdrv_snapshot_goto with any bitmap present. */
export function bitmapRefusal(model: DiskModel, op: Op): Expectation | undefined {
  if (op.kind === 'snapshot' && op.action === 'apply' && model.bitmaps.list.length > 0) {
    return { verdict: 'refuse', reason: 'Device has active dirty bitmaps' };
  }
  return undefined;
}

/** What an accepted op does to the model's bitmaps: guest changes dirty them, a resize resizes them. */
export function bitmapEffects(model: DiskModel, op: Op): void {
  switch (op.kind) {
    case 'write':
    case 'write-compressed':
    case 'write-zeroes':
    case 'discard':
      model.bitmaps.markDirty(op.off, op.len);
      return;
    case 'resize':
      model.bitmaps.resize(model.size);
      return;
    case 'fault':
      bitmapEffects(model, op.op);
      return;
    default:
      return;
  }
}

/**
 * What a refused op does to the model's bitmaps. QEMU sets the dirty bits of
 * every request that reached the driver, failed or not (bdrv_co_write_req_finish
 * runs whatever the driver returned). A compressed write in range is refused
 * only by the driver (qcow2_co_pwritev_compressed_part: not cluster aligned),
 * so its granules are dirty; every other refusal the model makes comes before
 * the request (range, alignment) and dirties nothing.
 */
export function bitmapEffectsOfRefusal(model: DiskModel, op: Op): void {
  if (op.kind === 'write-compressed' && op.off + op.len <= model.size && op.off % 512 === 0 && op.len % 512 === 0) {
    model.bitmaps.markDirty(op.off, op.len);
  }
}
