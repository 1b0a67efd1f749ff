/**
 * Ops the qemu target refuses on its own instead of running them, for a
 * configuration where QEMU 7.2 is known to get them wrong (a KnownBug the
 * corpus documents): the model and our engine refuse them, the arbitraries do
 * not generate them for QEMU, and an explicit one (a replayed trace) is
 * answered with this refusal unless the target is strict (replaying the bug).
 */
import type { TraceConfig } from './config.js';
import type { Op } from './ops.js';
import type { KnownBug } from './targets/types.js';

/** Why the qemu target refuses `op` on an image of config `c` without running it, or undefined. */
export function qemuDeclines(c: TraceConfig, op: Op, known: ReadonlySet<KnownBug>): string | undefined {
  if (!c.encrypt) return undefined;
  if (op.kind === 'crash' && c.dataFile && !c.dataFile.raw && known.has('data-file-discard-before-l2-update')) {
    return 'known QEMU 7.2 bug: a crash after a discard reads the decryption of a hole in the data file';
  }
  const inner = op.kind === 'fault' ? op.op : op;
  if (inner.kind === 'write-compressed' && known.has('unencrypted-compressed-write')) {
    return 'known QEMU 7.2 bug: it would store a compressed cluster of an encrypted image unencrypted';
  }
  if (inner.kind === 'amend' && inner.key === 'compat' && inner.value === '0.10' && known.has('encrypted-downgrade-garbage')) {
    return 'known QEMU 7.2 bug: its downgrade of an encrypted image leaves zero clusters reading garbage';
  }
  return undefined;
}
