import * as fs from 'node:fs';
import { all, has, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_FAILURE, EXIT_OK, UsageError } from '../errors.js';
import { IO_COMMANDS_HELP, prepareIoCommands, runIoCommand } from '../io-commands.js';
import { IoSession, parseCacheMode } from '../io-session.js';
import { IMAGE_OPTS_LONG, imageSpec, IMAGE_OPTS_HELP, secretStore } from '../image-opts.js';
import { FORCE_SHARE_HELP, forceShare } from '../open.js';

export const IO_HELP = `Usage: qcow2-harness io [--object OBJ] [--image-opts] [-f fmt] [-r [-U]] FILE -c 'CMD' [-c 'CMD' ...]

Runs qemu-io commands against an image through this project's engine, in
order, as 'qemu-io'. Without -c, commands are read from standard input, one
per line, each after a 'qemu-io> ' prompt as qemu-io prints them. A failed command (an I/O error, a failed pattern verification, a
bad argument) is reported and the next one still runs; the exit code is then
1, as qemu-io's.
${IMAGE_OPTS_HELP}
Exit codes: 0 every command succeeded, 1 a command failed, the image could not
be opened, or a bad command line; 70 an internal error.
  -f fmt    qcow2 or raw (probed when omitted)
  -r        open read-only
  -c CMD    a command to run (repeatable)
${FORCE_SHARE_HELP} (with -r)
  -t MODE   cache mode: writethrough (the default, as qemu-io's: every write is
            flushed before the next command), directsync, writeback, none, unsafe
            (writes reach the disk at a flush or at the end)
  -n, -d MODE   accepted for qemu-io compatibility, ignored

${IO_COMMANDS_HELP}`;

/**
 * Standard output as qemu-io's stdio gives it when not a terminal: held and
 * written in large pieces (two lines per command would otherwise be two write
 * calls each), always before anything goes to stderr, so the two streams
 * still interleave as the commands ran.
 */
function bufferedStdout(ctx: CliContext): CliContext & { flush(): void } {
  let held = '';
  const flush = (): void => {
    if (held === '') return;
    const text = held;
    held = '';
    ctx.stdout(text);
  };
  return {
    cwd: ctx.cwd,
    stdout(text) {
      held += text;
      if (held.length >= 65536) flush();
    },
    stderr(text) {
      flush();
      ctx.stderr(text);
    },
    flush,
  };
}

export async function ioCommand(argv: string[], outer: CliContext): Promise<number> {
  const ctx = bufferedStdout(outer);
  try {
    return await runIo(argv, ctx);
  } finally {
    ctx.flush();
  }
}

/** qemu-io's prompt (get_prompt: the program name), printed whether or not the input is a terminal. */
const PROMPT = 'qemu-io> ';

async function runIo(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { short: { f: true, r: false, c: true, n: false, U: false, t: true, d: true }, long: { 'force-share': false, ...IMAGE_OPTS_LONG } }, 'io');
  if (has(p, 'help')) {
    ctx.stdout(IO_HELP);
    return EXIT_OK;
  }
  // No image at all is a session that opens one later (qemu-io's open command).
  if (p.operands.length > 1) throw new UsageError(`Unexpected argument: ${p.operands[1]}`, 'io');
  const store = secretStore(p);
  const cache = parseCacheMode(last(p, 't') ?? 'writethrough');
  const session = new IoSession(ctx, store);
  let commands = all(p, 'c');
  // Without -c, qemu-io's command loop: a prompt before each line it reads,
  // and one more at the end of input; every line is a command (qemu-io has no
  // comments: "# x" is command "#", not found), blank ones do nothing.
  const interactive = commands.length === 0;
  if (interactive) {
    commands = fs.readFileSync(0, 'utf8').split('\n');
    if (commands.at(-1) === '') commands.pop();
  }
  if (p.operands.length === 1) {
    const spec = imageSpec(p, p.operands[0]!, 'io', store);
    session.open({ spec, readOnly: has(p, 'r'), forceShare: forceShare(p), writethrough: cache.writethrough });
  }
  await prepareIoCommands(commands);
  let failed = false;
  try {
    for (const c of commands) {
      if (interactive) ctx.stdout(PROMPT);
      if (interactive && c.trim() === '') continue;
      if (!runIoCommand(session, c, ctx)) failed = true;
      if (session.quit) break;
    }
    if (interactive && !session.quit) ctx.stdout(PROMPT);
  } finally {
    if (!session.close()) failed = true;
  }
  return failed ? EXIT_FAILURE : EXIT_OK;
}

