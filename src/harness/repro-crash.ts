/**
 * repro.sh for a crash found on QEMU (targets/qemu-crash.ts): the batch
 * before the crash op runs again on a copy of the image, killed with
 * `sigraise 9` before it closes it, and the state it leaves is checked as the
 * crash oracle checks it, with qemu tools and shell only: it must open (which
 * repairs a dirty image), pass qemu-img check (leaks allowed), and every byte
 * of its guest view must be that byte at the model's last flush or after the
 * batch (a byte that is neither is data the guest never wrote there; a sector
 * written twice in the batch may also hold the value between, which the
 * harness allows and this script does not know, so it may report a state the
 * harness passes, never the other way round).
 */
import { DiskModel } from '../model/disk.js';
import type { Layer } from '../model/layer.js';
import { toModelConfig, type TraceConfig } from './config.js';
import { applyOp } from './apply-model.js';
import { refusedOp, type Op } from './ops.js';

/** The model's guest view at the last flush (or reopen) before op `crashIndex`, and just before it; undefined when an op there is an aio group (its serial order is the target's). */
export function crashViews(config: TraceConfig, ops: readonly Op[], refused: ReadonlySet<number>, crashIndex: number): { atFlush: Layer; now: Layer; model: DiskModel } | undefined {
  const model = new DiskModel(toModelConfig(config));
  let atFlush = model.active.clone();
  for (let i = 1; i < crashIndex; i++) {
    const op = ops[i - 1]!;
    if (op.kind === 'aio') return undefined;
    if (refused.has(i)) refusedOp(model, op);
    else applyOp(model, op, i);
    if (!refused.has(i) && (op.kind === 'flush' || op.kind === 'reopen' || op.kind === 'snapshot' || op.kind === 'amend' || op.kind === 'resize')) {
      // Every qemu-img op closes the image too: durable from here.
      atFlush = model.active.clone();
    }
  }
  return { atFlush, now: model.active.clone(), model };
}

/**
 * Shell lines checking the crash state a killed replay of `batch` leaves.
 * `writeLayer(file, layer)` gives the lines building a raw file of a layer's
 * guest view; `operand(file, dataFile)` an image operand of qemu-io/qemu-img.
 */
export function crashCheckLines(
  index: number,
  batch: readonly string[],
  hasDataFile: boolean,
  q: (s: string) => string,
  operand: (file: string, dataFile?: string) => string,
  writeLayer: (file: string, layer: Layer) => string[],
  views: { atFlush: Layer; now: Layer },
): string[] {
  const img = operand('crash.qcow2', hasDataFile ? 'crash.data' : undefined);
  const L = [
    `# op ${index} (crash): the batch again on the copy, killed before it closes the image, write cache on`,
    `qemu-io -t writeback ${batch.map((x) => `-c ${q(x)}`).join(' ')} -c 'sigraise 9' ${img} >/dev/null 2>&1`,
    `run qemu-io -c flush ${img} >/dev/null || bug "the crash state does not open"`,
    `run qemu-img check ${img} >/dev/null 2>&1; rc=$?; [ $rc -eq 0 ] || [ $rc -eq 3 ] || bug "qemu-img check of the crash state: rc $rc"`,
    `run qemu-img convert -O raw ${img} crash.raw || bug "the crash state does not read"`,
  ];
  for (const [file, layer] of [['at-flush.raw', views.atFlush], ['now.raw', views.now]] as const) L.push(...writeLayer(file, layer));
  L.push(
    `cmp -l crash.raw at-flush.raw 2>/dev/null | awk '{print $1}' | sort > differ-flush; cmp -l crash.raw now.raw 2>/dev/null | awk '{print $1}' | sort > differ-now`,
    `bad=$(comm -12 differ-flush differ-now | sort -n | head -1)`,
    `[ -z "$bad" ] || bug "crash state: guest byte $((bad - 1)) is neither its value at the last flush nor after the batch"`,
    'echo "crash state as allowed"',
  );
  return L;
}
