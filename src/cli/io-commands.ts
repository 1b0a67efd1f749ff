import * as fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { EngineSession } from '../harness/ops/index.js';
import { UnsupportedFeatureError } from '../qcow2/errors.js';
import { SECTOR_SIZE } from '../qcow2/format/constants.js';
import type { CliContext } from './context.js';
import { CommandFailed } from './errors.js';
import type { WritableDevice } from './open.js';
import { Qcow2Device, reason, resolvePath } from './open.js';
import { parseBool, parseCompat, parseOptionList, parseRefcountBits } from './options.js';
import { argCount, cvtnum, CmdError, DEFAULT_WRITE_PATTERN, expectArgs, getopt, hexdump, inDevice, parsePattern, report, REQUEST_MAX_BYTES } from './io-util.js';
import { AIO_WRITE_OPTIONS, VECTOR_COMMANDS, WRITEV_OPTIONS } from './io-vector.js';
import { FILE_COMMANDS } from './io-file-commands.js';
import { SESSION_COMMANDS, type IoSession } from './io-session.js';

export { IoSession } from './io-session.js';

/**
 * qemu-io's command language (the subset this project needs): each command
 * line is split on whitespace, parsed with qemu-io's options and messages, and
 * run against a device. A command returns false when it failed, which makes
 * the whole `io` invocation exit non-zero, as qemu-io does.
 */

export const IO_COMMANDS_HELP = `Commands (qemu-io syntax; OFF and LEN take k, M, G, T, P, E suffixes):
  read [-v] [-q] [-P pattern [-s off] [-l len]] OFF LEN
        reads; -P verifies every byte equals the pattern byte, -v hex-dumps
  write [-q] [-P pattern | -s source_file | -z [-u]] [-c] OFF LEN
        writes the pattern byte (default 0xcd), or the file's bytes (repeated
        to fill LEN); -z writes zeroes (-u: and may unmap); -c writes compressed
        clusters (OFF and LEN cluster aligned, LEN may end at the end of the image)
  discard [-q] OFF LEN
  flush
  readv, writev, aio_read, aio_write, aio_flush, alloc, map, length
  info        format, cluster size, VM state offset and format-specific information
  truncate [-m off] SIZE      the new virtual size (shrinking too)
  sleep MS    quit
  open [-rU] [-t cache] [-o options] [path]   close   reopen [-r|-w] [-c cache]
  sigraise SIGNUM   abort     the process dies, the image left as it is on disk
Beyond qemu-io, the harness's op text form (qcow2 only), so a trace replays
through this command as it reads:
  snapshot -c|-a|-d NAME      amend KEY=VALUE[,KEY=VALUE]
  resize [--shrink] SIZE      and any other op of the harness's op table
`;

const READ_USAGE = 'read [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset';
const WRITE_OPTIONS = ['bcCfnpquz', 'Ps'] as const;
const WRITE_USAGE = 'write [-bcCfnquz] [-P pattern | -s source_file] off len -- writes a number of bytes at a specified offset';
const DISCARD_USAGE = 'discard [-Cq] off len -- discards a number of bytes at a specified offset';

function readCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  const { opts, rest } = getopt('read', READ_USAGE, args, 'vqCabp', 'Psl');
  const [offset, count] = expectArgs('read', rest, READ_USAGE, args.length - rest.length);
  if (count > REQUEST_MAX_BYTES) throw new CmdError(`length cannot exceed ${REQUEST_MAX_BYTES}, given ${rest[1]}`);
  const pattern = opts.has('P') ? parsePattern(opts.get('P')!) : undefined;
  const pOff = opts.has('s') ? cvtnum(opts.get('s')!) : 0;
  const pLen = opts.has('l') ? cvtnum(opts.get('l')!) : count - pOff;
  if ((opts.has('s') || opts.has('l')) && pattern === undefined) throw new CmdError('', 'stdout', READ_USAGE);
  if (pLen < 0 || pOff + pLen > count) throw new CmdError('pattern verification range exceeds end of read data');
  if (!inDevice(dev, offset, count)) return failed(ctx, 'read');
  const t0 = performance.now();
  let buf: Uint8Array;
  try {
    buf = dev.read(offset, count);
  } catch (e) {
    ctx.stdout(`read failed: ${reason(e)}\n`);
    return false;
  }
  const secs = (performance.now() - t0) / 1000;
  let ok = true;
  if (pattern !== undefined) {
    for (let i = pOff; i < pOff + pLen; i++) {
      if (buf[i] !== pattern) {
        ctx.stdout(`Pattern verification failed at offset ${offset + pOff}, ${pLen} bytes\n`);
        ok = false;
        break;
      }
    }
  }
  // read_f: -q skips both the dump and the report.
  if (opts.has('q')) return ok;
  if (opts.has('v')) hexdump(ctx, buf, offset);
  report(ctx, 'read', offset, count, secs, opts.has('C'));
  return ok;
}

/** A request the block layer refuses (outside the device): EIO, as blk_check_byte_request. */
function failed(ctx: CliContext, verb: string): false {
  ctx.stdout(`${verb} failed: Input/output error\n`);
  return false;
}

function writeCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  const { opts, rest } = getopt('write', WRITE_USAGE, args, ...WRITE_OPTIONS);
  argCount('write', args.length, 2);
  if (rest.length !== 2) throw new CmdError('', 'stdout', WRITE_USAGE);
  const zero = opts.has('z');
  // write_f's checks, in its order.
  if (opts.has('b') && zero) throw new CmdError('-b and -z cannot be specified at the same time');
  if (opts.has('f') && opts.has('b')) throw new CmdError('-f and -b cannot be specified at the same time');
  if (opts.has('u') && !zero) throw new CmdError('-u requires -z to be specified');
  if (opts.has('n') && !zero) throw new CmdError('-n requires -z to be specified');
  if (Number(zero) + Number(opts.has('P')) + Number(opts.has('s')) > 1) throw new CmdError('Only one of -z, -P, and -s can be specified at the same time');
  const offset = cvtnum(rest[0]!);
  const count = cvtnum(rest[1]!);
  if (count > REQUEST_MAX_BYTES && !opts.has('n')) throw new CmdError(`length cannot exceed ${REQUEST_MAX_BYTES} without -n, given ${rest[1]}`);
  if (opts.has('c') || opts.has('b')) {
    if (offset % SECTOR_SIZE) throw new CmdError(`${offset} is not a sector-aligned value for 'offset'`);
    if (count % SECTOR_SIZE) throw new CmdError(`${count} is not a sector-aligned value for 'count'`);
  }
  const pattern = opts.has('P') ? parsePattern(opts.get('P')!) : DEFAULT_WRITE_PATTERN;
  // -s: the data comes from a file, before the request is made (qemu_io_alloc_from_file).
  const fromFile = opts.has('s') ? patternFromFile(resolvePath(ctx, opts.get('s')!), opts.get('s')!, count, ctx) : undefined;
  if (fromFile === null) return false;
  if (!inDevice(dev, offset, count)) return failed(ctx, 'write');
  const t0 = performance.now();
  try {
    if (zero) dev.writeZeroes(offset, count, { unmap: opts.has('u') });
    // qemu-io takes -z -c together; zeroes need no compression, so -c changes nothing there.
    else if (opts.has('c')) writeCompressed(dev, offset, fromFile ?? new Uint8Array(count).fill(pattern));
    else dev.write(offset, fromFile ?? patternBuffer(count, pattern));
  } catch (e) {
    ctx.stdout(`write failed: ${reason(e)}\n`);
    return false;
  }
  if (!opts.has('q')) report(ctx, 'wrote', offset, count, (performance.now() - t0) / 1000, opts.has('C'));
  return true;
}

