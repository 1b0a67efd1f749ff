import { has, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_FAILURE, EXIT_OK, UsageError } from '../errors.js';
import { checkOpened, IMAGE_OPTS_LONG, imageSpec, IMAGE_OPTS_HELP } from '../image-opts.js';
import { openQcow2, reason } from '../open.js';
import { parseSize } from '../sizes.js';

export const RESIZE_HELP = `Usage: qcow2-harness resize [-q] [-f fmt] [--object OBJ] [--image-opts] [--shrink] FILE [+|-]SIZE

Changes the virtual size of a qcow2 image, as 'qemu-img resize'. A new area
reads as zeros. Shrinking needs --shrink and drops the data past the new end.
${IMAGE_OPTS_HELP}
Exit codes: 0 success, 1 failure (a refused change, a bad command line, an
image that cannot be opened, is invalid, corrupt or unsupported, an I/O
error), 70 an internal error.
`;

export async function resizeCommand(argv: string[], ctx: CliContext): Promise<number> {
  // As qemu-img: take the size off the end first, so "-1G" is not read as an option.
  const args = [...argv];
  const sizeText = args.length && !args.includes('--help') && !args.includes('-h') ? args.pop()! : undefined;
  const p = parseArgs(args, { short: { f: true, q: false, U: false }, long: { shrink: false, ...IMAGE_OPTS_LONG } }, 'resize');
  if (has(p, 'help') || sizeText === undefined) {
    if (sizeText === undefined && !has(p, 'help')) throw new UsageError('Expecting image file name and size', 'resize');
    ctx.stdout(RESIZE_HELP);
    return EXIT_OK;
  }
  if (p.operands.length !== 1) throw new UsageError(p.operands.length ? `Unexpected argument: ${p.operands[1]}` : 'Expecting image file name and size', 'resize');
  const spec = imageSpec(p, p.operands[0]!, 'resize');
  const file = spec.file;
  const rel = sizeText[0] === '+' || sizeText[0] === '-' ? sizeText[0] : '';
  const amount = resizeAmount(rel ? sizeText.slice(1) : sizeText);
  const img = openQcow2(ctx, file, { format: spec.format, passphrase: spec.passphrase(), name: spec.shownAs, dataFile: spec.dataFile });
  checkOpened(img, spec, true);
  try {
    const cur = img.virtualSize;
    const size = rel === '+' ? cur + amount : rel === '-' ? cur - amount : amount;
    if (size <= 0) throw new CommandFailed('New image size must be positive');
    if (size < cur && !has(p, 'shrink')) {
      // img_resize warns only here, after the refusal; with --shrink it shrinks silently.
      ctx.stderr('qcow2-harness: Use the --shrink option to perform a shrink operation.\n');
      ctx.stderr(
        "qcow2-harness: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.\n",
      );
      return EXIT_FAILURE;
    }
    try {
      img.resize(size, { shrink: has(p, 'shrink') });
    } catch (e) {
      throw new CommandFailed(reason(e));
    }
  } finally {
    img.close();
  }
  if (!has(p, 'q')) ctx.stdout('Image resized.\n');
  return EXIT_OK;
}

/** The size operand, refused in the words of qemu's QemuOpts size parser (img_resize parses it as option 'size'). */
export function resizeAmount(text: string): number {
  const v = parseSize(text);
  if (v === null) {
    throw new CommandFailed(
      "Parameter 'size' expects a non-negative number below 2^64",
      EXIT_FAILURE,
      'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.',
    );
  }
  return v;
}
