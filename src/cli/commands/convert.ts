import * as fs from 'node:fs';
import { assertReplaceable, createQcow2File } from '../../qcow2/open-file.js';
import type { CreateOptions } from '../../qcow2/types.js';
import { all, has, last, parseArgs } from '../args.js';
import { checkOpened, IMAGE_OPTS_LONG, imageSpec, secretStore, IMAGE_OPTS_HELP } from '../image-opts.js';
import { encryptionOf, takeEncryptOptions } from './create.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_OK, UsageError } from '../errors.js';
import { FORCE_SHARE_HELP, forceShare, openReadable, parseFormat, reason, resolvePath, type ReadableImage } from '../open.js';
import { convertToRaw } from '../convert-raw.js';
import { dataChunks, forEachNonZeroRun } from '../convert-scan.js';
import { CREATE_OPTION_HELP, createOptionsFrom, parseOptionList, wantsOptionHelp } from '../options.js';

export const CONVERT_HELP = `Usage: qcow2-harness convert [-q] [-f fmt] -O raw|qcow2 [-o options] [-c] [-l snapshot.name=S] [--object OBJ] [--image-opts] [-U] SRC DST

Copies an image's guest-visible content into a new image, as 'qemu-img convert'.
  -f fmt        source format, qcow2 or raw (probed when omitted)
  -O fmt        output format: raw (sparse) or qcow2
  -o options    qcow2 creation options, as for create (not backing_file)
  -c            compress the qcow2 output's clusters
  -l SNAPSHOT   read a snapshot instead of the active layer:
                snapshot.name=NAME, snapshot.id=ID, or NAME/ID alone
${FORCE_SHARE_HELP} (the source)
The output is written to DST.tmp and renamed onto DST once complete, so DST
is never seen half-written; DST must therefore be a regular file or not exist
(never a device, pipe or symlink). Zero ranges are skipped (the output stays
sparse).
${IMAGE_OPTS_HELP}
Exit codes: 0 success, 1 failure (a bad command line, an image that cannot be
opened, is invalid, corrupt or unsupported, an I/O error), 70 an internal error.
`;

/** Bytes copied per step: large enough to amortise per-call costs, small enough to stay cache friendly. */
const CHUNK = 2 * 1024 * 1024;

export function parseSnapshotParam(v: string, command = 'convert'): string {
  // qemu accepts snapshot.name=, snapshot.id=, or a bare id-or-name; our engine resolves either.
  for (const part of v.split(',')) {
    const m = /^snapshot\.(name|id)=(.*)$/.exec(part);
    if (m) return m[2]!;
  }
  if (v.includes('=')) throw new UsageError(`Invalid snapshot parameter '${v}'`, command);
  return v;
}

/**
 * Calls sink for every non-zero range of the source, in order, at most CHUNK
 * bytes at a time. Ranges the qcow2 layer reports as zero are never read.
 */
function forEachDataChunk(src: ReadableImage, sink: (offset: number, data: Uint8Array) => void, granularity: number): void {
  const buf = Buffer.allocUnsafe(CHUNK);
  for (const [off, len] of dataChunks(src, CHUNK)) {
    src.device.readInto(off, buf.subarray(0, len));
    // Data ranges may still hold zeros; skip them per granule so the output stays sparse.
    forEachNonZeroRun(buf, len, off, granularity, (start, end) => sink(off + start, buf.subarray(start, end)));
  }
}

