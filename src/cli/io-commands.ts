import { performance } from 'node:perf_hooks';
import type { EngineSession } from '../harness/ops/index.js';
import { SECTOR_SIZE } from '../qcow2/format/constants.js';
import type { CliContext } from './context.js';
import type { WritableDevice } from './open.js';
import { Qcow2Device, reason } from './open.js';
import { parseBool, parseCompat, parseOptionList, parseRefcountBits } from './options.js';
import { cvtstr, parseSize } from './sizes.js';

/** The open image a command works on; `reopen` swaps it for a fresh open of the same file. */
export interface IoSession {
  dev: WritableDevice;
  reopen(): void;
}

/**
 * qemu-io's command language (the subset this project needs): each command
 * line is split on whitespace, parsed with qemu-io's options and messages, and
 * run against a device. A command returns false when it failed, which makes
 * the whole `io` invocation exit non-zero, as qemu-io does.
 */

export const IO_COMMANDS_HELP = `Commands (qemu-io syntax; OFF and LEN take k, M, G, T, P, E suffixes):
  read [-v] [-q] [-P pattern [-s off] [-l len]] OFF LEN
        reads; -P verifies every byte equals the pattern byte, -v hex-dumps
  write [-q] [-P pattern | -z [-u]] [-c] OFF LEN
        writes the pattern byte (default 0xcd); -z writes zeroes (-u: and may
        unmap); -c writes compressed clusters (OFF and LEN cluster aligned,
        LEN may end at the end of the image)
  discard [-q] OFF LEN
  flush
Beyond qemu-io, the harness's op text form (qcow2 only), so a trace replays
through this command as it reads:
  snapshot -c|-a|-d NAME      amend KEY=VALUE[,KEY=VALUE]      reopen
  resize [--shrink] SIZE      and any other op of the harness's op table
`;

const DEFAULT_WRITE_PATTERN = 0xcd;

/**
 * A command refused before doing anything. qemu-io prints some of these on
 * stderr (getopt's complaints, argument counts) and most on stdout, sometimes
 * followed by the command's usage line on stdout; we keep its choices.
 */
class CmdError extends Error {
  constructor(
    message: string,
    readonly stream: 'stdout' | 'stderr' = 'stdout',
    readonly usage?: string,
  ) {
    super(message);
  }
}

/** getopt for one qemu-io command: flags and value options, then operands. */
function getopt(name: string, usage: string, args: string[], flags: string, withValue: string): { opts: Map<string, string>; rest: string[] } {
  const opts = new Map<string, string>();
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-') || a.length < 2) break;
    for (let j = 1; j < a.length; j++) {
      const c = a[j]!;
      if (withValue.includes(c)) {
        const v = j + 1 < a.length ? a.slice(j + 1) : args[++i];
        if (v === undefined) throw new CmdError(`${name}: option requires an argument -- '${c}'`, 'stderr', usage);
        opts.set(c, v);
        break;
      }
      if (!flags.includes(c)) throw new CmdError(`${name}: invalid option -- '${c}'`, 'stderr', usage);
      opts.set(c, '');
    }
  }
  return { opts, rest: args.slice(i) };
}

