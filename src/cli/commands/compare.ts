import { has, last, parseArgs, type ParsedArgs } from '../args.js';
import { BLOCK_ALLOCATED, BLOCK_ZERO, blockStatusFailed, statusAbove } from '../block-status.js';
import { openChain, type OpenedChain } from '../chain.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_OK, UsageError } from '../errors.js';
import { IMAGE_OPTS_HELP, IMAGE_OPTS_LONG, imageSpec, secretStore } from '../image-opts.js';
import { FORCE_SHARE_HELP, forceShare } from '../open.js';

export const COMPARE_HELP = `Usage: qcow2-harness compare [-f fmt] [-F fmt] [-s] [-q] [-T cache] [-p] [--object OBJ] [--image-opts] [-U] FILE1 FILE2

Compares the guest-visible content of two images (through their backing
files), as 'qemu-img compare': "Images are identical." or the first offset
that differs (at 512-byte granularity from the start of the range compared).
Images of different sizes are identical when the larger one reads as zeros
past the end of the smaller one.
  -f fmt   format of FILE1 (qcow2 or raw; probed when omitted)
  -F fmt   format of FILE2
  -s       strict: a size or block status (allocation) difference is a mismatch
  -q       quiet: only the exit code says the result
  -T cache accepted as qemu-img does (none, writeback, writethrough, directsync, unsafe); no effect
  -p       accepted; no progress is shown
${FORCE_SHARE_HELP}
${IMAGE_OPTS_HELP}
Exit codes (qemu-img's): 0 identical, 1 different (or a bad command line),
2 an image could not be opened, 3 a block status query failed (a corrupt
image), 4 a read failed; 70 an internal error.
`;

/** qemu-img.c IO_BUF_SIZE: the most compared per read. */
const IO_BUF_SIZE = 2 * 1024 * 1024;
const SECTOR = 512;
const EXIT_DIFFERENT = 1;
const EXIT_OPEN_FAILED = 2;
const EXIT_READ_FAILED = 4;
/** bdrv_parse_cache_mode's names. */
const CACHE_MODES = new Set(['none', 'off', 'writeback', 'writethrough', 'directsync', 'unsafe']);

/** A mismatch found: qemu-img's message, printed unless -q. */
class Mismatch {
  constructor(readonly message: string) {}
}

/** All zeros, to compare whole chunks against in native code. */
const ZEROS = new Uint8Array(IO_BUF_SIZE);

/** compare_buffers: the first 512-byte piece (from the start of the buffers) that differs, or -1. */
function firstDifference(a: Uint8Array, b: Uint8Array, n: number): number {
  // Equal chunks are the common case: one native comparison decides them.
  if (Buffer.compare(a.subarray(0, n), b.subarray(0, n)) === 0) return -1;
  for (let i = 0; i < n; i += SECTOR) {
    const len = Math.min(SECTOR, n - i);
    if (Buffer.compare(a.subarray(i, i + len), b.subarray(i, i + len)) !== 0) return i;
  }
  return -1;
}

/** find_nonzero: the first 512-byte piece that is not all zeros, or -1. */
function firstNonZero(a: Uint8Array, n: number): number {
  if (Buffer.compare(a.subarray(0, n), ZEROS.subarray(0, n)) === 0) return -1;
  for (let i = 0; i < n; i += SECTOR) {
    const len = Math.min(SECTOR, n - i);
    if (Buffer.compare(a.subarray(i, i + len), ZEROS.subarray(0, len)) !== 0) return i;
  }
  return -1;
}

function read(c: OpenedChain, name: string, offset: number, n: number, buf: Uint8Array): Uint8Array {
  const part = buf.subarray(0, n);
  try {
    // A raw file's length rounds up to a sector; its device reads the tail past the file as zeros.
    c.image.device.readInto(offset, part);
  } catch (e) {
    throw new CommandFailed(`Error while reading offset ${offset} of ${name}: ${e instanceof Error ? e.message : String(e)}`, EXIT_READ_FAILED);
  }
  return part;
}

/** check_empty_sectors: the range must read as zeros. */
function checkEmpty(c: OpenedChain, name: string, offset: number, n: number, buf: Uint8Array): void {
  const i = firstNonZero(read(c, name, offset, n, buf), n);
  if (i >= 0) throw new Mismatch(`Content mismatch at offset ${offset + i}!`);
}

const EXIT_STATUS_FAILED = 3;

/** bdrv_block_status_above, or img_compare's message when it fails (a corrupt image). */
function status(c: OpenedChain, name: string, offset: number, bytes: number): ReturnType<typeof statusAbove> {
  try {
    return statusAbove(c.top, offset, bytes);
  } catch (e) {
    throw blockStatusFailed(e, `Sector allocation test failed for ${name}`, EXIT_STATUS_FAILED);
  }
}