export async function convertCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { short: { f: true, O: true, o: true, c: false, l: true, q: false, p: false, U: false }, long: { 'force-share': false, ...IMAGE_OPTS_LONG } }, 'convert');
  const store = secretStore(p);
  if (has(p, 'help')) {
    ctx.stdout(CONVERT_HELP);
    return EXIT_OK;
  }
  const outFmt = parseFormat(last(p, 'O') ?? 'raw', 'convert')!;
  if (wantsOptionHelp(all(p, 'o'))) {
    ctx.stdout(CREATE_OPTION_HELP);
    return EXIT_OK;
  }
  if (p.operands.length !== 2) {
    throw new UsageError(p.operands.length < 2 ? 'Expecting a source and a destination file name' : `Unexpected argument: ${p.operands[2]}`, 'convert');
  }
  const [srcName, dstName] = p.operands as [string, string];
  const compress = has(p, 'c');
  if (outFmt === 'raw' && compress) throw new CommandFailed('Compression not supported for this file format');
  const pairs = parseOptionList(all(p, 'o'));
  const encryptPairs = takeEncryptOptions(pairs, dstName, outFmt);
  const encryptOptions = encryptPairs.parse();
  if (outFmt === 'raw' && pairs.size > 0) throw new CommandFailed(`${dstName}: Invalid parameter '${[...pairs.keys()][0]}'`);
  const opts = outFmt === 'qcow2' ? createOptionsFrom(pairs, dstName) : {};
  if ('backingFile' in opts || 'backingFormat' in opts) {
    throw new CommandFailed(`${dstName}: convert writes a standalone image; backing_file is not supported here`);
  }
  if (opts.size !== undefined) throw new CommandFailed(`${dstName}: Invalid parameter 'size'`);
  if (encryptOptions) (opts as Partial<CreateOptions>).encrypt = encryptionOf(encryptOptions, store, dstName);
  const snapshotParam = last(p, 'l');
  const spec = imageSpec(p, srcName, 'convert', store);
  const src = openReadable(ctx, spec.file, {
    format: spec.format,
    passphrase: spec.passphrase(),
    name: spec.shownAs,
    dataFile: spec.dataFile,
    snapshot: snapshotParam === undefined ? undefined : parseSnapshotParam(snapshotParam),
    forceShare: forceShare(p),
  });
  if (src.qcow2) checkOpened(src.qcow2, spec, true);
  const dst = resolvePath(ctx, dstName);
  const tmp = `${dst}.tmp`;
  // The output is a new regular file renamed into place: renaming over a
  // device, a pipe or a symlink would replace that node itself, so refuse.
  for (const p of [dst, tmp]) {
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (st && !st.isFile()) {
      src.device.close();
      throw new CommandFailed(`'${p === dst ? dstName : `${dstName}.tmp`}' exists and is not a regular file; convert only writes new regular files`);
    }
  }
  fs.rmSync(tmp, { force: true }); // a leftover of an interrupted run
  try {
    assertReplaceable(dst, dstName);
    const size = src.device.virtualSize;
    if (outFmt === 'raw') {
      await convertToRaw(src, tmp);
    } else {
      const out = createQcow2File(tmp, { ...(opts as Omit<CreateOptions, 'size'>), size });
      try {
        const cs = out.clusterSize;
        if (compress) {
          // Compressed writes go one whole cluster at a time; gather each non-zero cluster in full.
          const cluster = new Uint8Array(cs);
          let pending = -1;
          const emit = () => {
            if (pending < 0) return;
            const len = Math.min(cs, size - pending);
            src.device.readInto(pending, cluster.subarray(0, len));
            out.writeCompressed(pending, cluster.subarray(0, len));
            pending = -1;
          };
          forEachDataChunk(
            src,
            (off, data) => {
              const first = Math.floor(off / cs) * cs;
              const lastC = Math.floor((off + data.length - 1) / cs) * cs;
              for (let c = first; c <= lastC; c += cs) {
                if (c === pending) continue;
                emit();
                pending = c;
              }
            },
            cs,
          );
          emit();
        } else {
          forEachDataChunk(src, (off, data) => out.write(off, data), cs);
        }
        out.flush();
      } finally {
        out.close();
      }
    }
    fs.renameSync(tmp, dst);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    if (e instanceof CommandFailed) throw e;
    throw new CommandFailed(`error while converting ${outFmt}: ${reason(e)}`);
  } finally {
    src.device.close();
  }
  return EXIT_OK;
}
