/**
 * What the robustness sweep's parent (sweep.test.ts) and child
 * (sweep-child.ts) share: the commands, the job and report shapes, and the
 * mutations of a seed image by name.
 */
import { listMutations, type Mutation } from '../../src/harness/mutate/index.js';
import type { CaseJob } from './child-lib.js';
import { sweepMutations } from './sweep-mutations.js';

/** `@` is the image, `@out` an output file next to it. */
export const SWEEP_COMMANDS: readonly (readonly string[])[] = [
  ['info', '@'],
  ['info', '--output', 'json', '@'],
  ['check', '@'],
  ['check', '-r', 'all', '@'],
  ['convert', '-O', 'raw', '@', '@out'],
  ['io', '-r', '-c', 'read 0 1M', '@'],
  ['io', '-c', 'write -P 0x5a 0 64k', '@'],
  ['snapshot', '-l', '@'],
  ['snapshot', '-c', 'sweep', '@'],
  ['amend', '-o', 'refcount_bits=32', '@'],
  ['resize', '@', '+1M'],
];

export interface SweepImage {
  path: string;
  /** The image's external data file, restored before every command (writes go there). */
  dataFile?: string;
}

export interface SweepJob extends CaseJob {
  images: Record<string, SweepImage>;
  cases: { id: string; image: string; mutation: string }[];
  seed: number;
  flips: number;
}

export interface CommandRun {
  argv: string[];
  rc: number;
  stdout: string;
  stderr: string;
  /** The image file's bytes after the command differ from the corrupted image's. */
  changed: boolean;
  /** Where they differ first (at most 16 positions; a size change adds the old size). */
  changedAt: number[];
  ms: number;
}

export interface SweepReport {
  runs: CommandRun[];
  /** qemu-img info --output=json on the corrupted bytes: exit code and its error line. */
  qemuInfo: { rc: number; stderr: string };
}

/** Every mutation of a seed image by name: the generator's and the sweep's own. */
export function mutationsOf(bytes: Uint8Array, seed: number, flips: number): Map<string, Mutation> {
  const all = [...listMutations(bytes, { seed, flips }), ...sweepMutations(bytes)];
  return new Map(all.map((m) => [m.name, m]));
}