/**
 * qemu_io_alloc_from_file: up to `count` bytes of the file, repeated to fill
 * the request when the file is shorter; null (the message printed, on stderr
 * as perror prints it) when it cannot be read or is empty. Reads no more than
 * `count` bytes, so a device or a FIFO as the source does not hang the command.
 */
function patternFromFile(abs: string, shown: string, count: number, ctx: CliContext): Uint8Array | null {
  const out = new Uint8Array(count);
  let got = 0;
  try {
    const fd = fs.openSync(abs, 'r');
    try {
      for (let n = -1; got < count && n !== 0; got += n) n = fs.readSync(fd, out, got, count - got, null);
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    ctx.stderr(`${shown}: ${reason(e)}\n`);
    return null;
  }
  if (got === 0 && count > 0) {
    ctx.stderr(`${shown}: file is empty\n`);
    return null;
  }
  for (let at = got; at < count; at += got) out.copyWithin(at, 0, Math.min(got, count - at));
  return out;
}

/**
 * The data of a pattern write. One buffer, reused from command to command:
 * devices copy what they are given before write() returns, and a run of
 * thousands of writes then allocates (and collects) one buffer, not thousands.
 */
let patternBuf: Uint8Array | undefined;

function patternBuffer(count: number, pattern: number): Uint8Array {
  if (patternBuf?.length !== count) patternBuf = new Uint8Array(count);
  return patternBuf.fill(pattern);
}

/** Splits a compressed write into the whole clusters the engine takes, refusing misaligned ones as QEMU does. */
function writeCompressed(dev: WritableDevice, offset: number, data: Uint8Array): void {
  if (!dev.writeCompressed) throw Object.assign(new Error('Operation not supported'), { code: 'ENOTSUP' });
  const cs = dev.clusterSize;
  const end = offset + data.length;
  if (offset % cs !== 0 || (end % cs !== 0 && end !== dev.virtualSize)) {
    throw Object.assign(new Error('Invalid argument'), { code: 'EINVAL' });
  }
  try {
    for (let c = offset; c < end; c += cs) {
      dev.writeCompressed(c, data.subarray(c - offset, Math.min(c + cs, end) - offset));
    }
  } catch (e) {
    // QEMU's driver answers -ENOTSUP (an external data file), which qemu-io prints as strerror alone.
    if (e instanceof UnsupportedFeatureError) throw Object.assign(new Error('Operation not supported'), { code: 'ENOTSUP' });
    throw e;
  }
}

function discardCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  const { opts, rest } = getopt('discard', DISCARD_USAGE, args, 'Cq', '');
  const [offset, count] = expectArgs('discard', rest, DISCARD_USAGE, args.length - rest.length);
  if (count > REQUEST_MAX_BYTES) throw new CmdError(`length cannot exceed ${REQUEST_MAX_BYTES}, given ${rest[1]}`);
  if (!inDevice(dev, offset, count)) return failed(ctx, 'discard');
  const t0 = performance.now();
  try {
    dev.discard(offset, count);
  } catch (e) {
    ctx.stdout(`discard failed: ${reason(e)}\n`);
    return false;
  }
  if (!opts.has('q')) report(ctx, 'discard', offset, count, (performance.now() - t0) / 1000, opts.has('C'));
  return true;
}

function flushCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  if (args.length) throw new CmdError(`bad argument count ${args.length} to flush, expected 0 arguments`, 'stderr');
  try {
    dev.flush();
  } catch (e) {
    ctx.stdout(`flush failed: ${reason(e)}\n`);
    return false;
  }
  return true;
}

function qcow2Of(dev: WritableDevice | undefined, name: string) {
  if (!(dev instanceof Qcow2Device)) throw new CmdError(`${name} needs a qcow2 image`);
  return dev.image;
}

/** Runs an engine call; a refusal prints "<name> failed: why" as qemu-io words failures. */
function attempt(name: string, ctx: CliContext, f: () => void): boolean {
  try {
    f();
    return true;
  } catch (e) {
    ctx.stdout(`${name} failed: ${reason(e)}\n`);
    return false;
  }
}

function snapshotCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  const img = qcow2Of(dev, 'snapshot');
  const action = ({ '-c': 'create', '-a': 'apply', '-d': 'delete' } as const)[args[0] as '-c' | '-a' | '-d'];
  if (!action || args.length !== 2) throw new CmdError('usage: snapshot -c|-a|-d NAME', 'stderr');
  const name = args[1]!;
  return attempt('snapshot', ctx, () => {
    if (action === 'create') img.createSnapshot(name);
    else if (action === 'apply') img.applySnapshot(name);
    else img.deleteSnapshot(name);
  });
}

function amendCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  const img = qcow2Of(dev, 'amend');
  if (args.length !== 1) throw new CmdError('usage: amend KEY=VALUE[,KEY=VALUE]', 'stderr');
  const o: { refcountBits?: number; compat?: '0.10' | '1.1'; lazyRefcounts?: boolean } = {};
  try {
    for (const [k, v] of parseOptionList(args)) {
      if (k === 'refcount_bits') o.refcountBits = parseRefcountBits(v, 'amend');
      else if (k === 'compat') o.compat = parseCompat(v, 'amend');
      else if (k === 'lazy_refcounts') o.lazyRefcounts = parseBool(k, v, 'amend');
      else throw new Error(`Invalid parameter '${k}'`);
    }
  } catch (e) {
    throw new CmdError((e as Error).message);
  }
  return attempt('amend', ctx, () => img.amend(o));
}

function resizeCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  const img = qcow2Of(dev, 'resize');
  const shrink = args[0] === '--shrink';
  const rest = shrink ? args.slice(1) : args;
  if (rest.length !== 1) throw new CmdError('usage: resize [--shrink] SIZE', 'stderr');
  const size = cvtnum(rest[0]!);
  return attempt('resize', ctx, () => {
    if (size < img.virtualSize && !shrink) throw new Error('Use the --shrink option to perform a shrink operation.');
    img.resize(size, { shrink });
  });
}

type IoCommand = (dev: WritableDevice, args: string[], ctx: CliContext) => boolean;

const COMMANDS: Record<string, IoCommand> = {
  snapshot: snapshotCmd,
  amend: amendCmd,
  resize: resizeCmd,
  read: readCmd,
  r: readCmd,
  write: writeCmd,
  w: writeCmd,
  discard: discardCmd,
  d: discardCmd,
  flush: flushCmd,
  f: flushCmd,
  ...VECTOR_COMMANDS,
  ...FILE_COMMANDS,
};

/** The commands whose requests carry FUA when the write cache is off (blk_co_do_pwritev_part); discard and truncate do not. */
const WRITETHROUGH_FLUSHED = new Set(['write', 'w', 'writev', 'aio_write']);

/** -f: the write is a FUA request, durable before it completes whatever the cache mode (emulated by a flush). */
function fua(name: string, args: string[]): boolean {
  const options: readonly [string, string] = name === 'writev' ? WRITEV_OPTIONS : name === 'aio_write' ? AIO_WRITE_OPTIONS : WRITE_OPTIONS;
  return getopt(name, '', args, options[0], options[1]).opts.has('f');
}

/** The commands whose qemu-io table entry asks for BLK_PERM_WRITE. */
const WRITE_PERMISSION = new Set(['write', 'w', 'writev', 'aio_write', 'discard', 'd', 'truncate', 't']);

type OpTable = typeof import('../harness/ops/index.js');

/** The harness's op table, once a command line needs it: plain qemu-io commands start without its modules. */
let opTable: OpTable | undefined;