function cvtnum(text: string): number {
  const v = parseSize(text);
  if (v === null) throw new CmdError(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}`);
  return v;
}

/** qemu-io's parse_pattern: strtol base 0 (decimal, 0x hex, 0 octal), one byte. */
function parsePattern(text: string): number {
  let v = NaN;
  if (/^[-+]?0[xX][0-9a-fA-F]+$/.test(text)) v = parseInt(text, 16);
  else if (/^[-+]?0[0-7]*$/.test(text)) v = parseInt(text, 8);
  else if (/^[-+]?[1-9]\d*$/.test(text)) v = parseInt(text, 10);
  if (!(v >= 0 && v <= 255)) throw new CmdError(`${text} is not a valid pattern byte`);
  return v;
}

/** Exactly OFF LEN after the options: fewer is an argument-count error, more prints the usage. */
function expectArgs(name: string, rest: string[], usage: string, optionWords: number): [number, number] {
  if (rest.length + optionWords < 2) throw new CmdError(`bad argument count ${rest.length + optionWords} to ${name}, expected at least 2 arguments`, 'stderr');
  if (rest.length !== 2) throw new CmdError('', 'stdout', usage);
  return [cvtnum(rest[0]!), cvtnum(rest[1]!)];
}

function report(ctx: CliContext, verb: string, offset: number, count: number, seconds: number): void {
  const t = Math.max(seconds, 1e-9);
  ctx.stdout(`${verb} ${count}/${count} bytes at offset ${offset}\n`);
  ctx.stdout(`${cvtstr(count)}, 1 ops; ${seconds.toFixed(2).padStart(5, '0')} sec (${cvtstr(count / t)}/sec and ${(1 / t).toFixed(4)} ops/sec)\n`);
}

/** qemu-io's dump_buffer: 16 bytes a line, hex then printable characters. */
function hexdump(ctx: CliContext, buf: Uint8Array, offset: number): void {
  let out = '';
  for (let i = 0; i < buf.length; i += 16) {
    const row = buf.subarray(i, Math.min(i + 16, buf.length));
    let hex = '';
    let chars = '';
    for (const b of row) {
      hex += b.toString(16).padStart(2, '0') + ' ';
      chars += /[A-Za-z0-9]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : '.';
    }
    out += `${(offset + i).toString(16).padStart(8, '0')}:  ${hex} ${chars}\n`;
  }
  ctx.stdout(out);
}

const READ_USAGE = 'read [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset';
const WRITE_USAGE = 'write [-bcCfnquz] [-P pattern] off len -- writes a number of bytes at a specified offset';
const DISCARD_USAGE = 'discard [-Cq] off len -- discards a number of bytes at a specified offset';

function readCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  const { opts, rest } = getopt('read', READ_USAGE, args, 'vqCab', 'Psl');
  const [offset, count] = expectArgs('read', rest, READ_USAGE, args.length - rest.length);
  const pattern = opts.has('P') ? parsePattern(opts.get('P')!) : undefined;
  const pOff = opts.has('s') ? cvtnum(opts.get('s')!) : 0;
  const pLen = opts.has('l') ? cvtnum(opts.get('l')!) : count - pOff;
  if ((opts.has('s') || opts.has('l')) && pattern === undefined) throw new CmdError('', 'stdout', READ_USAGE);
  if (pOff + pLen > count) throw new CmdError('pattern verification range exceeds end of read data');
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
  if (opts.has('v')) hexdump(ctx, buf, offset);
  if (!opts.has('q')) report(ctx, 'read', offset, count, secs);
  return ok;
}

function writeCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  const { opts, rest } = getopt('write', WRITE_USAGE, args, 'bcCfnpquz', 'Ps');
  const [offset, count] = expectArgs('write', rest, WRITE_USAGE, args.length - rest.length);
  const zero = opts.has('z');
  if (zero && opts.has('P')) throw new CmdError('Only one of -z, -P, and -s can be specified at the same time');
  if (opts.has('u') && !zero) throw new CmdError('-u requires -z to be specified');
  if (opts.has('c')) {
    if (offset % SECTOR_SIZE) throw new CmdError(`${offset} is not a sector-aligned value for 'offset'`);
    if (count % SECTOR_SIZE) throw new CmdError(`${count} is not a sector-aligned value for 'count'`);
  }
  const pattern = opts.has('P') ? parsePattern(opts.get('P')!) : DEFAULT_WRITE_PATTERN;
  const t0 = performance.now();
  try {
    if (zero) dev.writeZeroes(offset, count, { unmap: opts.has('u') });
    // qemu-io takes -z -c together; zeroes need no compression, so -c changes nothing there.
    else if (opts.has('c')) writeCompressed(dev, offset, new Uint8Array(count).fill(pattern));
    else dev.write(offset, patternBuffer(count, pattern));
  } catch (e) {
    ctx.stdout(`write failed: ${reason(e)}\n`);
    return false;
  }
  if (!opts.has('q')) report(ctx, 'wrote', offset, count, (performance.now() - t0) / 1000);
  return true;
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
  for (let c = offset; c < end; c += cs) {
    dev.writeCompressed(c, data.subarray(c - offset, Math.min(c + cs, end) - offset));
  }
}

function discardCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  const { opts, rest } = getopt('discard', DISCARD_USAGE, args, 'Cq', '');
  const [offset, count] = expectArgs('discard', rest, DISCARD_USAGE, args.length - rest.length);
  const t0 = performance.now();
  try {
    dev.discard(offset, count);
  } catch (e) {
    ctx.stdout(`discard failed: ${reason(e)}\n`);
    return false;
  }
  if (!opts.has('q')) report(ctx, 'discard', offset, count, (performance.now() - t0) / 1000);
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

function qcow2Of(dev: WritableDevice, name: string) {
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
};

type OpTable = typeof import('../harness/ops/index.js');

/** The harness's op table, once a command line needs it: plain qemu-io commands start without its modules. */
let opTable: OpTable | undefined;

/** Loads what runIoCommand needs for these lines; call it before running them. */
export async function prepareIoCommands(lines: readonly string[]): Promise<void> {
  if (opTable) return;
  const needsTable = lines.some((l) => {
    const name = l.trim().split(/\s+/, 1)[0];
    return name !== undefined && name !== '' && !Object.hasOwn(COMMANDS, name);
  });
  if (needsTable) opTable = await import('../harness/ops/index.js');
}

/** Runs one qemu-io command line (prepareIoCommands first); false when it failed (the message is already printed). */
export function runIoCommand(session: IoSession, line: string, ctx: CliContext): boolean {
  const words = line.trim().split(/\s+/).filter((w) => w !== '');
  if (words.length === 0) return true;
  const [name, ...args] = words as [string, ...string[]];
  const dev = session.dev;
  const fn = COMMANDS[name];
  if (!fn) {
    if (!opTable) throw new Error(`io: '${name}' needs the op table, which prepareIoCommands did not load`);
    if (opTable.isOpVerb(name)) return runTableOp(opTable, session, line, name, ctx);
    ctx.stderr(`command "${name}" not found\n`);
    return false;
  }
  try {
    return fn(dev, args, ctx);
  } catch (e) {
    if (e instanceof CmdError) {
      if (e.message) (e.stream === 'stderr' ? ctx.stderr : ctx.stdout)(`${e.message}\n`);
      if (e.usage) ctx.stdout(`${e.usage}\n`);
      return false;
    }
    if ((e as { code?: string }).code === 'EINVAL') {
      ctx.stdout(`${name === 'w' ? 'write' : name} failed: Invalid argument\n`);
      return false;
    }
    throw e;
  }
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
