import { CommandFailed, EXIT_FAILURE, UsageError } from './errors.js';

const UNIT_SHIFT: Record<string, number> = { B: 0, K: 10, M: 20, G: 30, T: 40, P: 50, E: 60 };

/** Sizes must stay below 2^63 (qemu's INT64_MAX is 2^63 - 1, which a double cannot hold). */
const SIZE_LIMIT = 2 ** 63;

const PLAIN_SIZE = /^(\d{1,15})([bBkKmMgGtTpPeE])?$/;

/**
 * Parses a size the way qemu-img and qemu-io do (qemu_strtosz): a decimal
 * number, possibly with a fraction, or a hex integer, then an optional unit
 * B, K, M, G, T, P or E (either case; powers of 1024). Returns null when the
 * text is not a size, so callers can word the error as their QEMU tool does.
 */
export function parseSize(text: string, defaultUnit: keyof typeof UNIT_SHIFT = 'B'): number | null {
  // The common case (an integer and maybe a unit, as qemu-io scripts pass thousands of) without
  // BigInt: fifteen digits are below 2^53, and times a power of two the double stays exact.
  const plain = PLAIN_SIZE.exec(text);
  if (plain) {
    const v = Number(plain[1]) * 2 ** UNIT_SHIFT[(plain[2] ?? defaultUnit).toUpperCase()]!;
    return v < SIZE_LIMIT ? v : null;
  }
  const big = parseSizeBig(text, defaultUnit);
  if (big === null) return null;
  const value = Number(big);
  // Above 2^53 not every integer is a double: refuse rather than silently round.
  return BigInt(value) === big ? value : null;
}

/** parseSize in exact integer arithmetic (sizes and offsets may exceed 2^53). */
export function parseSizeBig(text: string, defaultUnit: keyof typeof UNIT_SHIFT = 'B'): bigint | null {
  const m = /^\s*(?:(0[xX][0-9a-fA-F]+)|(\d+)(?:\.(\d*))?)\s*([bBkKmMgGtTpPeE])?$/.exec(text);
  if (!m) return null;
  const [, hex, int, frac, unitRaw] = m;
  const unit = (unitRaw ?? defaultUnit).toUpperCase();
  const mul = 1n << BigInt(UNIT_SHIFT[unit]!);
  let value: bigint;
  if (hex !== undefined) {
    value = BigInt(hex) * mul;
  } else {
    // A fraction only makes sense with a unit that has room for it (1.5M, not 1.5).
    if (frac !== undefined && frac.length > 0 && mul === 1n) return null;
    const f = frac ?? '';
    value = BigInt(int!) * mul + (f.length > 0 ? (BigInt(f) * mul) / 10n ** BigInt(f.length) : 0n);
  }
  if (value >= BigInt(SIZE_LIMIT)) return null;
  return value;
}

/** A size for a qemu-img operand, with qemu-img's wording when it is not one. */
export function parseImageSize(text: string, command: string): number {
  // qemu rounds image sizes up to whole sectors; where a size is not exact as a
  // double (above 2^53) that rounding is done here, exactly, and keeps it exact.
  const big = parseSizeBig(text);
  let v: number | null = null;
  if (big !== null) v = BigInt(Number(big)) === big ? Number(big) : Number(((big + 511n) / 512n) * 512n);
  if (v === null && parseSize(text.replace(/[eE]$/, 'P')) !== null) {
    // Well formed but past INT64_MAX: qemu-img words this one differently.
    throw new UsageError('Invalid image size specified. Must be between 0 and 9223372036854775807.', command);
  }
  if (v === null) {
    throw new UsageError(
      'Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
      command,
    );
  }
  return v;
}

/** qemu's size_to_str: three significant digits and a binary unit ("1.5 MiB", "0 B"). */
export function sizeToStr(bytes: number): string {
  const suffixes = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];
  // The unit switches at 1000 of the smaller one, so "1000 KiB" shows as "0.977 MiB".
  let i = 0;
  while (i < suffixes.length - 1 && bytes >= 1000 * 2 ** (10 * i)) i++;
  const v = bytes / 2 ** (10 * i);
  return `${formatG3(v)} ${suffixes[i]}B`;
}

