/**
 * qemu-io's global commands (qemu-io.c: open, close, and qemu-io-cmds.c:
 * reopen, sigraise, abort): the ones that act on the session rather than on
 * the open image. qemu-io scripts use them to close and open images between
 * commands, to reopen read-only or read-write, and to kill the process with
 * the image left as a crash leaves it (iotests 039 and friends).
 */
import type { CliContext } from './context.js';
import { CommandFailed } from './errors.js';
import { checkOpened, imageSpec, type ImageSpec } from './image-opts.js';
import { argRange, CmdError, getopt } from './io-util.js';
import { openWritable, Qcow2Device, reason, type WritableDevice } from './open.js';
import type { SecretStore } from '../qcow2/crypto/secrets.js';
import os from 'node:os';

/** How an image is opened: its spec (file, format, secrets) and the flags of the open. */
export interface OpenRequest {
  spec: ImageSpec;
  readOnly: boolean;
  forceShare: boolean;
  /** The cache mode's write cache is off: every write is flushed before it completes (qemu-io's default). */
  writethrough: boolean;
}

/**
 * bdrv_parse_cache_mode, for what it means here: whether the write cache is
 * on. qemu-io's default is writethrough (qemu-io.c), so a write a script
 * made is on disk when the next command runs, even if that one kills the
 * process; none, writeback and unsafe leave writes in the cache until a
 * flush or the close. Direct I/O (none, directsync) changes nothing the
 * image holds. Throws qemu-io's message for any other word.
 */
export function parseCacheMode(mode: string): { writethrough: boolean } {
  if (mode === 'writethrough' || mode === 'directsync') return { writethrough: true };
  if (mode === 'writeback' || mode === 'none' || mode === 'off' || mode === 'unsafe') return { writethrough: false };
  throw new CommandFailed(`Invalid cache option: ${mode}`);
}

/** The session a command line runs in: the open image (none after close), and how it was opened. */
export class IoSession {
  dev: WritableDevice | undefined;
  /** Set by quit: the commands after it are not run (qemu-io's quit_f ends the command loop). */
  quit?: boolean;
  private request: OpenRequest | undefined;

  constructor(
    private readonly ctx: CliContext & { flush?(): void },
    /** The secrets of the command line's --object options, for images opened later. */
    readonly secrets: SecretStore,
  ) {}

  /** Opened read-only: commands that need write permission are refused before they run. */
  get readOnly(): boolean {
    return this.request?.readOnly ?? false;
  }

  /** Writes are flushed as they complete (the open's cache mode). */
  get writethrough(): boolean {
    return this.request?.writethrough ?? true;
  }

  /** openfile(): qemu-io's words for an open that failed ("can't open device X: why"). */
  open(r: OpenRequest): void {
    const { spec } = r;
    const how = { format: spec.format, readOnly: r.readOnly, forceShare: r.forceShare, passphrase: spec.passphrase(), name: spec.shownAs, dataFile: spec.dataFile };
    try {
      const dev = openWritable(this.ctx, spec.file, how);
      if (dev instanceof Qcow2Device) checkOpened(dev.image, spec, true);
      this.dev = dev;
      this.request = r;
    } catch (e) {
      const prefix = `Could not open '${spec.shownAs}': `;
      if (e instanceof CommandFailed && e.message.startsWith(prefix)) {
        throw new CommandFailed(`can't open device ${spec.shownAs}: ${e.message.slice(prefix.length)}`, e.exitCode, e.hint);
      }
      throw e;
    }
  }

  /** Closes the image; a failed close (a flush that failed) is reported and leaves no image open. */
  close(): boolean {
    const dev = this.dev;
    this.dev = undefined;
    if (!dev) return true;
    try {
      dev.close();
      return true;
    } catch (e) {
      this.ctx.stderr(`qcow2-harness: ${this.request?.spec.shownAs ?? 'image'}: close failed: ${reason(e)}\n`);
      return false;
    }
  }

  /** Close, then open the same image again (read-only or read-write as `readOnly` says, else as before). */
  reopen(change: { readOnly?: boolean; writethrough?: boolean } = {}): void {
    const r = this.request;
    if (!r) throw new CmdError("no file open, try 'help open'", 'stderr');
    // Close first: the new open must see exactly what the old one left on disk.
    this.close();
    this.open({ ...r, readOnly: change.readOnly ?? r.readOnly, writethrough: change.writethrough ?? r.writethrough });
  }

  /** Everything printed so far reaches its stream (sigraise_f's fflush before raise). */
  flushOutput(): void {
    this.ctx.flush?.();
  }
}

const OPEN_USAGE = 'open [-rsCnkU] [-t cache] [-d discard] [-o options] [path] -- open the file specified by path';
const REOPEN_USAGE = 'reopen [(-r|-w)] [-c cache] [-o options] -- reopens an image with new options';

