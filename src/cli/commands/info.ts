import * as fs from 'node:fs';
import { fullBackingName } from '../../qcow2/backing-name.js';
import { has, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_OK, UsageError } from '../errors.js';
import { checkOpened, IMAGE_OPTS_LONG, imageSpec, type ImageSpec, IMAGE_OPTS_HELP } from '../image-opts.js';
import { FORCE_SHARE_HELP, forceShare, openReadable, resolvePath, type ImageFormat } from '../open.js';
import { sizeToStr } from '../sizes.js';
import { qemuJson } from '../qjson.js';
import { formatSpecificData, formatSpecificText } from '../format-specific.js';
import { snapshotJson, snapshotTable } from '../snapshot-table.js';

export const INFO_HELP = `Usage: qcow2-harness info [-f fmt] [--output human|json] [--backing-chain] [--object OBJ] [--image-opts] [-U] FILE

Shows an image's format, sizes, backing file, snapshots and qcow2 features,
as 'qemu-img info' (the JSON output uses qemu-img's field names).
  -f fmt          qcow2 or raw (probed when omitted)
  --output FMT    human (default) or json
  --backing-chain the image and every image under it (JSON: an array)
${FORCE_SHARE_HELP}
${IMAGE_OPTS_HELP}
Exit codes: 0 success, 1 failure (a bad command line, an image that cannot be
opened, is invalid, corrupt or unsupported, an I/O error), 70 an internal error.
`;

/** qemu's path_combine: a relative backing name is relative to the image's directory, as the image was named. */
export function outputFormat(v: string | undefined, command: string): 'human' | 'json' {
  if (v === undefined || v === 'human') return 'human';
  if (v === 'json') return 'json';
  throw new UsageError(`--output must be used with human or json as argument.`, command);
}

interface Described {
  json: Record<string, unknown>;
  snapshots: Parameters<typeof snapshotTable>[0];
  /** The next image down the chain, named as qemu names it, and its format. */
  next?: { file: string; format?: ImageFormat };
}

/** One image's qemu-img info fields (in qemu-img's key order). */
function describe(ctx: CliContext, file: string, format: ImageFormat | undefined, shared = false, spec?: ImageSpec): Described {
  // qemu-img info opens with BDRV_O_NO_IO: an image's external data file need not be there.
  // ... and with BDRV_O_NO_BACKING: the chain is described image by image, and a missing backing file is no error here.
  const img = openReadable(ctx, file, { format, forceShare: shared, withoutDataFile: true, withoutBacking: true, name: spec?.shownAs });
  try {
    // Inside the try: a refusal here (a crypto header past the end) must still close the image.
    if (img.qcow2 && spec) checkOpened(img.qcow2, spec, false);
    const actualSize = fs.statSync(resolvePath(ctx, file)).blocks * 512;
    const j: Record<string, unknown> = {};
    if (!img.qcow2) {
      j['virtual-size'] = img.device.virtualSize;
      j['filename'] = file;
      j['format'] = 'raw';
      j['actual-size'] = actualSize;
      j['dirty-flag'] = false;
      return { json: j, snapshots: [] };
    }
    const info = img.qcow2.info();
    if (info.snapshots.length) j['snapshots'] = info.snapshots.map(snapshotJson);
    if (info.backingFile !== undefined && info.backingFormat !== undefined) j['backing-filename-format'] = info.backingFormat;
    j['virtual-size'] = info.virtualSize;
    j['filename'] = file;
    j['cluster-size'] = info.clusterSize;
    j['format'] = 'qcow2';
    j['actual-size'] = actualSize;
    const data = formatSpecificData(info);
    j['format-specific'] = { type: 'qcow2', data };
    // qemu-img's key order puts it after format-specific.
    if (info.encrypted) j['encrypted'] = true;
    let next: Described['next'];
    if (info.backingFile !== undefined) {
      const full = fullBackingName(file, info.backingFile);
      j['full-backing-filename'] = full;
      j['backing-filename'] = info.backingFile;
      const bf = info.backingFormat;
      next = { file: full, format: bf === 'qcow2' || bf === 'raw' ? bf : undefined };
    }
    j['dirty-flag'] = info.dirty;
    return { json: j, snapshots: info.snapshots, next };
  } finally {
    img.device.close();
  }
}

/** qemu's limit on backing chain depth; a longer chain is a loop or a hostile image. */
const MAX_CHAIN = 64;

export async function infoCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { short: { f: true, U: false }, long: { output: true, 'force-share': false, 'backing-chain': false, ...IMAGE_OPTS_LONG } }, 'info');
  if (has(p, 'help')) {
    ctx.stdout(INFO_HELP);
    return EXIT_OK;
  }
  const output = outputFormat(last(p, 'output'), 'info');
  if (p.operands.length !== 1) throw new UsageError(p.operands.length ? `Unexpected argument: ${p.operands[1]}` : 'Expecting one image file name', 'info');
  const shared = forceShare(p);
  const spec = imageSpec(p, p.operands[0]!, 'info');
  const chain: Described[] = [describe(ctx, spec.file, spec.format, shared, spec)];
  if (has(p, 'backing-chain')) {
    for (let next = chain[0]!.next; next; next = chain[chain.length - 1]!.next) {
      if (chain.length >= MAX_CHAIN) throw new CommandFailed(`Backing chain is deeper than ${MAX_CHAIN} images (a loop?)`);
      chain.push(describe(ctx, next.file, next.format, shared));
    }
  }
  if (output === 'json') {
    const value = has(p, 'backing-chain') ? chain.map((d) => d.json) : chain[0]!.json;
    ctx.stdout(qemuJson(value) + '\n');
  } else {
    ctx.stdout(chain.map((d) => humanInfo(d.json, d.snapshots)).join('\n'));
  }
  return EXIT_OK;
}

function humanInfo(j: Record<string, unknown>, snapshots: Parameters<typeof snapshotTable>[0]): string {
  const vs = j['virtual-size'] as number;
  let s = `image: ${j['filename']}\nfile format: ${j['format']}\n`;
  s += `virtual size: ${sizeToStr(vs)} (${vs} bytes)\ndisk size: ${sizeToStr(j['actual-size'] as number)}\n`;
  if (j['encrypted']) s += 'encrypted: yes\n';
  if (j['cluster-size'] !== undefined) s += `cluster_size: ${j['cluster-size']}\n`;
  if (j['backing-filename'] !== undefined) {
    const full = j['full-backing-filename'];
    s += `backing file: ${j['backing-filename']}${full !== j['backing-filename'] ? ` (actual path: ${full})` : ''}\n`;
    if (j['backing-filename-format'] !== undefined) s += `backing file format: ${j['backing-filename-format']}\n`;
  }
  if (j['dirty-flag']) s += 'cleanly shut down: no\n';
  if (snapshots.length) s += 'Snapshot list:\n' + snapshotTable(snapshots);
  const fs = j['format-specific'] as { data: Record<string, unknown> } | undefined;
  if (fs) s += formatSpecificText(fs.data);
  return s;
}
