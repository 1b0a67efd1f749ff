/**
 * Truncations: the file cut inside the header, at and inside each kind of
 * table, inside data, and near the end. A reader must refuse or read zeros,
 * never run past its buffer.
 */
import { HEADER_V2_LENGTH, L1_ENTRY_SIZE, REFTABLE_ENTRY_SIZE, SECTOR_SIZE } from '../../qcow2/format/index.js';
import type { MutationContext } from './common.js';

export function truncateMutations(ctx: MutationContext): void {
  const { lay, normal, compressed } = ctx;
  const h = lay.header;
  const cs = lay.clusterSize;
  const cuts = new Map<string, number>([
    ['empty', 0],
    ['1', 1],
    ['mid-v2-header', HEADER_V2_LENGTH / 2],
    ['v2-header-minus-1', HEADER_V2_LENGTH - 1],
    ['header', lay.extensionsStart],
    ['first-cluster-minus-1', cs - 1],
    ['at-l1', h.l1TableOffset],
    ['mid-l1', h.l1TableOffset + L1_ENTRY_SIZE],
    ['at-reftable', h.refcountTableOffset],
    ['mid-reftable', h.refcountTableOffset + REFTABLE_ENTRY_SIZE],
  ]);
  if (lay.refblocks[0]) cuts.set('at-refblock', lay.refblocks[0]);
  if (lay.refblocks[0]) cuts.set('mid-refblock', lay.refblocks[0] + cs / 2);
  if (lay.l2Tables[0]) cuts.set('at-l2', lay.l2Tables[0]);
  if (lay.l2Tables[0]) cuts.set('mid-l2', lay.l2Tables[0] + cs / 2);
  if (h.nbSnapshots > 0) cuts.set('at-snapshot-table', h.snapshotsOffset);
  if (normal) cuts.set('mid-data', normal.hostOffset + SECTOR_SIZE);
  if (compressed) cuts.set('mid-compressed', compressed.hostOffset + 1);
  cuts.set('half', Math.floor(lay.fileSize / 2));
  cuts.set('minus-cluster', lay.fileSize - cs);
  cuts.set('minus-sector', lay.fileSize - SECTOR_SIZE);
  cuts.set('minus-1', lay.fileSize - 1);
  const seenCuts = new Set<number>();
  for (const [label, at] of cuts) {
    if (at < 0 || at >= lay.fileSize || seenCuts.has(at)) continue;
    seenCuts.add(at);
    ctx.add('truncate', `${label}@${at}`, `file cut to ${at} bytes`, (m) => m.slice(0, at));
  }
}