/** open [-rsCnkU] [-t cache] [-d discard] [-i aio] [-o options] [path] (qemu-io.c open_f). */
function openCmd(s: IoSession, args: string[]): boolean {
  const { opts, rest } = getopt('open', OPEN_USAGE, args, 'rsCnkU', 'tdio');
  if (args.length === 0) throw new CmdError('bad argument count 0 to open, expected at least 1 arguments', 'stderr');
  if (s.dev) throw new CmdError("qcow2-harness: file open already, try 'help close'", 'stderr');
  // -s puts a temporary overlay on top, -C copies backing data up on read: both change what the image holds.
  for (const [flag, what] of [['s', 'snapshot mode'], ['C', 'copy-on-read']] as const) {
    if (opts.has(flag)) throw new CmdError(`qcow2-harness: open -${flag} (${what}) is not supported by this engine`, 'stderr');
  }
  if (rest.length > 1) throw new CmdError('', 'stdout', OPEN_USAGE);
  const options = opts.get('o');
  const path = rest[0];
  if (options === undefined && path === undefined) throw new CmdError('', 'stdout', OPEN_USAGE);
  // With -o, the options and the path are one option string (the path is file.filename), as --image-opts.
  const operand = options === undefined ? path! : [options, ...(path === undefined ? [] : [`file.filename=${path}`])].join(',');
  const parsed = { values: new Map<string, string[]>(), operands: [] };
  const spec = imageSpec(parsed, operand, 'io', s.secrets, options !== undefined);
  if (options !== undefined && path !== undefined) spec.shownAs = path;
  const cache = cacheOption(opts.get('t'));
  s.open({ spec, readOnly: opts.has('r'), forceShare: opts.has('U'), writethrough: cache?.writethrough ?? true });
  return true;
}

/** A command's cache option: qemu-io's message, as a failed command, for a bad one. */
function cacheOption(mode: string | undefined): { writethrough: boolean } | undefined {
  if (mode === undefined) return undefined;
  try {
    return parseCacheMode(mode);
  } catch (e) {
    throw new CmdError(`qcow2-harness: ${(e as Error).message}`, 'stderr');
  }
}

function closeCmd(s: IoSession, args: string[]): boolean {
  argRange('close', args.length, 0, 0);
  if (!s.dev) throw new CmdError("no file open, try 'help open'", 'stderr');
  return s.close();
}

/** reopen [(-r|-w)] [-c cache] [-o options] (qemu-io-cmds.c reopen_f): -o and cache modes change nothing this engine reads. */
function reopenCmd(s: IoSession, args: string[]): boolean {
  const { opts, rest } = getopt('reopen', REOPEN_USAGE, args, 'rw', 'co');
  if (rest.length) throw new CmdError('', 'stdout', REOPEN_USAGE);
  if (opts.has('r') && opts.has('w')) throw new CmdError('Only one -r/-w option may be given', 'stderr');
  if (opts.has('o')) throw new CmdError(`qcow2-harness: reopen -o (runtime options) is not supported by this engine`, 'stderr');
  if (!s.dev) throw new CmdError("no file open, try 'help open'", 'stderr');
  const cache = cacheOption(opts.get('c'));
  s.reopen({ readOnly: opts.has('r') ? true : opts.has('w') ? false : undefined, writethrough: cache?.writethrough });
  return true;
}

/** sigraise SIGNUM: the process dies of the signal with the image as it is on disk now (no close, no flush). */
function sigraiseCmd(s: IoSession, args: string[]): boolean {
  argRange('sigraise', args.length, 1, 1);
  const n = Number(args[0]);
  const name = Object.entries(os.constants.signals).find(([, v]) => v === n)?.[0];
  if (!Number.isInteger(n) || n <= 0 || name === undefined) throw new CmdError(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${args[0]}`);
  s.flushOutput();
  process.kill(process.pid, name as NodeJS.Signals);
  return true;
}

/** abort: the process dies of SIGABRT (qemu-io's abort(3)); nothing is closed. */
function abortCmd(s: IoSession, args: string[]): boolean {
  argRange('abort', args.length, 0, 0);
  // Nor is standard output flushed: what qemu-io's stdio still held is lost with it.
  // Not process.abort(): that also writes a core file and Node's report of it.
  process.kill(process.pid, 'SIGABRT');
  return true;
}

/** Commands qemu-io runs whether or not an image is open (CMD_FLAG_GLOBAL), or that act on the session. */
export const SESSION_COMMANDS: Record<string, (s: IoSession, args: string[]) => boolean> = {
  open: openCmd,
  o: openCmd,
  close: closeCmd,
  c: closeCmd,
  reopen: reopenCmd,
  sigraise: sigraiseCmd,
  abort: abortCmd,
};
