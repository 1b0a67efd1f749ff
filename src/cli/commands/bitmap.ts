import type { BitmapOp, BitmapView } from '../../qcow2/image.js';
import { Qcow2Error } from '../../qcow2/errors.js';
import { has, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_OK, UsageError } from '../errors.js';
import { openQcow2, openReadable, parseFormat, reason } from '../open.js';
import { parseSize } from '../sizes.js';

export const BITMAP_HELP = `Usage: qcow2-harness bitmap (--merge SOURCE | --add | --remove | --clear |
           --enable | --disable)... [-b source_file [-F source_fmt]]
           [-g granularity] [-f fmt] FILE BITMAP

Persistent dirty bitmaps, as 'qemu-img bitmap'. The operations run in the
order given, and the first that fails stops the rest (the earlier ones stay).
  --add          add BITMAP (enabled; -g sets its granularity, a power of 2 >= 512)
  --remove       remove BITMAP and free its clusters
  --clear        clear every bit of BITMAP
  --enable       let BITMAP record writes
  --disable      stop BITMAP recording writes
  --merge SOURCE set in BITMAP every bit set in SOURCE (of this image, or of
                 source_file with -b)
`;

type Action = { op: 'add' | 'remove' | 'clear' | 'enable' | 'disable' } | { op: 'merge'; source: string };

const VALUE_OPTIONS = new Set(['-f', '-g', '-b', '-F', '--merge']);
const ACTIONS = new Set(['--add', '--remove', '--clear', '--enable', '--disable', '--merge']);

/** qemu-img keeps the actions in command-line order; parseArgs groups by name, so walk argv once more. */
function actionsInOrder(argv: readonly string[]): Action[] {
  const out: Action[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    const [name, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    if (ACTIONS.has(name)) {
      if (name === '--merge') out.push({ op: 'merge', source: inline ?? argv[++i]! });
      else out.push({ op: name.slice(2) as 'add' });
      continue;
    }
    // A value option's value is not an action, even when it looks like one.
    if (VALUE_OPTIONS.has(a)) i++;
  }
  return out;
}

export async function bitmapCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(
    argv,
    { short: { f: true, g: true, b: true, F: true }, long: { add: false, remove: false, clear: false, enable: false, disable: false, merge: true } },
    'bitmap',
  );
  if (has(p, 'help')) {
    ctx.stdout(BITMAP_HELP);
    return EXIT_OK;
  }
  const actions = actionsInOrder(argv);
  // qemu-img's checks, in its order.
  if (actions.length === 0) throw new CommandFailed('Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
  if (has(p, 'g') && !actions.some((a) => a.op === 'add')) throw new CommandFailed('granularity only supported with --add');
  if (has(p, 'F') && !has(p, 'b')) throw new CommandFailed('-F only supported with -b');
  if (has(p, 'b') && !actions.some((a) => a.op === 'merge')) throw new CommandFailed('Merge bitmap source file only supported with --merge');
  if (p.operands.length !== 2) throw new CommandFailed('Expecting filename and bitmap name');
  let granularity: number | undefined;
  if (has(p, 'g')) {
    const g = parseSize(last(p, 'g')!);
    if (g === null) {
      throw new CommandFailed(
        'Invalid granularity specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
      );
    }
    granularity = g;
  }
  const [file, name] = p.operands as [string, string];
  const img = openQcow2(ctx, file, { format: parseFormat(last(p, 'f'), 'bitmap') });
  try {
    for (const a of actions) {
      try {
        // block_dirty_bitmap_merge looks the target up before any source.
        if (a.op === 'merge' && !img.bitmaps().some((b) => b.name === name)) throw new CommandFailed(`Dirty bitmap '${name}' not found`);
        const op: BitmapOp =
          a.op === 'merge'
            ? { op: 'merge', name, source: mergeSource(ctx, img.bitmaps(), a.source, last(p, 'b'), last(p, 'F')) }
            : a.op === 'add'
              ? { op: 'add', name, granularity, imageName: file }
              : { op: a.op, name };
        img.bitmap(op);
      } catch (e) {
        if (e instanceof UsageError) throw e;
        throw new CommandFailed(`Operation ${a.op} on bitmap ${name} failed: ${e instanceof Qcow2Error ? e.message : reason(e)}`);
      }
    }
  } finally {
    img.close();
  }
  return EXIT_OK;
}

/** The merge source: a bitmap of this image, or of source_file (-b, opened read-only as -F says). */
function mergeSource(ctx: CliContext, own: BitmapView[], source: string, file: string | undefined, fmt: string | undefined): BitmapView {
  let list = own;
  if (file !== undefined) {
    const src = openReadable(ctx, file, { format: parseFormat(fmt, 'bitmap') });
    try {
      list = src.qcow2?.bitmaps() ?? [];
    } finally {
      src.device.close();
    }
  }
  const found = list.find((b) => b.name === source);
  if (!found) throw new CommandFailed(`Dirty bitmap '${source}' not found`);
  return found;
}