/** img_compare's loop over both images, then over the larger one's tail. */
function compareChains(a: OpenedChain, b: OpenedChain, names: [string, string], strict: boolean): string {
  const [size1, size2] = [a.top.size, b.top.size];
  if (strict && size1 !== size2) throw new Mismatch('Strict mode: Image size mismatch!');
  const buf1 = new Uint8Array(IO_BUF_SIZE);
  const buf2 = new Uint8Array(IO_BUF_SIZE);
  const total = Math.min(size1, size2);
  let offset = 0;
  while (offset < total) {
    const s1 = status(a, names[0], offset, size1 - offset);
    const s2 = status(b, names[1], offset, size2 - offset);
    let chunk = Math.min(s1.pnum, s2.pnum);
    if (strict && s1.ret !== s2.ret) throw new Mismatch(`Strict mode: Offset ${offset} block status mismatch!`);
    const [alloc1, alloc2] = [(s1.ret & BLOCK_ALLOCATED) !== 0, (s2.ret & BLOCK_ALLOCATED) !== 0];
    if (s1.ret & BLOCK_ZERO && s2.ret & BLOCK_ZERO) {
      // Both read as zeros.
    } else if (alloc1 === alloc2) {
      if (alloc1) {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        const i = firstDifference(read(a, names[0], offset, chunk, buf1), read(b, names[1], offset, chunk, buf2), chunk);
        if (i >= 0) throw new Mismatch(`Content mismatch at offset ${offset + i}!`);
      }
    } else {
      chunk = Math.min(chunk, IO_BUF_SIZE);
      if (alloc1) checkEmpty(a, names[0], offset, chunk, buf1);
      else checkEmpty(b, names[1], offset, chunk, buf1);
    }
    offset += chunk;
  }
  let out = '';
  if (size1 !== size2) {
    out += 'Warning: Image size mismatch!\n';
    const [over, name, end] = size1 > size2 ? [a, names[0], size1] : [b, names[1], size2];
    while (offset < end) {
      const st = status(over, name, offset, end - offset);
      let chunk = st.pnum;
      if (st.ret & BLOCK_ALLOCATED && !(st.ret & BLOCK_ZERO)) {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        try {
          checkEmpty(over, name, offset, chunk, buf1);
        } catch (e) {
          if (e instanceof Mismatch) throw new Mismatch(out + e.message);
          throw e;
        }
      }
      offset += chunk;
    }
  }
  return out + 'Images are identical.\n';
}

/** The arguments as seen for the second image: -F is its -f. */
function secondImageArgs(p: ParsedArgs): ParsedArgs {
  const values = new Map(p.values);
  values.delete('f');
  const f2 = p.values.get('F');
  if (f2) values.set('f', f2);
  return { values, operands: p.operands };
}

export async function compareCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { short: { f: true, F: true, T: true, p: false, q: false, s: false, U: false }, long: { 'force-share': false, ...IMAGE_OPTS_LONG } }, 'compare');
  if (has(p, 'help')) {
    ctx.stdout(COMPARE_HELP);
    return EXIT_OK;
  }
  const quiet = has(p, 'q');
  let store;
  try {
    store = secretStore(p);
  } catch (e) {
    // --object errors end qemu-img compare with exit code 2.
    if (e instanceof CommandFailed) throw new CommandFailed(e.message, EXIT_OPEN_FAILED);
    throw e;
  }
  if (p.operands.length !== 2) throw new UsageError('Expecting two image file names', 'compare');
  const cache = last(p, 'T');
  if (cache !== undefined && !CACHE_MODES.has(cache)) throw new CommandFailed(`Invalid source cache option: ${cache}`, EXIT_OPEN_FAILED);
  const [file1, file2] = p.operands as [string, string];
  const shared = forceShare(p);
  const opened: OpenedChain[] = [];
  try {
    try {
      opened.push(openChain(ctx, imageSpec(p, file1, 'compare', store), shared));
      opened.push(openChain(ctx, imageSpec(secondImageArgs(p), file2, 'compare', store), shared));
    } catch (e) {
      if (e instanceof CommandFailed) throw new CommandFailed(e.message, EXIT_OPEN_FAILED, e.hint);
      throw e;
    }
    try {
      const text = compareChains(opened[0]!, opened[1]!, [file1, file2], has(p, 's'));
      if (!quiet) ctx.stdout(text);
      return EXIT_OK;
    } catch (e) {
      if (!(e instanceof Mismatch)) throw e;
      if (!quiet) ctx.stdout(e.message + '\n');
      return EXIT_DIFFERENT;
    }
  } finally {
    for (const c of opened) c.image.device.close();
  }
}
