import * as fs from 'node:fs';
import * as path from 'node:path';
import { SECTOR_SIZE } from '../../qcow2/format/constants.js';
import { createQcow2File, openImageFile } from '../../qcow2/open-file.js';
import type { BackingFormat, CreateOptions } from '../../qcow2/types.js';
import { all, has, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_OK, UsageError } from '../errors.js';
import { parseFormat, reason, resolvePath } from '../open.js';
import { fullBackingName, resolveBackingName } from '../../qcow2/backing-name.js';
import { CREATE_OPTION_HELP, createOptionsFrom, formattingLine, parseOptionList, wantsOptionHelp } from '../options.js';
import { parseImageSize } from '../sizes.js';
import { secretStore } from '../image-opts.js';
import { isEncryptOption, parseEncryptCreateOptions, type EncryptCreateOptions } from '../../qcow2/crypto/secrets.js';
import { Qcow2Error } from '../../qcow2/errors.js';
import type { EncryptCreate } from '../../qcow2/types.js';

export const CREATE_HELP = `Usage: qcow2-harness create [-q] [-f fmt] [-o options] [-b backing_file [-F backing_fmt]] [-u] [--object OBJ] FILE [SIZE]

Creates a new image, as 'qemu-img create'.
  -f fmt        qcow2 (the default here; qemu-img defaults to raw) or raw
  -o options    comma-separated k=v: size, cluster_size, refcount_bits, compat,
                lazy_refcounts, extended_l2, compression_type, backing_file,
                backing_fmt, preallocation (off|metadata); '-o help' lists them;
                encryption: encrypt.format=luks|aes, encrypt.key-secret=ID (a
                --object secret), encrypt.cipher-alg, encrypt.cipher-mode,
                encrypt.ivgen-alg, encrypt.ivgen-hash-alg, encrypt.hash-alg,
                encrypt.iter-time (LUKS only); encryption=on is legacy aes
  --object secret,id=ID,data=S|file=F[,format=raw|base64]  a secret
  -b FILE       backing file (stored as given; relative names are relative to FILE's directory)
  -F fmt        backing file format (qcow2 or raw); required with -b, as in qemu-img 7.2
  -u            do not open the backing file (then SIZE is required)
  -q            quiet: no "Formatting ..." line
SIZE takes the suffixes k, M, G, T, P, E (powers of 1024) and may be omitted
when a backing file gives it.
Exit codes: 0 success, 1 failure (a bad command line, an image that cannot be
opened, is invalid, corrupt or unsupported, an I/O error), 70 an internal error.
`;

