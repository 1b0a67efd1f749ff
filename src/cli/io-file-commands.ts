/**
 * qemu-io's commands about the open file rather than its data: info,
 * truncate, sleep. Options, messages and streams follow qemu-io 7.2
 * (qemu-io-cmds.c info_f, truncate_f, sleep_f); an error qemu-io reports with
 * error_report goes to stderr with this tool's prefix.
 */
import { formatSpecificData, formatSpecificText } from './format-specific.js';
import { argRange, CmdError, cvtnum, getopt } from './io-util.js';
import type { CliContext } from './context.js';
import { Qcow2Device, reason, type WritableDevice } from './open.js';
import { cvtstr } from './sizes.js';
import { L2_ENTRY_SIZE, L2_EXTENDED_ENTRY_SIZE } from '../qcow2/format/constants.js';

const TRUNCATE_USAGE = 'truncate [-m prealloc_mode] off -- truncates the current file at the given offset';

/** PreallocMode's names (qapi/block-core.json), in QEMU's order. */
const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'] as const;

/**
 * qcow2_vm_state_offset: the VM state lives past the last L1 entry the guest
 * size needs, so it starts at that many L2 tables' worth of guest bytes.
 */
function vmStateOffset(virtualSize: number, clusterSize: number, extendedL2: boolean): number {
  const span = clusterSize * (clusterSize / (extendedL2 ? L2_EXTENDED_ENTRY_SIZE : L2_ENTRY_SIZE));
  return Math.ceil(virtualSize / span) * span;
}

/** info_f: the driver's name, bdrv_get_info's cluster size and VM state offset, then the format-specific dump. */
function infoCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  argRange('info', args.length, 0, 0);
  ctx.stdout(`format name: ${dev.format}\n`);
  if (!(dev instanceof Qcow2Device)) {
    // raw_get_info leaves BlockDriverInfo zeroed and has no specific information.
    ctx.stdout('cluster size: 0 bytes\nvm state offset: 0 bytes\n');
    return true;
  }
  const info = dev.image.info();
  ctx.stdout(`cluster size: ${cvtstr(info.clusterSize)}\n`);
  ctx.stdout(`vm state offset: ${cvtstr(vmStateOffset(info.virtualSize, info.clusterSize, info.extendedL2))}\n`);
  ctx.stdout(formatSpecificText(formatSpecificData(info)));
  return true;
}

/**
 * truncate_f: blk_truncate to the new size, shrinking too (qemu-io passes no
 * "--shrink": the block layer's truncate shrinks). Growing with a
 * preallocation mode other than off is not something this engine does.
 */
function truncateCmd(dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  // The command table's argmin 1 and argmax 3 ("-m mode off"), checked before the options are read.
  argRange('truncate', args.length, 1, 3);
  const { opts, rest } = getopt('truncate', TRUNCATE_USAGE, args, '', 'm');
  const mode = opts.get('m') ?? 'off';
  if (!(PREALLOC_MODES as readonly string[]).includes(mode)) throw new CmdError(`qcow2-harness: Invalid preallocation mode '${mode}'`, 'stderr');
  if (rest.length === 0) throw new CmdError('', 'stdout', TRUNCATE_USAGE);
  // Only the first operand counts, as truncate_f reads argv[optind] alone.
  const size = cvtnum(rest[0]!);
  if (!(dev instanceof Qcow2Device)) throw new CmdError('qcow2-harness: truncate needs a qcow2 image here', 'stderr');
  if (mode !== 'off' && size > dev.virtualSize) {
    throw new CmdError(`qcow2-harness: preallocation mode '${mode}' is not supported when growing (only off)`, 'stderr');
  }
  try {
    dev.image.resize(size, { shrink: true });
  } catch (e) {
    ctx.stderr(`qcow2-harness: ${reason(e)}\n`);
    return false;
  }
  return true;
}

/** sleep_f: qemu_strtoi64 with base 0, the whole word a number. */
function sleepCmd(_dev: WritableDevice, args: string[], ctx: CliContext): boolean {
  argRange('sleep', args.length, 1, 1);
  const word = args[0]!;
  const m = /^\s*([-+]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)$/.exec(word);
  if (!m) {
    ctx.stdout(`${word} is not a valid number\n`);
    return false;
  }
  const digits = m[2]!;
  const magnitude = /^0[xX]/.test(digits) ? parseInt(digits, 16) : digits.startsWith('0') ? parseInt(digits, 8) : parseInt(digits, 10);
  const ms = m[1] === '-' ? -magnitude : magnitude;
  // A synchronous wait: commands run one after another, as qemu-io's do.
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  return true;
}

export const FILE_COMMANDS = {
  info: infoCmd,
  i: infoCmd,
  truncate: truncateCmd,
  t: truncateCmd,
  sleep: sleepCmd,
} as const;
