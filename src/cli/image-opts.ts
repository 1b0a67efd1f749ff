/**
 * qemu-img's `--object secret,...` and `--image-opts` (qemu-img.c
 * img_open_opts): secrets are collected first, then an image named by an
 * option string (driver=qcow2,file.filename=F,encrypt.key-secret=ID) is opened
 * with the passphrase that secret holds. Plain file names cannot carry a key
 * secret, so an encrypted image then opens only where QEMU opens it without
 * one (info; not check, io, convert, ...).
 */
import { Qcow2Error } from '../qcow2/errors.js';
import { checkEncryptFormat, parseImageOpts, SecretStore } from '../qcow2/crypto/secrets.js';
import type { Qcow2Image } from '../qcow2/image.js';
import { all, has, last, type ParsedArgs } from './args.js';
import { CommandFailed, describeQcow2Error } from './errors.js';
import { parseFormat, type ImageFormat } from './open.js';

/** The long options every image command takes for these. */
export const IMAGE_OPTS_LONG = { object: true, 'image-opts': false } as const;
export const IMAGE_OPTS_HELP = `  --object secret,id=ID,data=S|file=F[,format=raw|base64]  a secret (as qemu-img --object)
  --image-opts  the image operand is an option string: driver=qcow2,file.filename=F,encrypt.key-secret=ID,
                data-file.filename=D (use D as the external data file instead of the one the header names)`;

/** The options an --image-opts string may carry (the others are refused as QEMU refuses an unknown one). */
const KNOWN_KEYS = [
  'driver',
  'file',
  'file.filename',
  'file.driver',
  'encrypt.key-secret',
  'encrypt.format',
  'data-file',
  'data-file.filename',
  'data-file.driver',
  'data-file.file.filename',
  'data-file.file.driver',
];

function failed(e: unknown, prefix = ''): never {
  if (e instanceof Qcow2Error) throw new CommandFailed(prefix + describeQcow2Error(e));
  throw e;
}

/** The secrets of every --object, in order (a later one may name an earlier one as its keyid). */
export function secretStore(p: ParsedArgs): SecretStore {
  const store = new SecretStore();
  for (const o of all(p, 'object')) {
    try {
      store.add(o);
    } catch (e) {
      failed(e);
    }
  }
  return store;
}

/** The image an operand names: its file, format, and (looked up lazily) its passphrase. */
export interface ImageSpec {
  /** The file name to open. */
  file: string;
  /** What messages call the image: the operand as given (the whole option string with --image-opts). */
  shownAs: string;
  format?: ImageFormat;
  keySecret?: string;
  encryptFormat?: string;
  /** data-file.filename=: the external data file to use instead of the header's (qcow2_do_open's data-file child). */
  dataFile?: string;
  /** The passphrase of encrypt.key-secret; throws qemu's message for an unknown secret. */
  passphrase(): string | undefined;
}

export function imageSpec(p: ParsedArgs, operand: string, command: string, store = secretStore(p), imageOpts = has(p, 'image-opts')): ImageSpec {
  const lookup = (id: string | undefined) => () => {
    if (id === undefined) return undefined;
    try {
      return store.lookupUtf8(id);
    } catch (e) {
      failed(e, `Could not open '${operand}': `);
    }
  };
  if (!imageOpts) {
    return { file: operand, shownAs: operand, format: parseFormat(last(p, 'f'), command), passphrase: lookup(undefined) };
  }
  if (last(p, 'f') !== undefined) throw new CommandFailed('--image-opts and --format are mutually exclusive');
  const o = parseImageOpts(operand);
  if (o.filename === undefined) {
    // A bare name is taken by qemu as a node name to look up.
    if (!operand.includes('=')) throw new CommandFailed(`Could not open '${operand}': Cannot find device='${operand}' nor node-name='${operand}'`);
    throw new CommandFailed(`Could not open '${operand}': A block device must be specified for "file"`);
  }
  const driver = o.driver;
  if (driver !== undefined && driver !== 'qcow2' && driver !== 'raw') {
    throw new CommandFailed(`Could not open '${operand}': Unknown driver '${driver}'`);
  }
  for (const k of o.all.keys()) {
    if (!KNOWN_KEYS.includes(k)) {
      throw new CommandFailed(`Could not open '${operand}': Block format '${driver ?? 'qcow2'}' does not support the option '${k}'`);
    }
  }
  const spec: ImageSpec = { file: o.filename, shownAs: operand, passphrase: lookup(o.keySecret) };
  const dataFile = dataFileOption(o.all, operand);
  if (dataFile !== undefined) spec.dataFile = dataFile;
  if (driver !== undefined) spec.format = driver;
  if (o.keySecret !== undefined) spec.keySecret = o.keySecret;
  if (o.encryptFormat !== undefined) spec.encryptFormat = o.encryptFormat;
  return spec;
}

/**
 * After the open: encrypt.format must match the header, and commands that do
 * data I/O (or check) need the key, as QEMU opens them without NO_IO.
 */
export function checkOpened(img: Qcow2Image, spec: ImageSpec, needKey: boolean): void {
  let info: ReturnType<Qcow2Image['info']>;
  try {
    info = img.info();
  } catch (e) {
    // An encryption header info cannot read (past the end of the file) is, for QEMU, an open that
    // failed (qcow2_do_open reads it): refused in those words, and the image closed, not left locked.
    img.close();
    failed(e, `Could not open '${spec.shownAs}': `);
  }
  const header = info.encrypt === undefined ? undefined : ((info.encrypt as { format: 'aes' | 'luks' }).format);
  try {
    checkEncryptFormat(header, spec.encryptFormat);
  } catch (e) {
    img.close();
    failed(e, `Could not open '${spec.shownAs}': `);
  }
  if (needKey && info.encrypted && spec.keySecret === undefined) {
    img.close();
    throw new CommandFailed(`Could not open '${spec.shownAs}': Parameter 'encrypt.key-secret' is required for cipher`);
  }
}

/**
 * The data file an option string names, as qemu-img 7.2 reads the qcow2
 * driver's data-file child: `data-file.filename=D` (the file protocol,
 * `data-file.driver=file` optional) or a raw layer over it
 * (`data-file.driver=raw,data-file.file.filename=D`). A bare `data-file=X`
 * is a reference to a node by name, which a qemu-img command line has none of.
 */
function dataFileOption(all: Map<string, string>, operand: string): string | undefined {
  const bare = all.get('data-file');
  if (bare !== undefined) throw new CommandFailed(`Could not open '${operand}': Cannot find device='${bare}' nor node-name='${bare}'`);
  const driver = all.get('data-file.driver') ?? 'file';
  const fileDriver = all.get('data-file.file.driver') ?? 'file';
  if ((driver !== 'file' && driver !== 'raw') || fileDriver !== 'file') {
    const d = driver !== 'file' && driver !== 'raw' ? driver : fileDriver;
    throw new CommandFailed(`Could not open '${operand}': data-file driver '${d}' is not supported here (file, or raw over file)`);
  }
  const name = driver === 'raw' ? all.get('data-file.file.filename') : all.get('data-file.filename');
  // QEMU 7.2's wording when the child has a driver but not the file name that driver takes.
  if (name === undefined && (all.has('data-file.driver') || all.has('data-file.file.driver') || all.has('data-file.file.filename'))) {
    const why = driver === 'raw' ? 'A block device must be specified for "file"' : "The 'file' block driver requires a file name";
    throw new CommandFailed(`Could not open '${operand}': ${why}`);
  }
  return name;
}
