/** Helpers for the op text form's parsers. */
import { OpParseError } from './types.js';

export function num(s: string | undefined, line: string): number {
  if (s === undefined || !/^\d+$/.test(s)) throw new OpParseError(`expected a number in '${line}'`);
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw new OpParseError(`number out of range in '${line}'`);
  return n;
}

/** The op when the line has exactly `used` words. */
export function exactly<O>(w: string[], used: number, line: string, op: O): O {
  if (w.length !== used) throw new OpParseError(`trailing words in '${line}'`);
  return op;
}

/** Single-quotes a word for sh. */
export const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