/** printf("%0.3g") for the values sizeToStr and friends produce (0.5 to 1000, rounded as glibc rounds). */
export function formatG3(v: number): string {
  if (v === 0) return '0';
  let x = Math.floor(Math.log10(Math.abs(v)));
  // Rounding to three significant digits may carry into the next power of ten (999.5 -> 1e+03).
  if (Number(printfFixed(v, Math.max(0, 2 - x))) >= 10 ** (x + 1)) x++;
  if (x >= 3) return `${stripZeros(printfFixed(v / 10 ** x, 2))}e+${String(x).padStart(2, '0')}`;
  return stripZeros(printfFixed(v, Math.max(0, 2 - x)));
}

function stripZeros(s: string): string {
  return s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

/**
 * printf("%.Nf") as glibc prints it: the exact binary value rounded to N
 * decimals, an exact tie to the even digit. Number.prototype.toFixed rounds a
 * tie up instead, so 1.0625 (17 KiB in MiB) would print 1.063 where qemu
 * prints 1.062.
 */
export function printfFixed(x: number, digits: number): string {
  const plain = x.toFixed(digits);
  if (!Number.isFinite(x) || x < 0) return plain;
  // A tie makes x * 10^digits an integer plus exactly 1/2; below 2^51 that product is
  // representable, so the double multiplication is exact and shows it. Anything else
  // cannot be a tie and needs none of the exact arithmetic below.
  const s = x * 10 ** digits;
  if (s < 2 ** 51 && s - Math.floor(s) !== 0.5) return plain;
  // x = mant * 2^exp exactly; a tie is x * 10^digits having a fractional part of exactly 1/2.
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const bits = view.getBigUint64(0);
  const biased = Number((bits >> 52n) & 0x7ffn);
  let mant = bits & ((1n << 52n) - 1n);
  if (biased !== 0) mant |= 1n << 52n;
  const exp = (biased === 0 ? 1 : biased) - 1075;
  if (exp >= 0) return plain;
  const scaled = mant * 10n ** BigInt(digits);
  const shift = BigInt(-exp);
  const half = 1n << (shift - 1n);
  if ((scaled & ((1n << shift) - 1n)) !== half) return plain;
  let q = scaled >> shift;
  if (q & 1n) q += 1n;
  const t = q.toString().padStart(digits + 1, '0');
  return digits === 0 ? t : `${t.slice(0, -digits)}.${t.slice(-digits)}`;
}

/** qemu-io's cvtstr: three decimals, dropped when they are all zero ("64 KiB", "1.500 MiB"). */
export function cvtstr(value: number): string {
  const units: [number, string][] = [
    [2 ** 60, ' EiB'],
    [2 ** 50, ' PiB'],
    [2 ** 40, ' TiB'],
    [2 ** 30, ' GiB'],
    [2 ** 20, ' MiB'],
    [2 ** 10, ' KiB'],
  ];
  for (const [div, suffix] of units) {
    if (value >= div) return trimZeros(printfFixed(value / div, 3)) + suffix;
  }
  return trimZeros(printfFixed(value, 3)) + ' bytes';
}

function trimZeros(s: string): string {
  return s.endsWith('.000') ? s.slice(0, -4) : s;
}

/**
 * qemu-img's cvtnum(name, value) (qemu-img.c cvtnum_full with 0..INT64_MAX):
 * a size, or its two error_report lines, the second as a hint line of its own.
 */
export function qemuImgNumber(name: string, text: string): number {
  const big = parseSizeBig(text);
  if (big !== null) {
    if (BigInt(Number(big)) === big) return Number(big);
    // Exact above 2^53 only as a bigint: no offset or length here gets that far in practice.
    return Number(big);
  }
  if (/^\s*(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?)\s*[bBkKmMgGtTpPeE]$|^\s*(?:0[xX][0-9a-fA-F]+|\d+)\s*$/.test(text)) {
    throw new CommandFailed(`Invalid ${name} specified. Must be between 0 and 9223372036854775807.`);
  }
  throw new CommandFailed(
    `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for`,
    EXIT_FAILURE,
    'qcow2-harness: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
  );
}
