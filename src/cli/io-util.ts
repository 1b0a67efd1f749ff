/**
 * The pieces every qemu-io command shares (qemu-io-cmds.c): option parsing,
 * number and pattern parsing, the block layer's request checks, the report
 * lines and the hex dump, each with qemu-io 7.2's wording.
 */
import type { CliContext } from './context.js';
import type { WritableDevice } from './open.js';
import { cvtstr, parseSize } from './sizes.js';

export const DEFAULT_WRITE_PATTERN = 0xcd;

/** BDRV_REQUEST_MAX_BYTES: the longest request qemu-io passes to the block layer (INT_MAX rounded down to sectors). */
export const REQUEST_MAX_BYTES = 0x7ffffe00;

/**
 * A command refused before doing anything. qemu-io prints some of these on
 * stderr (getopt's complaints, argument counts) and most on stdout, sometimes
 * followed by the command's usage line on stdout; we keep its choices.
 */
export class CmdError extends Error {
  constructor(
    message: string,
    readonly stream: 'stdout' | 'stderr' = 'stdout',
    readonly usage?: string,
  ) {
    super(message);
  }
}

/**
 * glibc getopt for one qemu-io command: flags and value options anywhere on
 * the line (getopt permutes, so `read 0 512 -v` dumps and `read 0 -5` is an
 * invalid option '5'), operands in order, `--` ends the options.
 */
export function getopt(name: string, usage: string, args: string[], flags: string, withValue: string): { opts: Map<string, string>; rest: string[] } {
  const opts = new Map<string, string>();
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      rest.push(...args.slice(i + 1));
      break;
    }
    if (!a.startsWith('-') || a.length < 2) {
      rest.push(a);
      continue;
    }
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
  return { opts, rest };
}

export function cvtnum(text: string): number {
  const v = parseSize(text);
  if (v === null) throw new CmdError(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}`);
  return v;
}

/** qemu-io's parse_pattern: strtol base 0 (decimal, 0x hex, 0 octal), one byte. */
export function parsePattern(text: string): number {
  let v = NaN;
  if (/^[-+]?0[xX][0-9a-fA-F]+$/.test(text)) v = parseInt(text, 16);
  else if (/^[-+]?0[0-7]*$/.test(text)) v = parseInt(text, 8);
  else if (/^[-+]?[1-9]\d*$/.test(text)) v = parseInt(text, 10);
  if (!(v >= 0 && v <= 255)) throw new CmdError(`${text} is not a valid pattern byte`);
  return v;
}

/** The optind check qemu-io's command table makes: fewer operands than the minimum is an argument-count error on stderr. */
export function argCount(name: string, given: number, min: number): void {
  if (given < min) throw new CmdError(`bad argument count ${given} to ${name}, expected at least ${min} arguments`, 'stderr');
}

/**
 * The command table's check of argmin and argmax (qemu-io-cmds.c command()),
 * worded as it words each kind of range.
 */
export function argRange(name: string, given: number, min: number, max: number): void {
  if (given >= min && given <= max) return;
  const expected = min === max ? `${min}` : `between ${min} and ${max}`;
  throw new CmdError(`bad argument count ${given} to ${name}, expected ${expected} arguments`, 'stderr');
}

/** Exactly OFF LEN after the options: fewer is an argument-count error, more prints the usage. */
export function expectArgs(name: string, rest: string[], usage: string, optionWords: number): [number, number] {
  argCount(name, rest.length + optionWords, 2);
  if (rest.length !== 2) throw new CmdError('', 'stdout', usage);
  return [cvtnum(rest[0]!), cvtnum(rest[1]!)];
}

/**
 * blk_check_byte_request: a request outside the device fails with EIO in the
 * block layer, before any driver sees it, so every command words it
 * "<verb> failed: Input/output error".
 */
export function inDevice(dev: WritableDevice, offset: number, count: number): boolean {
  return offset >= 0 && count >= 0 && offset <= dev.virtualSize - count;
}

/** qemu's timestr: "SS.ss sec" under a second (or h:mm:ss.ss with -C, or once a second has passed). */
function timestr(seconds: number, fixed: boolean): string {
  const whole = Math.floor(seconds);
  if (!fixed && whole === 0) return `${seconds.toFixed(2).padStart(5, '0')} sec`;
  const h = Math.floor(whole / 3600);
  const m = Math.floor(whole / 60) % 60;
  return `${h}:${String(m).padStart(2, '0')}:${((whole % 60) + (seconds - whole)).toFixed(2).padStart(5, '0')}`;
}

/** print_report: the two report lines, or with -C one parsable line (bytes,ops,time,bytes/sec,ops/sec). */
export function report(ctx: CliContext, verb: string, offset: number, count: number, seconds: number, parsable = false): void {
  const t = Math.max(seconds, 1e-9);
  if (parsable) {
    ctx.stdout(`${count},1,${timestr(seconds, true)},${(count / t).toFixed(3)},${(1 / t).toFixed(3)}\n`);
    return;
  }
  ctx.stdout(`${verb} ${count}/${count} bytes at offset ${offset}\n`);
  ctx.stdout(`${cvtstr(count)}, 1 ops; ${timestr(seconds, false)} (${cvtstr(count / t)}/sec and ${(1 / t).toFixed(4)} ops/sec)\n`);
}

/** qemu-io's dump_buffer: 16 bytes a line, hex then printable characters (isalnum). */
export function hexdump(ctx: CliContext, buf: Uint8Array, offset: number): void {
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
