/**
 * Secrets and image options in qemu-img's own syntax:
 *   --object secret,id=ID,data=...|file=...[,format=raw|base64][,keyid=ID,iv=B64]
 *   --object '{"qom-type":"secret","id":"ID","data":"..."}'
 *   -o encrypt.format=luks,encrypt.key-secret=ID,...
 *   --image-opts driver=qcow2,file.filename=F,encrypt.key-secret=ID
 * Option strings follow QemuOpts (util/qemu-option.c): comma-separated
 * key=value pairs, ",," for a literal comma, later keys override earlier ones.
 * Secret semantics and messages follow crypto/secret_common.c and secret.c.
 * Pure apart from reading file= secrets, which goes through an injectable reader.
 */
import { createDecipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { InvalidArgumentError, UnsupportedFeatureError } from '../errors.js';
import type { LuksCreateOptions } from './luks.js';

/** A bad --object, -o or --image-opts argument; the message is qemu-img's where it has one. */
export class SecretError extends InvalidArgumentError {}

/** Splits a QemuOpts string into ordered pairs; a bare word gets value undefined. */
export function splitOptionString(s: string): [string, string | undefined][] {
  const out: [string, string | undefined][] = [];
  let cur = '';
  const parts: string[] = [];
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (ch === ',') {
      if (s[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      parts.push(cur);
      cur = '';
    } else cur += ch;
  }
  parts.push(cur);
  for (const p of parts) {
    if (p === '') continue;
    const eq = p.indexOf('=');
    out.push(eq < 0 ? [p, undefined] : [p.slice(0, eq), p.slice(eq + 1)]);
  }
  return out;
}

/**
 * Parses key=value options into a map. `implied` names the key a leading bare
 * word sets (qom-type for --object). Other bare words mean word=on in QemuOpts
 * (-o, --image-opts) but are an error in keyval syntax (--object, keyval_parse).
 */
export function parseOptionString(s: string, implied?: string, keyval = false): Map<string, string> {
  const m = new Map<string, string>();
  splitOptionString(s).forEach(([k, v], i) => {
    if (v === undefined) {
      if (i === 0 && implied !== undefined) m.set(implied, k);
      else if (keyval) throw new SecretError(`Expected '=' after parameter '${k}'`);
      else m.set(k, 'on');
    } else m.set(k, v);
  });
  return m;
}

export interface SecretObject {
  id: string;
  data?: string;
  file?: string;
  format: 'raw' | 'base64';
  keyid?: string;
  iv?: string;
}

const SECRET_PROPS = new Set(['qom-type', 'id', 'data', 'file', 'format', 'keyid', 'iv', 'loaded']);

/** Parses one --object argument (QemuOpts or JSON form); only the secret type is known. */
export function parseSecretObject(arg: string): SecretObject {
  let props: Map<string, string>;
  if (arg.trimStart().startsWith('{')) {
    let json: unknown;
    try {
      json = JSON.parse(arg);
    } catch (e) {
      throw new SecretError(`--object JSON is invalid: ${(e as Error).message}`);
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new SecretError('--object JSON must be an object');
    props = new Map();
    for (const [k, v] of Object.entries(json)) {
      if (typeof v !== 'string') throw new SecretError(`Invalid parameter type for '${k}', expected: string`);
      props.set(k, v);
    }
  } else props = parseOptionString(arg, 'qom-type', true);
  const type = props.get('qom-type');
  if (type === undefined) throw new SecretError("Parameter 'qom-type' is missing");
  if (type !== 'secret') {
    throw new UnsupportedFeatureError(`Parameter 'qom-type' does not accept value '${type}' (only secret objects are supported)`);
  }
  for (const k of props.keys()) if (!SECRET_PROPS.has(k)) throw new SecretError(`Parameter '${k}' is unexpected`);
  const id = props.get('id');
  if (id === undefined) throw new SecretError("Parameter 'id' is missing");
  const format = props.get('format') ?? 'raw';
  if (format !== 'raw' && format !== 'base64') throw new SecretError(`Parameter 'format' does not accept value '${format}'`);
  const data = props.get('data');
  const file = props.get('file');
  if (data !== undefined && file !== undefined) throw new SecretError("'file' and 'data' are mutually exclusive");
  if (data === undefined && file === undefined) throw new SecretError("Either 'file' or 'data' must be provided");
  const o: SecretObject = { id, format };
  if (data !== undefined) o.data = data;
  if (file !== undefined) o.file = file;
  const keyid = props.get('keyid');
  if (keyid !== undefined) o.keyid = keyid;
  const iv = props.get('iv');
  if (iv !== undefined) o.iv = iv;
  return o;
}

const BASE64_CHARS = /^[A-Za-z0-9+/=\n]*$/;

/** qbase64_decode: only the alphabet is checked, decoding is lenient as glib's. */
export function decodeBase64(s: string): Uint8Array {
  if (s.includes('\0')) throw new SecretError('Base64 data contains embedded NUL characters');
  if (!BASE64_CHARS.test(s)) throw new SecretError('Base64 data contains invalid characters');
  return Uint8Array.from(Buffer.from(s, 'base64'));
}

export type FileReader = (path: string) => Uint8Array;

/** The secrets given with --object, looked up by id as QEMU's object tree does. */
export class SecretStore {
  private readonly objects = new Map<string, SecretObject>();
  private readonly values = new Map<string, Uint8Array>();

  constructor(private readonly readFile: FileReader = (p) => readFileSync(p)) {}

  /** Adds one --object argument; secrets are loaded (and decrypted) on add, as QEMU completes objects in order. */
  add(arg: string): SecretObject {
    const o = parseSecretObject(arg);
    if (this.objects.has(o.id)) throw new SecretError(`attempt to add duplicate property '${o.id}' to object (type 'container')`);
    this.values.set(o.id, this.load(o));
    this.objects.set(o.id, o);
    return o;
  }

  has(id: string): boolean {
    return this.values.has(id);
  }

  /** The raw secret bytes. */
  lookup(id: string): Uint8Array {
    const v = this.values.get(id);
    if (v === undefined) throw new SecretError(`No secret with id '${id}'`);
    return v;
  }

  /** The secret as a passphrase (qcrypto_secret_lookup_as_utf8). */
  lookupUtf8(id: string): string {
    const v = this.lookup(id);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(v);
    } catch {
      throw new SecretError(`Data from secret ${id} is not valid UTF-8`);
    }
  }

  private load(o: SecretObject): Uint8Array {
    let input: Uint8Array;
    if (o.file !== undefined) {
      try {
        input = this.readFile(o.file);
      } catch (e) {
        throw new SecretError(`Unable to read ${o.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
    } else input = Buffer.from(o.data!, 'utf8');
    if (o.keyid !== undefined) return this.decrypt(o, input);
    return o.format === 'base64' ? decodeBase64(Buffer.from(input).toString('latin1')) : input;
  }

  /**
   * qcrypto_secret_decrypt: AES-256-CBC with a 32-byte key secret, a base64
   * 16-byte IV and PKCS#7 padding; `format` says how the ciphertext is encoded,
   * the plaintext is used as it comes out.
   */
  private decrypt(o: SecretObject, input: Uint8Array): Uint8Array {
    const key = this.lookup(o.keyid!);
    if (key.length !== 32) throw new SecretError('Key should be 32 bytes in length');
    if (o.iv === undefined) throw new SecretError('IV is required to decrypt secret');
    const iv = decodeBase64(o.iv);
    if (iv.length !== 16) throw new SecretError(`IV should be 16 bytes in length not ${iv.length}`);
    const ct = o.format === 'base64' ? decodeBase64(Buffer.from(input).toString('latin1')) : input;
    let plain: Buffer;
    try {
      const d = createDecipheriv('aes-256-cbc', key, iv);
      plain = Buffer.concat([d.update(ct), d.final()]);
    } catch {
      throw new SecretError(`Unable to decrypt secret '${o.id}' with key '${o.keyid}'`);
    }
    return Uint8Array.from(plain);
  }
}

export interface ImageOpts {
  driver?: string;
  filename?: string;
  keySecret?: string;
  encryptFormat?: string;
  /** Every option as given, dotted keys included. */
  all: Map<string, string>;
}

/** --image-opts driver=qcow2,file.filename=F,encrypt.key-secret=ID (also accepts filename= for the top-level file). */
export function parseImageOpts(s: string): ImageOpts {
  const all = parseOptionString(s);
  const o: ImageOpts = { all };
  const driver = all.get('driver');
  if (driver !== undefined) o.driver = driver;
  const filename = all.get('file.filename') ?? all.get('file');
  if (filename !== undefined) o.filename = filename;
  const keySecret = all.get('encrypt.key-secret');
  if (keySecret !== undefined) o.keySecret = keySecret;
  const fmt = all.get('encrypt.format');
  if (fmt !== undefined) o.encryptFormat = fmt;
  return o;
}

/** What an image header says against what the options ask (qcow2_update_options_part2's check). */
export function checkEncryptFormat(headerFormat: 'aes' | 'luks' | undefined, optionFormat: string | undefined): void {
  if (optionFormat === undefined) return;
  if (optionFormat !== 'aes' && optionFormat !== 'luks') {
    throw new SecretError(`Parameter 'encrypt.format' does not accept value '${optionFormat}'`);
  }
  if (headerFormat === undefined) throw new SecretError(`No encryption in image header, but options specified format '${optionFormat}'`);
  if (headerFormat !== optionFormat) {
    throw new SecretError(`Header reported '${headerFormat}' encryption format but options specify '${optionFormat}'`);
  }
}

export interface EncryptCreateOptions {
  format?: 'aes' | 'luks';
  keySecret?: string;
  luks: LuksCreateOptions;
}

const ENCRYPT_KEYS = new Set([
  'encrypt.format',
  'encrypt.key-secret',
  'encrypt.cipher-alg',
  'encrypt.cipher-mode',
  'encrypt.hash-alg',
  'encrypt.iter-time',
  'encrypt.ivgen-alg',
  'encrypt.ivgen-hash-alg',
  'encryption',
]);

/** True for the -o keys this module interprets. */
export function isEncryptOption(key: string): boolean {
  return ENCRYPT_KEYS.has(key);
}

/** The encryption part of qemu-img create -o options (qcow2_co_create_opts; encryption=on is the deprecated spelling of aes). */
export function parseEncryptCreateOptions(opts: Map<string, string>): EncryptCreateOptions {
  const out: EncryptCreateOptions = { luks: {} };
  const legacy = opts.get('encryption');
  let format = opts.get('encrypt.format');
  if (legacy !== undefined) {
    if (format !== undefined) throw new SecretError("'encrypt.format' and its alias 'encryption' can't be used at the same time");
    if (legacy !== 'on' && legacy !== 'off') throw new SecretError(`Parameter 'encryption' expects 'on' or 'off'`);
    if (legacy === 'on') format = 'aes';
  }
  if (format !== undefined) {
    // qemu-img names the option 'format' here (the encrypt. prefix is stripped before the check).
    if (format !== 'aes' && format !== 'luks') throw new SecretError(`Parameter 'format' does not accept value '${format}'`);
    out.format = format;
  }
  const ks = opts.get('encrypt.key-secret');
  if (ks !== undefined) out.keySecret = ks;
  const luksOnly: [string, keyof LuksCreateOptions][] = [
    ['encrypt.cipher-alg', 'cipherAlg'],
    ['encrypt.cipher-mode', 'cipherMode'],
    ['encrypt.hash-alg', 'hashAlg'],
    ['encrypt.ivgen-alg', 'ivgenAlg'],
    ['encrypt.ivgen-hash-alg', 'ivgenHashAlg'],
  ];
  for (const [k, f] of luksOnly) {
    const v = opts.get(k);
    if (v !== undefined) (out.luks as Record<string, unknown>)[f] = v;
  }
  const it = opts.get('encrypt.iter-time');
  if (it !== undefined) {
    if (!/^\d+$/.test(it)) throw new SecretError("Parameter 'encrypt.iter-time' expects a number");
    if (Number(it) < 1) throw new SecretError("Parameter 'encrypt.iter-time' must be at least 1 ms");
    out.luks.iterTimeMs = Number(it);
  }
  const luksGiven = [...luksOnly.map(([k]) => k), 'encrypt.iter-time'].filter((k) => opts.has(k));
  if (out.format === undefined && (ks !== undefined || luksGiven.length > 0)) throw new SecretError("Parameter 'encrypt.format' is missing");
  if (out.format === 'aes' && luksGiven.length > 0) throw new SecretError(`Parameter '${luksGiven[0]}' is unexpected`);
  if (out.format !== undefined && ks === undefined) throw new SecretError("Parameter 'encrypt.key-secret' is required for cipher");
  return out;
}

export interface EncryptAmendOptions {
  state: 'active' | 'inactive';
  newSecret?: string;
  oldSecret?: string;
  keyslot?: number;
  iterTimeMs?: number;
}

/** qemu-img amend -o encrypt.* for LUKS key slots (QCryptoBlockAmendOptionsLUKS and its checks in block-luks.c). */
export function parseEncryptAmendOptions(opts: Map<string, string>): EncryptAmendOptions {
  const state = opts.get('encrypt.state');
  if (state === undefined) throw new SecretError("Parameter 'state' is missing");
  if (state !== 'active' && state !== 'inactive') throw new SecretError(`Parameter 'state' does not accept value '${state}'`);
  const out: EncryptAmendOptions = { state };
  const ns = opts.get('encrypt.new-secret');
  const os = opts.get('encrypt.old-secret');
  if (state === 'active') {
    if (ns === undefined) throw new SecretError("'new-secret' is required to activate a keyslot");
    if (os !== undefined) throw new SecretError("'old-secret' must not be given when activating keyslots");
  } else if (ns !== undefined) throw new SecretError("'new-secret' must not be given when erasing keyslots");
  if (ns !== undefined) out.newSecret = ns;
  if (os !== undefined) out.oldSecret = os;
  const ks = opts.get('encrypt.keyslot');
  if (ks !== undefined) {
    if (!/^-?\d+$/.test(ks)) throw new SecretError("Parameter 'keyslot' expects an integer");
    out.keyslot = Number(ks);
  }
  const it = opts.get('encrypt.iter-time');
  if (it !== undefined) {
    if (!/^\d+$/.test(it)) throw new SecretError("Parameter 'encrypt.iter-time' expects a number");
    out.iterTimeMs = Number(it);
  }
  return out;
}
