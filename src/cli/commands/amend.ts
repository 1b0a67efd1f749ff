import { parseEncryptAmendOptions, type SecretStore } from '../../qcow2/crypto/secrets.js';
import type { EncryptAmend } from '../../qcow2/crypto/amend-slots.js';
import type { AmendOptions } from '../../qcow2/amend.js';
import { Qcow2Error } from '../../qcow2/errors.js';
import { all, has, parseArgs } from '../args.js';
import { checkOpened, IMAGE_OPTS_LONG, imageSpec, secretStore } from '../image-opts.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_FAILURE, EXIT_OK, UsageError } from '../errors.js';
import { resizeAmount } from './resize.js';
import { openQcow2, reason } from '../open.js';
import { parseBool, parseOptionList, parseRefcountBits, wantsOptionHelp } from '../options.js';

export const AMEND_HELP = `Usage: qcow2-harness amend [-q] [-f fmt] -o options FILE

Changes format options of an existing qcow2 image in place, as 'qemu-img amend'.
Options: refcount_bits=1|2|4|8|16|32|64, compat=0.10|1.1, lazy_refcounts=on|off;
LUKS key slots: encrypt.state=active|inactive, encrypt.new-secret=ID,
encrypt.old-secret=ID, encrypt.keyslot=N, encrypt.iter-time=MS (the image named
with --image-opts ...,encrypt.key-secret=ID, secrets given with --object;
--force overwrites an active slot or erases the last one).
A change that cannot be made (a refcount that does not fit a narrower width,
something v2 cannot express) is refused and the image left as it was.
Exit codes: 0 success, 1 failure (a refused change, a bad command line, an
image that cannot be opened, is invalid, corrupt or unsupported, an I/O
error), 70 an internal error.
`;

const CREATE_ONLY = new Set(['cluster_size', 'extended_l2', 'compression_type', 'preallocation', 'encryption']);
/** The encrypt.* keys qcow2_amend_options takes (LUKS key slots); the rest only make sense at creation. */
const ENCRYPT_AMENDABLE = new Set(['encrypt.state', 'encrypt.new-secret', 'encrypt.old-secret', 'encrypt.keyslot', 'encrypt.iter-time']);

function createOnly(k: string): CommandFailed {
  return new CommandFailed(`Invalid parameter '${k}'`, EXIT_FAILURE, 'This option is only supported for image creation');
}

export async function amendCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { short: { f: true, o: true, q: false, p: false }, long: { force: false, ...IMAGE_OPTS_LONG } }, 'amend');
  if (has(p, 'help')) {
    ctx.stdout(AMEND_HELP);
    return EXIT_OK;
  }
  const texts = all(p, 'o');
  if (wantsOptionHelp(texts)) {
    ctx.stdout('Amend options for qcow2:\n  compat=<str>  lazy_refcounts=<bool (on/off)>  refcount_bits=<num>  data_file=<str>  data_file_raw=<bool (on/off)>\n');
    return EXIT_OK;
  }
  if (texts.length === 0) throw new UsageError('Must specify options (-o)', 'amend');
  if (p.operands.length !== 1) throw new UsageError(p.operands.length ? `Unexpected argument: ${p.operands[1]}` : 'Expecting one image file name', 'amend');
  const store = secretStore(p);
  const spec = imageSpec(p, p.operands[0]!, 'amend', store);
  const file = spec.file;
  const o: AmendOptions = {};
  const pairs = parseOptionList(texts);
  for (const k of pairs.keys()) if (k.startsWith('encrypt.') && !ENCRYPT_AMENDABLE.has(k)) throw createOnly(k);
  let newSize: number | undefined;
  const encrypt = encryptAmendFrom(pairs, store, has(p, 'force'));
  if (encrypt) o.encrypt = encrypt;
  for (const [k, v] of pairs) {
    if (k.startsWith('encrypt.')) continue;
    // qcow2_amend_options words these without create's "FILE: " prefix.
    if (k === 'refcount_bits') o.refcountBits = unprefixed(file, () => parseRefcountBits(v, file));
    else if (k === 'compat') o.compat = amendCompat(v);
    else if (k === 'lazy_refcounts') o.lazyRefcounts = unprefixed(file, () => parseBool(k, v, file));
    else if (k === 'data_file') o.dataFile = v;
    else if (k === 'data_file_raw') o.dataFileRaw = unprefixed(file, () => parseBool(k, v, file));
    else if (CREATE_ONLY.has(k)) throw createOnly(k);
    // qcow2_amend_options truncates to the new size (shrinking too, without --shrink).
    else if (k === 'size') newSize = resizeAmount(v);
    else if (k === 'backing_file' || k === 'backing_fmt') throw new CommandFailed('Cannot amend the backing file', EXIT_FAILURE, "You can use 'qemu-img rebase' instead.");
    else throw new CommandFailed(`Invalid parameter '${k}'`);
  }
  const img = openQcow2(ctx, file, { format: spec.format, passphrase: spec.passphrase(), name: spec.shownAs, dataFile: spec.dataFile });
  checkOpened(img, spec, true);
  try {
    const cur = img.info();
    if (o.lazyRefcounts && (o.compat ?? cur.compat) === '0.10') {
      throw new CommandFailed('Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
    }
    const rc = o.refcountBits;
    if (rc !== undefined && rc !== cur.refcountBits && rc !== 16 && (o.compat ?? cur.compat) === '0.10') {
      throw new CommandFailed('Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
    }
    try {
      img.amend(o);
      if (newSize !== undefined) img.resize(newSize, { shrink: true });
    } catch (e) {
      // qcow2_amend_options' own words, without the category reason() adds ("unsupported feature: ...").
      throw new CommandFailed(e instanceof Qcow2Error && !(e as { code?: string }).code ? e.message : reason(e));
    }
  } finally {
    img.close();
  }
  return EXIT_OK;
}

/** The encrypt.* part of amend -o (LUKS key slots), with the secrets looked up. */
function encryptAmendFrom(pairs: Map<string, string>, store: SecretStore, force: boolean): EncryptAmend | undefined {
  const enc = new Map([...pairs].filter(([k]) => k.startsWith('encrypt.')));
  if (enc.size === 0) return undefined;
  try {
    const a = parseEncryptAmendOptions(enc);
    const out: EncryptAmend = { state: a.state, force };
    if (a.newSecret !== undefined) out.newPassphrase = store.lookupUtf8(a.newSecret);
    if (a.oldSecret !== undefined) out.oldPassphrase = store.lookupUtf8(a.oldSecret);
    if (a.keyslot !== undefined) out.keyslot = a.keyslot;
    if (a.iterTimeMs !== undefined) out.iterTimeMs = a.iterTimeMs;
    return out;
  } catch (e) {
    if (e instanceof Qcow2Error) throw new CommandFailed(e.message);
    throw e;
  }
}

function unprefixed<T>(file: string, parse: () => T): T {
  try {
    return parse();
  } catch (e) {
    if (e instanceof CommandFailed && e.message.startsWith(`${file}: `)) throw new CommandFailed(e.message.slice(file.length + 2));
    throw e;
  }
}

function amendCompat(v: string): '0.10' | '1.1' {
  if (v === '0.10' || v === 'v2') return '0.10';
  if (v === '1.1' || v === 'v3') return '1.1';
  throw new CommandFailed(`Unknown compatibility level ${v}`);
}
