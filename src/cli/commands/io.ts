import * as fs from 'node:fs';
import { all, has, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_FAILURE, EXIT_OK, UsageError } from '../errors.js';
import { IO_COMMANDS_HELP, prepareIoCommands, runIoCommand, type IoSession } from '../io-commands.js';
import { checkOpened, IMAGE_OPTS_LONG, imageSpec, IMAGE_OPTS_HELP } from '../image-opts.js';
import { FORCE_SHARE_HELP, forceShare, openWritable, Qcow2Device, reason, type WritableDevice } from '../open.js';

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
  -n, -t MODE, -d MODE   accepted for qemu-io compatibility, ignored

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
  if (p.operands.length !== 1) throw new UsageError(p.operands.length ? `Unexpected argument: ${p.operands[1]}` : 'Expecting one image file name', 'io');
  const spec = imageSpec(p, p.operands[0]!, 'io');
  const file = spec.file;
  let commands = all(p, 'c');
  // Without -c, qemu-io's command loop: a prompt before each line it reads,
  // and one more at the end of input; every line is a command (qemu-io has no
  // comments: "# x" is command "#", not found), blank ones do nothing.
  const interactive = commands.length === 0;
  if (interactive) {
    commands = fs.readFileSync(0, 'utf8').split('\n');
    if (commands.at(-1) === '') commands.pop();
  }
  const how = { format: spec.format, readOnly: has(p, 'r'), forceShare: forceShare(p), passphrase: spec.passphrase(), name: spec.shownAs, dataFile: spec.dataFile };
  await prepareIoCommands(commands);
  const open = (): WritableDevice => {
    const dev = openWritable(ctx, file, how);
    if (dev instanceof Qcow2Device) checkOpened(dev.image, spec, true);
    return dev;
  };
  const session: IoSession = {
    dev: openAsQemuIo(open, how.name ?? file),
    readOnly: how.readOnly,
    reopen() {
      // Close first: the new open must see exactly what the old one left on disk.
      this.dev.close();
      this.dev = open();
    },
  };
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
    try {
      session.dev.close();
    } catch (e) {
      ctx.stderr(`qcow2-harness: ${file}: close failed: ${reason(e)}\n`);
      failed = true;
    }
  }
  return failed ? EXIT_FAILURE : EXIT_OK;
}

/** qemu-io's openfile words an open failure "can't open device X: why", where qemu-img says "Could not open 'X': why". */
function openAsQemuIo(open: () => WritableDevice, name: string): WritableDevice {
  try {
    return open();
  } catch (e) {
    const prefix = `Could not open '${name}': `;
    if (e instanceof CommandFailed && e.message.startsWith(prefix)) {
      throw new CommandFailed(`can't open device ${name}: ${e.message.slice(prefix.length)}`, e.exitCode, e.hint);
    }
    throw e;
  }
}
