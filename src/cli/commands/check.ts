import type { CheckResult, RepairMode } from '../../qcow2/types.js';
import { CheckGaveUpError } from '../../qcow2/check.js';
import { has, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import {
  EXIT_CHECK_CORRUPTIONS,
  EXIT_CHECK_LEAKS,
  EXIT_CHECK_UNSUPPORTED,
  EXIT_FAILURE,
  EXIT_OK,
  UsageError,
} from '../errors.js';
import { checkOpened, IMAGE_OPTS_LONG, imageSpec, IMAGE_OPTS_HELP } from '../image-opts.js';
import { couldNotOpen, FORCE_SHARE_HELP, forceShare, openQcow2, probeFormat, reason, resolvePath } from '../open.js';
import { qemuJson } from '../qjson.js';
import { printfFixed } from '../sizes.js';
import { outputFormat } from './info.js';

export const CHECK_HELP = `Usage: qcow2-harness check [-q] [-f fmt] [-r leaks|all] [--output human|json] [--object OBJ] [--image-opts] [-U] FILE

Checks a qcow2 image's metadata (refcounts, L1/L2 tables, OFLAG_COPIED,
overlaps), as 'qemu-img check', and optionally repairs it.
  -r leaks       repair leaked clusters only
  -r all         repair leaks and corruptions
  --output FMT   human (default) or json (qemu-img's field names)
  -q             quiet
${FORCE_SHARE_HELP} (not with -r)
${IMAGE_OPTS_HELP}
Exit codes (qemu-img's): 0 no errors, 1 check not completed (the image could
not be opened or checked), 2 corruptions, 3 leaks only, 63 the format has no
checks (raw); 70 an internal error.
`;

/** Exit code qemu-img check derives from a result. */
export function checkExitCode(r: CheckResult): number {
  if (r.checkErrors) return EXIT_FAILURE;
  if (r.corruptions) return EXIT_CHECK_CORRUPTIONS;
  if (r.leaks) return EXIT_CHECK_LEAKS;
  return EXIT_OK;
}

/** qemu-img's ImageCheck JSON: counters appear only when non-zero, check-errors always. */
export function checkJson(r: CheckResult, filename: string): Record<string, unknown> {
  const j: Record<string, unknown> = {};
  if (r.imageEndOffset) j['image-end-offset'] = r.imageEndOffset;
  if (r.totalClusters) j['total-clusters'] = r.totalClusters;
  j['check-errors'] = r.checkErrors;
  if (r.leaksFixed) j['leaks-fixed'] = r.leaksFixed;
  if (r.corruptionsFixed) j['corruptions-fixed'] = r.corruptionsFixed;
  if (r.leaks) j['leaks'] = r.leaks;
  if (r.corruptions) j['corruptions'] = r.corruptions;
  if (r.allocatedClusters) j['allocated-clusters'] = r.allocatedClusters;
  if (r.fragmentedClusters) j['fragmented-clusters'] = r.fragmentedClusters;
  if (r.compressedClusters) j['compressed-clusters'] = r.compressedClusters;
  j['filename'] = filename;
  j['format'] = 'qcow2';
  return j;
}

function pct(n: number, d: number): string {
  return printfFixed((100 * n) / d, 2);
}

/** qemu-img's human report of a check result. */
export function checkHuman(r: CheckResult): string {
  let s = '';
  if (!r.checkErrors && !r.corruptions && !r.leaks) {
    s += 'No errors were found on the image.\n';
  } else {
    if (r.corruptions) {
      s += `\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    }
    if (r.leaks) {
      s += `\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    }
    if (r.checkErrors) s += `\n${r.checkErrors} internal errors have occurred during the check.\n`;
  }
  // As qemu-img: fragmentation and compression are shares of the allocated clusters.
  if (r.totalClusters && r.allocatedClusters) {
    s += `${r.allocatedClusters}/${r.totalClusters} = ${pct(r.allocatedClusters, r.totalClusters)}% allocated, ` +
      `${pct(r.fragmentedClusters, r.allocatedClusters)}% fragmented, ${pct(r.compressedClusters, r.allocatedClusters)}% compressed clusters\n`;
  }
  if (r.imageEndOffset) s += `Image end offset: ${r.imageEndOffset}\n`;
  return s;
}

function parseRepair(v: string | undefined): RepairMode {
  if (v === undefined) return 'none';
  if (v === 'leaks' || v === 'all') return v;
  throw new UsageError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${v}`, 'check');
}

export async function checkCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { short: { f: true, r: true, q: false, U: false }, long: { output: true, 'force-share': false, ...IMAGE_OPTS_LONG } }, 'check');
  if (has(p, 'help')) {
    ctx.stdout(CHECK_HELP);
    return EXIT_OK;
  }
  const output = outputFormat(last(p, 'output'), 'check');
  const repair = parseRepair(last(p, 'r'));
  const quiet = has(p, 'q');
  if (p.operands.length !== 1) throw new UsageError(p.operands.length ? `Unexpected argument: ${p.operands[1]}` : 'Expecting one image file name', 'check');
  const spec = imageSpec(p, p.operands[0]!, 'check');
  const file = spec.file;
  let format = spec.format;
  try {
    format ??= probeFormat(resolvePath(ctx, file), file);
  } catch (e) {
    throw couldNotOpen(file, e, resolvePath(ctx, file));
  }
  if (format === 'raw') {
    // qemu-img's answer for a format without a check function.
    ctx.stderr(`qcow2-harness: This image format does not support checks\n`);
    return EXIT_CHECK_UNSUPPORTED;
  }
  // Like qemu-img check (BDRV_O_CHECK): no dirty-bit repair on open, the check does that job.
  const img = openQcow2(ctx, file, {
    format,
    readOnly: repair === 'none',
    repairDirty: false,
    forCheck: true,
    forceShare: forceShare(p),
    passphrase: spec.passphrase(),
    name: spec.shownAs,
    dataFile: spec.dataFile,
  });
  // qemu-img check opens without NO_IO: an encrypted image needs its key.
  checkOpened(img, spec, true);
  try {
    let result: CheckResult;
    try {
      result = img.check(repair);
      for (const m of result.messages) ctx.stderr(m.endsWith('\n') ? m : m + '\n');
      if (result.corruptionsFixed || result.leaksFixed) {
        // As qemu-img: report what was repaired, then judge the image by a fresh check.
        if (output === 'human' && !quiet) {
          ctx.stdout(
            `The following inconsistencies were found and repaired:\n\n    ${result.leaksFixed} leaked clusters\n    ${result.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`,
          );
        }
        const again = img.check('none');
        for (const m of again.messages) ctx.stderr(m.endsWith('\n') ? m : m + '\n');
        result = { ...again, leaksFixed: result.leaksFixed, corruptionsFixed: result.corruptionsFixed };
      }
    } catch (e) {
      // What the check found before it gave up, as qemu-img prints it on the way.
      if (e instanceof CheckGaveUpError) for (const m of e.partial.messages) ctx.stderr(m.endsWith('\n') ? m : m + '\n');
      // qemu-img prints only the errno the check returned (strerror); the engine's reason ends with it.
      const why = e instanceof CheckGaveUpError ? e.message.slice(e.message.lastIndexOf(': ') + 2) : reason(e);
      ctx.stderr(`qcow2-harness: Check failed: ${why}\n`);
      return EXIT_FAILURE;
    }
    // qemu-img names the operand as given (with --image-opts, the option string).
    if (output === 'json') ctx.stdout(qemuJson(checkJson(result, p.operands[0]!)) + '\n');
    else if (!quiet) ctx.stdout(checkHuman(result));
    return checkExitCode(result);
  } finally {
    try {
      img.close();
    } catch (e) {
      ctx.stderr(`qcow2-harness: ${file}: ${reason(e)}\n`);
    }
  }
}
