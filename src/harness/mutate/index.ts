/**
 * Hostile-image generator: given a valid qcow2 image, find its metadata with
 * the format codecs (analyze.ts) and produce named, deterministic corruptions
 * of it, one family per file: header fields, extensions, L1/L2/reftable
 * entries, refcounts, leaks and overlapping tables (tables.ts), snapshots,
 * truncations and seeded byte flips.
 *
 * Mutations that do not apply to an image (no snapshots, no backing file…)
 * are left out rather than produced as no-ops. The order below is part of the
 * contract: the hostile suite titles its cases by these names.
 */
import { makeContext, type MutateOptions, type Mutation, type MutationContext } from './common.js';
import { extensionMutations } from './extensions.js';
import { flipMutations } from './flips.js';
import { headerMutations } from './header.js';
import { snapshotMutations } from './snapshot.js';
import { l1Mutations, l2Mutations, leakMutations, overlapMutations, refcountMutations, reftableMutations } from './tables.js';
import { truncateMutations } from './truncate.js';

export { analyzeImage, metadataRanges, refcountOf } from './analyze.js';
export type { DataClusterRef, ImageLayout, SnapshotRef, TableEntryRef } from './analyze.js';
export type { MutateOptions, Mutation, MutationKind } from './common.js';
export { putHeaderField } from './header.js';

const FAMILIES: readonly ((ctx: MutationContext) => void)[] = [
  headerMutations,
  extensionMutations,
  l1Mutations,
  l2Mutations,
  reftableMutations,
  refcountMutations,
  leakMutations,
  overlapMutations,
  snapshotMutations,
  truncateMutations,
  flipMutations,
];

/** Every mutation this generator knows for the image, in a fixed order. */
export function listMutations(input: Uint8Array, opts: MutateOptions = {}): Mutation[] {
  const out: Mutation[] = [];
  const ctx = makeContext(input, opts, out);
  for (const family of FAMILIES) family(ctx);
  return out;
}
export { rewriteHeaderCluster } from './extensions.js';
export { putEntry, withOffset } from './common.js';
