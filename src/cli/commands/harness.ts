import { fuzzCommand, minimizeCommand, replayCommand } from '../../harness/commands.js';
import type { CliContext, Command } from '../context.js';
import { EXIT_FAILURE } from '../errors.js';

/*
 * The harness's own commands live in src/harness (cli → harness, never the
 * other way); this file only dispatches argv to them. `bench` is wired the
 * same way once src/harness/bench.ts exists:
 *   import { benchCommand } from '../../harness/bench.js';
 */

function notYet(name: string): Command {
  return async (_argv: string[], ctx: CliContext) => {
    ctx.stderr(`qcow2-harness: '${name}' is not yet available in this build (src/harness/bench.ts is still being written)\n`);
    return EXIT_FAILURE;
  };
}

/** Harness commands print straight to the process streams; the context is not theirs. */
function external(fn: (argv: string[]) => Promise<number>): Command {
  return (argv) => fn(argv);
}

export const harnessCommands: Record<string, { run: Command; summary: string }> = {
  fuzz: { run: external(fuzzCommand), summary: 'property-based fuzzing campaign against a target (ts, qemu, cmd:PROGRAM)' },
  replay: { run: external(replayCommand), summary: 'replay a corpus entry or trace' },
  minimize: { run: external(minimizeCommand), summary: 'shrink a failing trace or image' },
  bench: { run: notYet('bench'), summary: 'measure our engine against qemu-img/qemu-io' },
};
