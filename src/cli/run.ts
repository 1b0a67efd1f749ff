import { amendCommand } from './commands/amend.js';
import { bitmapCommand } from './commands/bitmap.js';
import { checkCommand } from './commands/check.js';
import { convertCommand } from './commands/convert.js';
import { createCommand } from './commands/create.js';
import { demoCommand } from './commands/demo.js';
import { harnessCommands } from './commands/harness.js';
import { infoCommand } from './commands/info.js';
import { ioCommand } from './commands/io.js';
import { resizeCommand } from './commands/resize.js';
import { snapshotCommand } from './commands/snapshot.js';
import type { CliContext, Command } from './context.js';
import { EXIT_FAILURE, EXIT_OK, reportError } from './errors.js';

export const COMMANDS: Record<string, { run: Command; summary: string }> = {
  create: { run: createCommand, summary: 'create a qcow2 (or raw) image, as qemu-img create' },
  info: { run: infoCommand, summary: "show an image's format, size, backing file, snapshots (qemu-img info)" },
  convert: { run: convertCommand, summary: 'copy an image to raw or qcow2 (qemu-img convert)' },
  check: { run: checkCommand, summary: 'check and repair metadata, with qemu-img check exit codes' },
  io: { run: ioCommand, summary: "run qemu-io commands (read/write/discard/flush) through our engine" },
  snapshot: { run: snapshotCommand, summary: 'create, apply, delete, list internal snapshots' },
  amend: { run: amendCommand, summary: 'change refcount_bits, compat, lazy_refcounts in place' },
  resize: { run: resizeCommand, summary: 'grow or shrink (--shrink) the virtual size' },
  bitmap: { run: bitmapCommand, summary: 'add, remove, clear, enable, disable, merge persistent dirty bitmaps (qemu-img bitmap)' },
  demo: { run: demoCommand, summary: 'scripted session on a new image, verified with qemu-img check/compare' },
  ...harnessCommands,
};

export function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length)) + 2;
  return `Usage: qcow2-harness COMMAND [options] ...

A qcow2 implementation in TypeScript, and a conformance and fuzzing harness
that checks qcow2 implementations against qemu-img. Commands:
${Object.entries(COMMANDS)
  .map(([k, v]) => `  ${k.padEnd(width)}${v.summary}`)
  .join('\n')}

'qcow2-harness COMMAND --help' describes a command. Exit codes: 0 success,
1 failure (as qemu-img), check: 2 corruptions, 3 leaks, 63 unsupported;
70 an internal error (a bug in qcow2-harness).
`;
}

/** Runs one command line and returns the exit code; everything thrown ends as one line on stderr. */
export async function runCli(argv: readonly string[], ctx: CliContext): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    ctx.stdout(mainHelp());
    return name === undefined ? EXIT_FAILURE : EXIT_OK;
  }
  if (name === '--version' || name === '-V') {
    ctx.stdout('qcow2-harness 0.1.0\n');
    return EXIT_OK;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    ctx.stderr(`qcow2-harness: unknown command '${name}'\nTry 'qcow2-harness --help' for more information\n`);
    return EXIT_FAILURE;
  }
  try {
    return await cmd.run(rest, ctx);
  } catch (e) {
    const { message, exitCode } = reportError(e);
    ctx.stderr(`qcow2-harness: ${message}\n`);
    return exitCode;
  }
}
