import { has, last, parseArgs } from '../args.js';
import { BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_OFFSET_VALID, BLOCK_ZERO, blockStatusFailed, type Layer, type Status } from '../block-status.js';
import { openChain } from '../chain.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_OK, UsageError } from '../errors.js';
import { IMAGE_OPTS_HELP, IMAGE_OPTS_LONG, imageSpec } from '../image-opts.js';
import { FORCE_SHARE_HELP, forceShare } from '../open.js';
import { qemuImgNumber } from '../sizes.js';

export const MAP_HELP = `Usage: qcow2-harness map [-f fmt] [--output human|json] [--start-offset OFFSET] [--max-length LEN] [--object OBJ] [--image-opts] [-U] FILE

Shows where each range of the guest disk comes from, as 'qemu-img map': the
image in the backing chain that provides it (depth), whether it reads as zeros,
holds data, and where the data lives in which file.
  -f fmt              qcow2 or raw (probed when omitted)
  --output FMT        human (default: the data ranges with their host offsets)
                      or json (every range: start, length, depth, present, zero,
                      data, offset)
  -s, --start-offset  the guest offset to start at (default 0)
  -l, --max-length    map at most this many bytes
${FORCE_SHARE_HELP}
${IMAGE_OPTS_HELP}
Exit codes: 0 success, 1 failure (a bad command line, an image that cannot be
opened, is invalid, corrupt or unsupported; human output of compressed or
encrypted data, which has no host offset), 70 an internal error.
`;

/** qemu-img.c MapEntry. */
interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
  offset?: number;
  depth: number;
  present: boolean;
  filename?: string;
}

/** qemu-img.c get_block_status: down the chain until a layer says data or zero. */
function blockStatusEntry(top: Layer, offset: number, bytes: number): MapEntry {
  let depth = 0;
  let layer: Layer | null = top;
  let n = bytes;
  let st: Status;
  for (;;) {
    st = layer.status(offset, n);
    n = st.pnum;
    if (st.ret & (BLOCK_ZERO | BLOCK_DATA)) break;
    layer = layer.backing;
    if (!layer) {
      st = { ...st, ret: 0 };
      break;
    }
    depth++;
  }
  const hasOffset = (st.ret & BLOCK_OFFSET_VALID) !== 0;
  const e: MapEntry = { start: offset, length: n, data: (st.ret & BLOCK_DATA) !== 0, zero: (st.ret & BLOCK_ZERO) !== 0, depth, present: (st.ret & BLOCK_ALLOCATED) !== 0 };
  if (hasOffset) e.offset = st.map;
  if (hasOffset && st.file !== undefined) e.filename = st.file;
  return e;
}

/** entry_mergeable: next continues curr (same flags, same file, consecutive host offsets). */
function mergeable(curr: MapEntry, next: MapEntry): boolean {
  if (curr.length === 0) return false;
  if (curr.zero !== next.zero || curr.data !== next.data || curr.depth !== next.depth || curr.present !== next.present) return false;
  if ((curr.filename === undefined) !== (next.filename === undefined) || (curr.offset === undefined) !== (next.offset === undefined)) return false;
  if (curr.filename !== undefined && curr.filename !== next.filename) return false;
  return curr.offset === undefined || curr.offset + curr.length === next.offset;
}

/** printf("%#-16" PRIx64): 0x-prefixed hex, left-aligned in 16 columns, and plain 0 for zero. */
function hex16(n: number): string {
  return (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16);
}

/** dump_map_entry: one entry's text; human output also folds the next entry's flags (a copy of qemu's quirk). */
function dumpEntry(json: boolean, e: MapEntry, next: MapEntry | undefined): string {
  if (!json) {
    if (e.data && e.offset === undefined) throw new CommandFailed('File contains external, encrypted or compressed clusters.');
    // This format ignores the distinction between 0, ZERO and ZERO|DATA, which lets more entries merge.
    if (next && (!next.data || next.zero)) {
      next.data = false;
      next.zero = true;
    }
    return e.data && !e.zero ? `${hex16(e.start)}${hex16(e.length)}${hex16(e.offset ?? 0)}${e.filename ?? ''}\n` : '';
  }
  const b = (v: boolean) => (v ? 'true' : 'false');
  let s = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${b(e.present)}, "zero": ${b(e.zero)}, "data": ${b(e.data)}`;
  if (e.offset !== undefined) s += `, "offset": ${e.offset}`;
  return s + (next ? '},\n' : '}');
}

export async function mapCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(
    argv,
    { short: { f: true, s: true, l: true, U: false }, long: { output: true, format: true, 'start-offset': true, 'max-length': true, 'force-share': false, ...IMAGE_OPTS_LONG } },
    'map',
  );
  if (has(p, 'help')) {
    ctx.stdout(MAP_HELP);
    return EXIT_OK;
  }
  // getopt order: the offsets are converted as they are met, before the operand count is checked.
  const startText = last(p, 'start-offset') ?? last(p, 's');
  const lengthText = last(p, 'max-length') ?? last(p, 'l');
  const start = startText === undefined ? 0 : qemuImgNumber('start offset', startText);
  const maxLength = lengthText === undefined ? -1 : qemuImgNumber('max length', lengthText);
  if (p.operands.length !== 1) throw new UsageError('Expecting one image file name', 'map');
  const output = last(p, 'output');
  // error_report, not error_exit: no --help hint.
  if (output !== undefined && output !== 'human' && output !== 'json') throw new CommandFailed('--output must be used with human or json as argument.');
  const json = output === 'json';
  if (last(p, 'format') !== undefined) p.values.set('f', [last(p, 'format')!]);
  const spec = imageSpec(p, p.operands[0]!, 'map');
  const { image, top } = openChain(ctx, spec, forceShare(p));
  let out = json ? '[' : `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`;
  try {
    const length = maxLength === -1 ? top.size : Math.min(start + maxLength, top.size);
    let curr: MapEntry = { start, length: 0, data: false, zero: false, depth: 0, present: false };
    while (curr.start + curr.length < length) {
      const offset = curr.start + curr.length;
      const next = blockStatusEntry(top, offset, length - offset);
      if (mergeable(curr, next)) {
        curr.length += next.length;
        continue;
      }
      if (curr.length > 0) out += dumpEntry(json, curr, next);
      curr = next;
    }
    out += dumpEntry(json, curr, undefined);
    if (json) out += ']\n';
  } catch (e) {
    // What was printed before the failure stays printed, as qemu-img's stdout does.
    ctx.stdout(out);
    throw blockStatusFailed(e, 'Could not read file metadata: Input/output error');
  } finally {
    image.device.close();
  }
  ctx.stdout(out);
  return EXIT_OK;
}
