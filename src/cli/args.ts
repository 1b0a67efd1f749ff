import { UsageError } from './errors.js';

/**
 * A small getopt_long: the option shapes qemu-img and qemu-io use, nothing
 * more. Options and operands may be mixed (GNU permutation), `--` ends the
 * options, short flags combine (`-ur`), values attach or follow (`-fqcow2`,
 * `-f qcow2`, `--output=json`, `--output json`), and repeated options keep
 * every value in order (qemu-io's `-c`, qemu-img's `-o`).
 */
export interface OptionSpec {
  /** Short options: letter → true when it takes a value. */
  short?: Record<string, boolean>;
  /** Long options: name → true when it takes a value. */
  long?: Record<string, boolean>;
  /** Exit code of a usage error (default 1; the harness's commands use 2). */
  usageExit?: number;
}

export interface ParsedArgs {
  /** Every occurrence, keyed by the short letter or the long name. */
  values: Map<string, string[]>;
  operands: string[];
}

export function parseArgs(argv: readonly string[], spec: OptionSpec, command: string): ParsedArgs {
  const short = spec.short ?? {};
  const long: Record<string, boolean> = { help: false, ...(spec.long ?? {}) };
  const values = new Map<string, string[]>();
  const operands: string[] = [];
  const usage = (message: string) => new UsageError(message, command, spec.usageExit);
  const add = (k: string, v: string) => {
    const list = values.get(k);
    if (list) list.push(v);
    else values.set(k, [v]);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      if (!(name in long)) throw usage(`unrecognized option '--${name}'`);
      if (long[name]) {
        let v: string | undefined;
        if (eq >= 0) v = a.slice(eq + 1);
        else if (i + 1 < argv.length) v = argv[++i]!;
        else throw usage(`option '--${name}' requires an argument`);
        add(name, v);
      } else {
        if (eq >= 0) throw usage(`option '--${name}' doesn't allow an argument`);
        add(name, '');
      }
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const c = a[j]!;
        if (c === 'h' && !(c in short)) {
          add('help', '');
          continue;
        }
        if (!(c in short)) throw usage(`invalid option -- '${c}'`);
        if (short[c]) {
          let v: string;
          if (j + 1 < a.length) v = a.slice(j + 1);
          else if (i + 1 < argv.length) v = argv[++i]!;
          else throw usage(`option requires an argument -- '${c}'`);
          add(c, v);
          break;
        }
        add(c, '');
      }
      continue;
    }
    operands.push(a);
  }
  return { values, operands };
}

export function has(p: ParsedArgs, key: string): boolean {
  return p.values.has(key);
}

/** The last value given for an option (later ones win, as with getopt loops). */
export function last(p: ParsedArgs, key: string): string | undefined {
  const list = p.values.get(key);
  return list ? list[list.length - 1] : undefined;
}

export function all(p: ParsedArgs, key: string): string[] {
  return p.values.get(key) ?? [];
}

/** Checks the operand count and names what is missing or extra. */
export function expectOperands(p: ParsedArgs, min: number, max: number, command: string, what: string): string[] {
  if (p.operands.length < min) throw new UsageError(`Expecting ${what}`, command);
  if (p.operands.length > max) throw new UsageError(`Unexpected argument: ${p.operands[max]}`, command);
  return p.operands;
}

/**
 * An integer option (the last one given), at least min. Undefined when absent.
 * The message names the option as the user wrote it.
 */
export function intOption(p: ParsedArgs, key: string, min: number, command: string, usageExit?: number): number | undefined {
  const v = last(p, key);
  if (v === undefined) return undefined;
  const flag = key.length === 1 ? `-${key}` : `--${key}`;
  if (!/^-?\d+$/.test(v) || !Number.isSafeInteger(Number(v)) || Number(v) < min) {
    throw new UsageError(`${flag} must be an integer >= ${min}`, command, usageExit);
  }
  return Number(v);
}
