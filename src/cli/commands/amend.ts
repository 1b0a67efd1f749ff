import { parseEncryptAmendOptions, type SecretStore } from '../../qcow2/crypto/secrets.js';
import type { EncryptAmend } from '../../qcow2/crypto/amend-slots.js';
import type { AmendOptions } from '../../qcow2/amend.js';
import { Qcow2Error } from '../../qcow2/errors.js';
import { all, has, parseArgs } from '../args.js';
import { checkOpened, IMAGE_OPTS_LONG, imageSpec, secretStore } from '../image-opts.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_OK, UsageError } from '../errors.js';
import { openQcow2, reason } from '../open.js';
import { parseBool, parseCompat, parseOptionList, parseRefcountBits, wantsOptionHelp } from '../options.js';

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
  const encrypt = encryptAmendFrom(pairs, store, has(p, 'force'));
  if (encrypt) o.encrypt = encrypt;
  for (const [k, v] of pairs) {
    if (k.startsWith('encrypt.')) continue;
    if (k === 'refcount_bits') o.refcountBits = parseRefcountBits(v, file).valueOf();
    else if (k === 'compat') o.compat = parseCompat(v, file);
    else if (k === 'lazy_refcounts') o.lazyRefcounts = parseBool(k, v, file);
    else if (k === 'data_file') o.dataFile = v;
    else if (k === 'data_file_raw') o.dataFileRaw = parseBool(k, v, file);
    else if (CREATE_ONLY.has(k)) throw new CommandFailed(`Invalid parameter '${k}'; This option is only supported for image creation`);
    else if (k === 'size' || k === 'backing_file' || k === 'backing_fmt') throw new CommandFailed(`Changing '${k}' with amend is not supported by qcow2-harness (use resize for the size)`);
    else throw new CommandFailed(`Invalid parameter '${k}'`);
  }
  const img = openQcow2(ctx, file, { format: spec.format, passphrase: spec.passphrase(), name: spec.shownAs, dataFile: spec.dataFile });
  checkOpened(img, spec, true);
  try {
    const cur = img.info();
    if (o.lazyRefcounts && (o.compat ?? cur.compat) === '0.10') {
      throw new CommandFailed('Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
    }
    try {
      img.amend(o);
    } catch (e) {
      throw new CommandFailed(reason(e));
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
