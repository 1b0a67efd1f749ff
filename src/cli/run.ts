import type { CliContext, Command } from './context.js';
import { EXIT_FAILURE, EXIT_OK, reportError } from './errors.js';

/**
 * Every command, loaded only when it runs: start-up cost is what the command
 * needs (`--help` and `info` never load fast-check, execa or the harness).
 */
interface CommandEntry {
  summary: string;
  load: () => Promise<Command>;
}

export const COMMANDS: Record<string, CommandEntry> = {
  create: { summary: 'create a qcow2 (or raw) image, as qemu-img create', load: async () => (await import('./commands/create.js')).createCommand },
  info: {
    summary: "show an image's format, size, backing file, snapshots (qemu-img info)",
    load: async () => (await import('./commands/info.js')).infoCommand,
  },
  convert: { summary: 'copy an image to raw or qcow2 (qemu-img convert)', load: async () => (await import('./commands/convert.js')).convertCommand },
  check: { summary: 'check and repair metadata, with qemu-img check exit codes', load: async () => (await import('./commands/check.js')).checkCommand },
  io: { summary: 'run qemu-io commands (read/write/discard/flush) through our engine', load: async () => (await import('./commands/io.js')).ioCommand },
  snapshot: { summary: 'create, apply, delete, list internal snapshots', load: async () => (await import('./commands/snapshot.js')).snapshotCommand },
  amend: { summary: 'change refcount_bits, compat, lazy_refcounts in place', load: async () => (await import('./commands/amend.js')).amendCommand },
  resize: { summary: 'grow or shrink (--shrink) the virtual size', load: async () => (await import('./commands/resize.js')).resizeCommand },
  compare: { summary: 'compare the guest content of two images (qemu-img compare: exit 0 identical, 1 different)', load: async () => (await import('./commands/compare.js')).compareCommand },
  measure: { summary: 'the file size a new qcow2 (or raw) image needs, for a size or an image (qemu-img measure)', load: async () => (await import('./commands/measure.js')).measureCommand },
  map: { summary: 'show where each guest range comes from: backing depth, zeros, data, host offsets (qemu-img map)', load: async () => (await import('./commands/map.js')).mapCommand },
  bitmap: { summary: 'add, remove, clear, enable, disable, merge persistent dirty bitmaps (qemu-img bitmap)', load: async () => (await import('./commands/bitmap.js')).bitmapCommand },
  demo: {
    summary: 'scripted session on a new image, verified with qemu-img check/compare',
    load: async () => (await import('./commands/demo.js')).demoCommand,
  },
  fuzz: {
    summary: 'property-based fuzzing campaign against a target (ts, qemu, cmd:PROGRAM)',
    load: async () => (await import('./commands/fuzz.js')).fuzzCommand,
  },
  replay: { summary: 'replay a corpus entry or trace', load: async () => (await import('./commands/replay.js')).replayCommand },
  minimize: { summary: 'shrink a failing trace or image', load: async () => (await import('./commands/minimize.js')).minimizeCommand },
  merge: {
    summary: 'merge shard corpora into one, one entry per failure signature',
    load: async () => (await import('./commands/merge.js')).mergeCommand,
  },
  bench: { summary: 'measure our engine against qemu-img/qemu-io', load: async () => (await import('./commands/bench.js')).benchCommand },
  'target-check': {
    summary: "check a cmd:PROGRAM's protocol handling, one line per problem",
    // Parses its own one operand and prints to the process streams (see target-check.ts).
    load: async () => {
      const { targetCheckCommand } = await import('../harness/target-check.js');
      return (argv) => targetCheckCommand(argv);
    },
  },
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
fuzz, replay, minimize, merge: 1 failures found, 2 bad command line;
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
    return await (await cmd.load())(rest, ctx);
  } catch (e) {
    const { message, exitCode } = reportError(e);
    ctx.stderr(`qcow2-harness: ${message}\n`);
    return exitCode;
  }
}