export async function createCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { short: { f: true, o: true, b: true, F: true, u: false, q: false }, long: { object: true } }, 'create');
  const store = secretStore(p);
  if (has(p, 'help')) {
    ctx.stdout(CREATE_HELP);
    return EXIT_OK;
  }
  const fmt = parseFormat(all(p, 'f').at(-1), 'create') ?? 'qcow2';
  const optionTexts = all(p, 'o');
  if (wantsOptionHelp(optionTexts)) {
    ctx.stdout(fmt === 'raw' ? 'Supported raw options:\n  size=<size>            - Virtual disk size\n' : CREATE_OPTION_HELP);
    return EXIT_OK;
  }
  const [file, sizeText, extra] = p.operands;
  if (file === undefined) throw new UsageError('Expecting image file name', 'create');
  if (extra !== undefined) throw new UsageError(`Unexpected argument: ${extra}`, 'create');

  const pairs = parseOptionList(optionTexts);
  const encryptPairs = takeEncryptOptions(pairs, file, fmt);
  if (fmt === 'raw') {
    for (const k of pairs.keys()) if (k !== 'size') throw new CommandFailed(`${file}: Invalid parameter '${k}'`);
  }
  const o = fmt === 'raw' ? { size: pairs.has('size') ? createOptionsFrom(new Map([['size', pairs.get('size')!]]), file).size : undefined } : createOptionsFrom(pairs, file);
  const b = all(p, 'b').at(-1);
  const bf = all(p, 'F').at(-1);
  if (fmt === 'raw' && (b !== undefined || bf !== undefined)) throw new CommandFailed(`${file}: raw images have no backing file`);
  const co = o as Partial<CreateOptions>;
  if (b !== undefined) co.backingFile = b;
  if (bf !== undefined) {
    if (bf !== 'qcow2' && bf !== 'raw') throw new CommandFailed(`${file}: backing format '${bf}' is not supported (qcow2 or raw)`);
    co.backingFormat = bf as BackingFormat;
  }
  if (sizeText !== undefined) {
    if (co.size !== undefined) throw new CommandFailed(`${file}: The image size must be specified only once`);
    co.size = parseImageSize(sizeText, 'create');
  }
  if (co.backingFile !== undefined) {
    if (has(p, 'u')) {
      if (co.backingFormat === undefined) throw new CommandFailed(`${file}: Backing file specified without backing format`);
    } else {
      // As qemu-img: the backing file must open (and it gives the size when
      // none was given); only then is a missing -F reported, with the format
      // it would have guessed.
      let backingSize: number;
      let probed: string;
      try {
        const backing = resolveBackingName(resolvePath(ctx, file), co.backingFile, co.backingFormat, { cwd: ctx.cwd });
        const dev = openImageFile(backing.file, { readOnly: true, format: backing.format, dataFileBase: ctx.cwd });
        backingSize = dev.virtualSize;
        probed = dev.format;
        dev.close();
      } catch (e) {
        throw new CommandFailed(`${file}: Could not open '${fullBackingName(file, co.backingFile)}': ${reason(e)}; Could not open backing image.`);
      }
      if (co.backingFormat === undefined) {
        throw new CommandFailed(`${file}: Backing file specified without backing format; Detected format of ${probed}.`);
      }
      co.size ??= backingSize;
    }
  }
  if (co.size === undefined) throw new CommandFailed(`${file}: Image creation needs a size parameter`);
  if (co.backingFile !== undefined && co.preallocation === 'metadata' && !co.extendedL2) {
    throw new CommandFailed(`${file}: Backing file and preallocation can only be used at the same time if extended_l2 is on`);
  }
  const full = co as CreateOptions;
  if (!has(p, 'q')) ctx.stdout(formattingLine(file, fmt, full, pairs.get('compat'), encryptPairs.shown) + '\n');
  // The driver reads its encryption options after the "Formatting" line, so their errors follow it.
  const encrypt = encryptPairs.parse();
  if (encrypt) full.encrypt = encryptionOf(encrypt, store, file);
  const abs = resolvePath(ctx, file);
  try {
    if (fmt === 'raw') {
      const fd = fs.openSync(abs, 'w');
      try {
        // qemu-img rounds every new image up to whole sectors.
        fs.ftruncateSync(fd, Math.ceil(full.size / SECTOR_SIZE) * SECTOR_SIZE);
      } finally {
        fs.closeSync(fd);
      }
    } else {
      createQcow2File(abs, full, { shownAs: file, dataFileBase: ctx.cwd }).close();
    }
  } catch (e) {
    throw new CommandFailed(`${file}: ${reason(e)}`);
  }
  return EXIT_OK;
}

/** qemu-img's order of the encryption options in the "Formatting" line (qcow2_create_opts). */
const ENCRYPT_SHOWN = [
  'encryption',
  'encrypt.format',
  'encrypt.key-secret',
  'encrypt.cipher-alg',
  'encrypt.cipher-mode',
  'encrypt.ivgen-alg',
  'encrypt.ivgen-hash-alg',
  'encrypt.hash-alg',
  'encrypt.iter-time',
];

/** Removes the encrypt.* options from pairs and parses them (qcow2_co_create_opts). */
export function takeEncryptOptions(pairs: Map<string, string>, file: string, fmt: string): { parse: () => EncryptCreateOptions | undefined; shown: string[] } {
  const enc = new Map<string, string>();
  for (const [k, v] of pairs) if (isEncryptOption(k)) enc.set(k, v);
  if (enc.size === 0) return { parse: () => undefined, shown: [] };
  if (fmt === 'raw') throw new CommandFailed(`${file}: Invalid parameter '${[...enc.keys()][0]}'`);
  for (const k of enc.keys()) pairs.delete(k);
  const shown = ENCRYPT_SHOWN.filter((k) => enc.has(k)).map((k) => `${k}=${enc.get(k)}`);
  const parse = () => {
    try {
      const options = parseEncryptCreateOptions(enc);
      return options.format === undefined ? undefined : options;
    } catch (e) {
      if (e instanceof Qcow2Error) throw new CommandFailed(`${file}: ${e.message}`);
      throw e;
    }
  };
  return { parse, shown };
}

/** The passphrase comes from the secret encrypt.key-secret names (qcrypto_secret_lookup_as_utf8). */
export function encryptionOf(o: EncryptCreateOptions, store: ReturnType<typeof secretStore>, file: string): EncryptCreate {
  try {
    const passphrase = store.lookupUtf8(o.keySecret!);
    return o.format === 'luks' ? { format: 'luks', passphrase, luks: o.luks } : { format: 'aes', passphrase };
  } catch (e) {
    if (e instanceof Qcow2Error) throw new CommandFailed(`${file}: ${e.message}`);
    throw e;
  }
}
