import { benchCommand } from '../../harness/bench.js';
import { fuzzCommand, minimizeCommand, replayCommand } from '../../harness/commands.js';
import { targetCheckCommand } from '../../harness/target-check.js';
import type { Command } from '../context.js';

/*
 * The harness's own commands live in src/harness (cli → harness, never the
 * other way); this file only dispatches argv to them.
 */

/** Harness commands print straight to the process streams; the context is not theirs. */
function external(fn: (argv: string[]) => Promise<number>): Command {
  return (argv) => fn(argv);
}

export const harnessCommands: Record<string, { run: Command; summary: string }> = {
  fuzz: { run: external(fuzzCommand), summary: 'property-based fuzzing campaign against a target (ts, qemu, cmd:PROGRAM)' },
  replay: { run: external(replayCommand), summary: 'replay a corpus entry or trace' },
  minimize: { run: external(minimizeCommand), summary: 'shrink a failing trace or image' },
  bench: { run: external(benchCommand), summary: 'measure our engine against qemu-img/qemu-io' },
  'target-check': { run: external(targetCheckCommand), summary: "check a cmd:PROGRAM's protocol handling, one line per problem" },
};
