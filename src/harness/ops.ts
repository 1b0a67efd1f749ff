/**
 * Harness operations and their one-line text form (DESIGN.md "Ops and their
 * text form"), modelled on qemu-io/qemu-img so a trace reads like a shell
 * session. formatOp/parseOp round-trip exactly.
 */

export type AmendOp =
  | { kind: 'amend'; key: 'refcount_bits'; value: number }
  | { kind: 'amend'; key: 'compat'; value: '0.10' | '1.1' }
  | { kind: 'amend'; key: 'lazy_refcounts'; value: boolean };

export type Op =
  | { kind: 'write'; off: number; len: number }
  | { kind: 'write-compressed'; off: number; len: number }
  | { kind: 'write-zeroes'; off: number; len: number; unmap: boolean }
  | { kind: 'discard'; off: number; len: number }
  | { kind: 'flush' }
  | { kind: 'reopen' }
  /**
   * A pure check (DESIGN.md "Crash consistency"): a few crash images of the
   * image as it stands are opened and checked, then the run goes on with the
   * live, uncrashed image. Only targets that record their writes (ts) run it.
   */
  | { kind: 'crash' }
  | { kind: 'snapshot'; action: 'create' | 'apply' | 'delete'; name: string }
  | AmendOp
  | { kind: 'resize'; size: number; shrink: boolean };

export type OpKind = Op['kind'];

/** Op kinds that carry guest data or touch a guest range. */
export type RangeOp = Extract<Op, { off: number; len: number }>;

export const ALL_OP_KINDS: readonly OpKind[] = [
  'write',
  'write-compressed',
  'write-zeroes',
  'discard',
  'flush',
  'reopen',
  'crash',
  'snapshot',
  'amend',
  'resize',
];

export class OpParseError extends Error {}

const SNAP_FLAG = { create: '-c', apply: '-a', delete: '-d' } as const;

export function formatOp(op: Op): string {
  switch (op.kind) {
    case 'write':
      return `write ${op.off} ${op.len}`;
    case 'write-compressed':
      return `write -c ${op.off} ${op.len}`;
    case 'write-zeroes':
      return `write -z${op.unmap ? ' -u' : ''} ${op.off} ${op.len}`;
    case 'discard':
      return `discard ${op.off} ${op.len}`;
    case 'flush':
    case 'reopen':
    case 'crash':
      return op.kind;
    case 'snapshot':
      return `snapshot ${SNAP_FLAG[op.action]} ${op.name}`;
    case 'amend':
      if (op.key === 'lazy_refcounts') return `amend lazy_refcounts=${op.value ? 'on' : 'off'}`;
      return `amend ${op.key}=${op.value}`;
    case 'resize':
      return `resize ${op.shrink ? '--shrink ' : ''}${op.size}`;
  }
}

function num(s: string | undefined, line: string): number {
  if (s === undefined || !/^\d+$/.test(s)) throw new OpParseError(`expected a number in '${line}'`);
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw new OpParseError(`number out of range in '${line}'`);
  return n;
}

export function parseOp(line: string): Op {
  const w = line.trim().split(/\s+/);
  const [cmd] = w;
  const done = (op: Op, used: number): Op => {
    if (w.length !== used) throw new OpParseError(`trailing words in '${line}'`);
    return op;
  };
  switch (cmd) {
    case 'write': {
      if (w[1] === '-c') return done({ kind: 'write-compressed', off: num(w[2], line), len: num(w[3], line) }, 4);
      if (w[1] === '-z') {
        const unmap = w[2] === '-u';
        const i = unmap ? 3 : 2;
        return done({ kind: 'write-zeroes', unmap, off: num(w[i], line), len: num(w[i + 1], line) }, i + 2);
      }
      return done({ kind: 'write', off: num(w[1], line), len: num(w[2], line) }, 3);
    }
    case 'discard':
      return done({ kind: 'discard', off: num(w[1], line), len: num(w[2], line) }, 3);
    case 'flush':
    case 'reopen':
    case 'crash':
      return done({ kind: cmd }, 1);
    case 'snapshot': {
      const action = ({ '-c': 'create', '-a': 'apply', '-d': 'delete' } as const)[w[1] as '-c' | '-a' | '-d'];
      if (!action || !w[2]) throw new OpParseError(`expected snapshot -c|-a|-d <name> in '${line}'`);
      return done({ kind: 'snapshot', action, name: w[2] }, 3);
    }
    case 'amend': {
      const m = /^(refcount_bits|compat|lazy_refcounts)=(.+)$/.exec(w[1] ?? '');
      if (!m) throw new OpParseError(`expected amend key=value in '${line}'`);
      const [, key, v] = m;
      if (key === 'refcount_bits') return done({ kind: 'amend', key, value: num(v, line) }, 2);
      if (key === 'compat') {
        if (v !== '0.10' && v !== '1.1') throw new OpParseError(`compat must be 0.10 or 1.1 in '${line}'`);
        return done({ kind: 'amend', key, value: v }, 2);
      }
      if (v !== 'on' && v !== 'off') throw new OpParseError(`lazy_refcounts must be on|off in '${line}'`);
      return done({ kind: 'amend', key: 'lazy_refcounts', value: v === 'on' }, 2);
    }
    case 'resize': {
      const shrink = w[1] === '--shrink';
      return done({ kind: 'resize', shrink, size: num(w[shrink ? 2 : 1], line) }, shrink ? 3 : 2);
    }
    default:
      throw new OpParseError(`unknown op '${line}'`);
  }
}

export function isRangeOp(op: Op): op is RangeOp {
  return 'off' in op;
}

/** Ops whose data comes from the sector-unique generator. */
export function carriesData(op: Op): op is Extract<Op, { kind: 'write' | 'write-compressed' }> {
  return op.kind === 'write' || op.kind === 'write-compressed';
}
