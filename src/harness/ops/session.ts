/** Ops on the image as a whole that change no guest data: reopen, crash. */
import { exactly } from './text.js';
import type { OpOf, OpSpec } from './types.js';

export const reopen: OpSpec<OpOf<'reopen'>> = {
  kind: 'reopen',
  verb: 'reopen',
  format: () => 'reopen',
  parse: (w, line) => exactly(w, 1, line, { kind: 'reopen' }),
  expect: () => ({ verdict: 'ok' }),
  apply: () => undefined,
  touches: () => 'whole',
  engine: (s) => s.reopen(),
  probe: (i) => i.close(),
  // Each qemu-io or qemu-img run opens and closes the image: a reopen just ends a batch.
  qemu: async () => ({ ok: true }),
  repro: () => null,
  variants: [{ weight: 4, resolve: () => ({ kind: 'reopen' }) }],
};

export const crash: OpSpec<OpOf<'crash'>> = {
  kind: 'crash',
  verb: 'crash',
  format: () => 'crash',
  parse: (w, line) => exactly(w, 1, line, { kind: 'crash' }),
  expect: () => ({ verdict: 'either', reason: 'crash is a pure check, offered only by targets that record their writes' }),
  apply: () => undefined,
  touches: () => [],
  // A pure check: the executor examines the target's crash images and the run
  // goes on with the live, uncrashed image.
  engine: () => undefined,
  repro: () => null,
  variants: [{ weight: 4, resolve: () => ({ kind: 'crash' }) }],
};
