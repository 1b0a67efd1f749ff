/**
 * qemu-io's vector, asynchronous and query commands (qemu-io-cmds.c, 7.2):
 * readv, writev, aio_read, aio_write, aio_flush, length, alloc, map.
 *
 * Our engine is synchronous, so an aio request completes before the next
 * command runs and its completion lines come at once; qemu-io prints them
 * whenever the request completes (later commands' lines may come first), so
 * only the order of those lines can differ, never the data or the verdict.
 * A submitted aio request never fails its command (the completion callback
 * prints the failure and qemu-io still exits 0), as in qemu-io.
 */
import { performance } from 'node:perf_hooks';
import type { CliContext } from './context.js';
import { argCount, CmdError, cvtnum, DEFAULT_WRITE_PATTERN, getopt, hexdump, inDevice, parsePattern, report, REQUEST_MAX_BYTES } from './io-util.js';
import { Qcow2Device, reason, type WritableDevice } from './open.js';
import { cvtstr } from './sizes.js';

/** getopt's flags and options-with-a-value of writev and aio_write (their -f asks for FUA). */
export const WRITEV_OPTIONS = ['Cfq', 'P'] as const;
export const AIO_WRITE_OPTIONS = ['Cfiquz', 'P'] as const;

const READV_USAGE = 'readv [-Cqv] [-P pattern] off len [len..] -- reads a number of bytes at a specified offset';
const WRITEV_USAGE = 'writev [-Cfq] [-P pattern] off len [len..] -- writes a number of bytes at a specified offset';
const AIO_READ_USAGE = 'aio_read [-Ciqv] [-P pattern] off len [len..] -- asynchronously reads a number of bytes';
const AIO_WRITE_USAGE = 'aio_write [-Cfiquz] [-P pattern] off len [len..] -- asynchronously writes a number of bytes';

const SECTOR = 512;

/** create_iovec: the lengths of a vector request, and their total, with its limits. */
function vectorLength(words: string[]): number {
  let total = 0;
  for (const w of words) {
    const len = cvtnum(w);
    if (len > REQUEST_MAX_BYTES) throw new CmdError(`Argument '${w}' exceeds maximum size ${REQUEST_MAX_BYTES}`);
    if (total > REQUEST_MAX_BYTES - len) throw new CmdError(`The total number of bytes exceed the maximum size ${REQUEST_MAX_BYTES}`);
    total += len;
  }
  return total;
}

/** The read side of readv and aio_read (readv_f, aio_read_done): verify, then dump and report unless -q. */
function vectorRead(dev: WritableDevice, opts: Map<string, string>, offset: number, count: number, ctx: CliContext, failVerb: string): boolean {
  const pattern = opts.has('P') ? parsePattern(opts.get('P')!) : undefined;
  if (!inDevice(dev, offset, count)) {
    ctx.stdout(`${failVerb} failed: Input/output error\n`);
    return false;
  }
  const t0 = performance.now();
  let buf: Uint8Array;
  try {
    buf = dev.read(offset, count);
  } catch (e) {
    ctx.stdout(`${failVerb} failed: ${reason(e)}\n`);
    return false;
  }
  const secs = (performance.now() - t0) / 1000;
  let ok = true;
  if (pattern !== undefined && buf.some((b) => b !== pattern)) {
    ctx.stdout(`Pattern verification failed at offset ${offset}, ${count} bytes\n`);
    ok = false;
  }
  if (opts.has('q')) return ok;
  if (opts.has('v')) hexdump(ctx, buf, offset);
  report(ctx, 'read', offset, count, secs, opts.has('C'));
  return ok;
}

function vectorWrite(dev: WritableDevice, opts: Map<string, string>, offset: number, count: number, ctx: CliContext, failVerb: string): boolean {
  if (!inDevice(dev, offset, count)) {
    ctx.stdout(`${failVerb} failed: Input/output error\n`);
    return false;
  }
  const t0 = performance.now();
  try {
    if (opts.has('z')) dev.writeZeroes(offset, count, { unmap: opts.has('u') });
    else dev.write(offset, new Uint8Array(count).fill(opts.has('P') ? parsePattern(opts.get('P')!) : DEFAULT_WRITE_PATTERN));
  } catch (e) {
    ctx.stdout(`${failVerb} failed: ${reason(e)}\n`);
    return false;
  }
  if (!opts.has('q')) report(ctx, 'wrote', offset, count, (performance.now() - t0) / 1000, opts.has('C'));
  return true;
}

/** OFF LEN [LEN...] after the options; fewer than two operands prints the usage (optind > argc - 2). */
function vectorOperands(rest: string[], usage: string): { offset: number; lengths: string[] } {
  if (rest.length < 2) throw new CmdError('', 'stdout', usage);
  return { offset: cvtnum(rest[0]!), lengths: rest.slice(1) };
}

function readvCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  argCount('readv', args.length, 2);
  const { opts, rest } = getopt('readv', READV_USAGE, args, 'Cqv', 'P');
  const { offset, lengths } = vectorOperands(rest, READV_USAGE);
  return vectorRead(dev, opts, offset, vectorLength(lengths), ctx, 'readv');
}

function writevCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  argCount('writev', args.length, 2);
  const { opts, rest } = getopt('writev', WRITEV_USAGE, args, ...WRITEV_OPTIONS);
  const { offset, lengths } = vectorOperands(rest, WRITEV_USAGE);
  return vectorWrite(dev, opts, offset, vectorLength(lengths), ctx, 'writev');
}

function aioReadCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  argCount('aio_read', args.length, 2);
  const { opts, rest } = getopt('aio_read', AIO_READ_USAGE, args, 'Ciqv', 'P');
  const { offset, lengths } = vectorOperands(rest, AIO_READ_USAGE);
  const count = vectorLength(lengths);
  // -i: account the request as invalid and submit nothing.
  if (opts.has('i')) return true;
  vectorRead(dev, opts, offset, count, ctx, 'readv');
  return true;
}

function aioWriteCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  argCount('aio_write', args.length, 2);
  const { opts, rest } = getopt('aio_write', AIO_WRITE_USAGE, args, ...AIO_WRITE_OPTIONS);
  if (rest.length < 2) throw new CmdError('', 'stdout', AIO_WRITE_USAGE);
  if (opts.has('z') && rest.length !== 2) throw new CmdError('-z supports only a single length parameter');
  if (opts.has('u') && !opts.has('z')) throw new CmdError('-u requires -z to be specified');
  // qemu-io 7.2 takes -z -P together (the zeroes win), unlike write.
  const offset = cvtnum(rest[0]!);
  const count = opts.has('z') ? cvtnum(rest[1]!) : vectorLength(rest.slice(1));
  if (opts.has('i')) return true;
  vectorWrite(dev, opts, offset, count, ctx, 'aio_write');
  return true;
}

/** The command table's argmax check for commands that take a fixed count. */
function argRange(name: string, given: number, min: number, max: number): void {
  if (given >= min && given <= max) return;
  const expected = min === max ? `${min} arguments` : `between ${min} and ${max} arguments`;
  throw new CmdError(`bad argument count ${given} to ${name}, expected ${expected}`, 'stderr');
}

function aioFlushCmd(dev: WritableDevice, args: string[]): boolean {
  argRange('aio_flush', args.length, 0, 0);
  return true;
}

function lengthCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  argRange('length', args.length, 0, 0);
  ctx.stdout(`${cvtstr(dev.virtualSize)}\n`);
  return true;
}

/**
 * bdrv_is_allocated: whether this layer (not its backing file) decides the
 * range, and for how long that holds. A raw file decides every byte.
 */
function isAllocated(dev: WritableDevice, offset: number, bytes: number): { allocated: boolean; length: number } {
  if (bytes === 0 || offset >= dev.virtualSize) return { allocated: false, length: 0 };
  const n = Math.min(bytes, dev.virtualSize - offset);
  if (!(dev instanceof Qcow2Device)) return { allocated: true, length: n };
  const st = dev.image.blockStatus(offset, n);
  return { allocated: st.allocated, length: st.length };
}

function allocCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  argRange('alloc', args.length, 1, 2);
  // qemu-io 7.2's alloc_f checks no alignment: `alloc 511` answers for 511..1023.
  const start = cvtnum(args[0]!);
  let count = args.length === 2 ? cvtnum(args[1]!) : SECTOR;
  let offset = start;
  let remaining = count;
  let sum = 0;
  while (remaining) {
    const st = isAllocated(dev, offset, remaining);
    offset += st.length;
    remaining -= st.length;
    if (st.allocated) sum += st.length;
    // Past the end nothing more is known: alloc_f shortens the count to what it saw.
    if (st.length === 0) {
      count -= remaining;
      remaining = 0;
    }
  }
  ctx.stdout(`${sum}/${count} bytes allocated at offset ${cvtstr(start)}\n`);
  return true;
}

/** map_f: runs of allocated and unallocated bytes of this layer, merged as map_is_allocated merges them. */
function mapCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  argRange('map', args.length, 0, 0);
  let offset = 0;
  let bytes = dev.virtualSize;
  let out = '';
  while (bytes > 0) {
    const first = isAllocated(dev, offset, bytes);
    let num = first.length;
    while (num < bytes) {
      const next = isAllocated(dev, offset + num, bytes - num);
      if (next.allocated !== first.allocated || next.length === 0) break;
      num += next.length;
    }
    const hex = (n: number) => `0x${n.toString(16)}`;
    out += `${cvtstr(num)} (${hex(num)}) bytes ${first.allocated ? '    allocated' : 'not allocated'} at offset ${cvtstr(offset)} (${hex(offset)})\n`;
    offset += num;
    bytes -= num;
  }
  ctx.stdout(out);
  return true;
}

type IoCommand = (dev: WritableDevice, args: string[], ctx: CliContext) => boolean;

export const VECTOR_COMMANDS: Record<string, IoCommand> = {
  readv: readvCmd,
  writev: writevCmd,
  aio_read: aioReadCmd,
  aio_write: aioWriteCmd,
  aio_flush: aioFlushCmd,
  length: lengthCmd,
  alloc: allocCmd,
  map: mapCmd,
};
