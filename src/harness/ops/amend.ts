/** qemu-img amend of one option: refcount_bits, compat, lazy_refcounts. */
import { exactly, num } from './text.js';
import { OpParseError, type AmendOp, type OpSpec } from './types.js';

/** Above this many entries per refcount block, QEMU's refcount amend takes seconds to minutes. */
const QEMU_AMEND_MAX_REFBLOCK_ENTRIES = 65536;

const valueText = (op: AmendOp) => (op.key === 'lazy_refcounts' ? (op.value ? 'on' : 'off') : String(op.value));

export const amend: OpSpec<AmendOp> = {
  kind: 'amend',
  verb: 'amend',
  format: (op) => `amend ${op.key}=${valueText(op)}`,
  parse: (w, line) => {
    const m = /^(refcount_bits|compat|lazy_refcounts)=(.+)$/.exec(w[1] ?? '');
    if (!m) throw new OpParseError(`expected amend key=value in '${line}'`);
    const [, key, v] = m;
    if (key === 'refcount_bits') return exactly(w, 2, line, { kind: 'amend', key, value: num(v, line) });
    if (key === 'compat') {
      if (v !== '0.10' && v !== '1.1') throw new OpParseError(`compat must be 0.10 or 1.1 in '${line}'`);
      return exactly(w, 2, line, { kind: 'amend', key, value: v });
    }
    if (v !== 'on' && v !== 'off') throw new OpParseError(`lazy_refcounts must be on|off in '${line}'`);
    return exactly(w, 2, line, { kind: 'amend', key: 'lazy_refcounts', value: v === 'on' });
  },
  expect: (m, op) => {
    if (op.key === 'refcount_bits') return m.expectAmendRefcountBits(op.value);
    if (op.key === 'compat') return m.expectAmendCompat(op.value);
    return m.expectAmendLazyRefcounts(op.value);
  },
  apply: (m, op) => {
    if (op.key === 'refcount_bits') return m.amendRefcountBits(op.value);
    if (op.key === 'compat') return m.amendCompat(op.value);
    return m.amendLazyRefcounts(op.value);
  },
  touches: () => 'whole',
  engine: ({ image }, op) => {
    if (op.key === 'refcount_bits') return image.amend({ refcountBits: op.value });
    if (op.key === 'compat') return image.amend({ compat: op.value });
    return image.amend({ lazyRefcounts: op.value });
  },
  probe: (i) => (i.amend({ refcountBits: 8 }), i.amend({ lazyRefcounts: true }), i.amend({ compat: '0.10' })),
  qemu: (op, q) => q.img(['amend', '-f', 'qcow2', '-o', `${op.key}=${valueText(op)}`, q.image]),
  repro: (op) => ({ shell: `qemu-img amend -f qcow2 -o ${op.key}=${valueText(op)} image.qcow2` }),
  variants: [
    {
      weight: 8,
      resolve: (seed, model, ctx) => {
        const cs = model.meta.clusterSize;
        let which = seed.pick % 3;
        if (which === 0 && ctx.knownBugs?.has('slow-refcount-amend')) {
          const entries = (cs * 8) / Math.min(model.meta.refcountBits, 2 ** (Math.floor(seed.pick / 3) % 7));
          if (entries > QEMU_AMEND_MAX_REFBLOCK_ENTRIES) which = 2;
        }
        if (which === 0) return { kind: 'amend', key: 'refcount_bits', value: 2 ** (Math.floor(seed.pick / 3) % 7) };
        if (which === 1) {
          const zstdSnapshots = model.meta.compressionType === 'zstd' && model.snapshots.length > 0;
          const downgrade =
            seed.flag &&
            !(model.encrypted && ctx.knownBugs?.has('encrypted-downgrade-garbage')) &&
            !(zstdSnapshots && ctx.knownBugs?.has('zstd-downgrade-ignores-snapshots'));
          return { kind: 'amend', key: 'compat', value: downgrade ? '0.10' : '1.1' };
        }
        return { kind: 'amend', key: 'lazy_refcounts', value: seed.flag };
      },
    },
  ],
};