/** Loads what runIoCommand needs for these lines; call it before running them. */
export async function prepareIoCommands(lines: readonly string[]): Promise<void> {
  if (opTable) return;
  const needsTable = lines.some((l) => {
    const name = l.trim().split(/\s+/, 1)[0];
    return name !== undefined && name !== '' && name !== 'quit' && name !== 'q' && !Object.hasOwn(COMMANDS, name) && !Object.hasOwn(SESSION_COMMANDS, name);
  });
  if (needsTable) opTable = await import('../harness/ops/index.js');
}

/** Runs one qemu-io command line (prepareIoCommands first); false when it failed (the message is already printed). */
export function runIoCommand(session: IoSession, line: string, ctx: CliContext): boolean {
  const words = line.trim().split(/\s+/).filter((w) => w !== '');
  if (words.length === 0) return true;
  const [name, ...args] = words as [string, ...string[]];
  if (name === 'quit' || name === 'q') {
    session.quit = true;
    return true;
  }
  try {
    const global = SESSION_COMMANDS[name];
    if (global) return global(session, args);
  } catch (e) {
    if (e instanceof CmdError) return reportCmdError(e, ctx);
    // An open that failed is one failed command: the script goes on (openfile's error_report).
    if (e instanceof CommandFailed) {
      ctx.stderr(`qcow2-harness: ${e.message}\n`);
      return false;
    }
    throw e;
  }
  const fn = COMMANDS[name];
  if (!fn && !opTable?.isOpVerb(name)) {
    if (!opTable) throw new Error(`io: '${name}' needs the op table, which prepareIoCommands did not load`);
    ctx.stderr(`command "${name}" not found\n`);
    return false;
  }
  // command(): a command that is not global needs an open image.
  const dev = session.dev;
  if (!dev) {
    ctx.stderr("no file open, try 'help open'\n");
    return false;
  }
  if (!fn) return runTableOp(opTable!, session, line, name, ctx);
  if (session.readOnly && WRITE_PERMISSION.has(name)) {
    // command()'s blk_set_perm fails first, as error_report on stderr.
    ctx.stderr('qcow2-harness: Block node is read-only\n');
    return false;
  }
  try {
    if (!fn(dev, args, ctx)) return false;
    // Writethrough: the block layer flushes a write before it completes (BDRV_REQ_FUA, emulated by a flush).
    if (WRITETHROUGH_FLUSHED.has(name) && (session.writethrough || fua(name, args))) return attempt(name === 'w' ? 'write' : name, ctx, () => dev.flush());
    return true;
  } catch (e) {
    if (e instanceof CmdError) return reportCmdError(e, ctx);
    if ((e as { code?: string }).code === 'EINVAL') {
      ctx.stdout(`${name === 'w' ? 'write' : name} failed: Invalid argument\n`);
      return false;
    }
    throw e;
  }
}

function reportCmdError(e: CmdError, ctx: CliContext): false {
  if (e.message) (e.stream === 'stderr' ? ctx.stderr : ctx.stdout)(`${e.message}\n`);
  if (e.usage) ctx.stdout(`${e.usage}\n`);
  return false;
}

/**
 * An op of the harness's op table that has no qemu-io syntax here (reopen,
 * fault, ...): parsed in the op text form and run through the table's engine
 * call, so a new op kind needs no new command in this file.
 */
function runTableOp(table: OpTable, session: IoSession, line: string, name: string, ctx: CliContext): boolean {
  let op;
  try {
    op = table.parseOp(line);
  } catch (e) {
    if (!(e instanceof table.OpParseError)) throw e;
    ctx.stderr(`${e.message}\n`);
    return false;
  }
  const spec = table.specOf(op);
  const engine = spec.engine;
  if (!engine) {
    ctx.stdout(`${name} failed: not something an engine runs\n`);
    return false;
  }
  const range = spec.dataRange?.(op);
  const data = range ? new Uint8Array(range[1]).fill(DEFAULT_WRITE_PATTERN) : undefined;
  const s: EngineSession = {
    get image() {
      return qcow2Of(session.dev, name);
    },
    reopen: () => session.reopen(),
  };
  return attempt(name, ctx, () => engine(s, op, data));
}
