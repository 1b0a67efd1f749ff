import { MAX_CLUSTER_BITS, MAX_REFCOUNT_ORDER, MIN_CLUSTER_BITS } from '../qcow2/format/constants.js';
import type { BackingFormat, CompatLevel, CompressionType, CreateOptions } from '../qcow2/types.js';
import { CommandFailed } from './errors.js';
import { parseSize } from './sizes.js';

/**
 * `-o key=value,...` as qemu-img reads it: commas separate pairs, a doubled
 * comma is a literal one (so file names may contain commas), several `-o`
 * accumulate, later keys win.
 */
export function parseOptionList(texts: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const text of texts) {
    let cur = '';
    const parts: string[] = [];
    for (let i = 0; i < text.length; i++) {
      if (text[i] === ',') {
        if (text[i + 1] === ',') {
          cur += ',';
          i++;
        } else {
          parts.push(cur);
          cur = '';
        }
      } else cur += text[i];
    }
    parts.push(cur);
    for (const p of parts) {
      if (p === '') continue;
      const eq = p.indexOf('=');
      // qemu treats a bare key as key=on (a boolean flag).
      if (eq < 0) out.set(p, 'on');
      else out.set(p.slice(0, eq), p.slice(eq + 1));
    }
  }
  return out;
}

export function wantsOptionHelp(texts: readonly string[]): boolean {
  return texts.some((t) => t === 'help' || t === '?');
}

export const CREATE_OPTION_HELP = `Supported qcow2 options:
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image (qcow2 or raw)
  cluster_size=<size>    - qcow2 cluster size (512 to 2M, a power of two)
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  compression_type=<str> - Compression method used for image cluster compression (zlib, zstd)
  extended_l2=<bool (on/off)> - Extended L2 tables
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  preallocation=<str>    - Preallocation mode (allowed values: off, metadata)
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size
`;

/** qemu's boolean spellings. */
export function parseBool(key: string, v: string, file: string): boolean {
  if (['on', 'yes', 'true', 'y'].includes(v)) return true;
  if (['off', 'no', 'false', 'n'].includes(v)) return false;
  throw new CommandFailed(`${file}: Parameter '${key}' expects 'on' or 'off'`);
}

export function parseCompat(v: string, file: string): CompatLevel {
  if (v === '0.10' || v === 'v2') return '0.10';
  if (v === '1.1' || v === 'v3') return '1.1';
  throw new CommandFailed(`${file}: Parameter 'version' does not accept value '${v}'`);
}

export function parseRefcountBits(v: string, file: string): number {
  if (!/^\d+$/.test(v)) throw new CommandFailed(`${file}: Parameter 'refcount_bits' expects a number`);
  const n = Number(v);
  if (n < 1 || n > 2 ** MAX_REFCOUNT_ORDER || (n & (n - 1)) !== 0) {
    throw new CommandFailed(`${file}: Refcount width must be a power of two and may not exceed 64 bits`);
  }
  return n;
}

function parseClusterSize(v: string, file: string): number {
  const n = parseSize(v);
  if (n === null) {
    throw new CommandFailed(`${file}: Parameter 'cluster_size' expects a non-negative number below 2^64`);
  }
  if (n < 2 ** MIN_CLUSTER_BITS || n > 2 ** MAX_CLUSTER_BITS || (n & (n - 1)) !== 0) {
    throw new CommandFailed(`${file}: Cluster size must be a power of two between 512 and 2048k`);
  }
  return n;
}

/**
 * Turns `-o` pairs into CreateOptions, with qemu-img's checks and wording.
 * `size` stays undefined when not given (the caller may take it from a
 * backing file). Cross-option rules are checked here so the user hears about
 * them in qemu-img's words before the engine is involved. The encrypt.*
 * options are taken out first by takeEncryptOptions (create, convert).
 */
export function createOptionsFrom(
  opts: Map<string, string>,
  file: string,
): Omit<CreateOptions, 'size'> & { size?: number } {
  const o: Omit<CreateOptions, 'size'> & { size?: number } = {};
  for (const [key, v] of opts) {
    switch (key) {
      case 'size': {
        const n = parseSize(v);
        if (n === null) throw new CommandFailed(`${file}: Parameter 'size' expects a non-negative number below 2^64`);
        o.size = n;
        break;
      }
      case 'cluster_size':
        o.clusterSize = parseClusterSize(v, file);
        break;
      case 'refcount_bits':
        o.refcountBits = parseRefcountBits(v, file);
        break;
      case 'compat':
        o.compat = parseCompat(v, file);
        break;
      case 'lazy_refcounts':
        o.lazyRefcounts = parseBool(key, v, file);
        break;
      case 'extended_l2':
        o.extendedL2 = parseBool(key, v, file);
        break;
      case 'compression_type':
        if (v !== 'zlib' && v !== 'zstd') {
          throw new CommandFailed(`${file}: Parameter 'compression-type' does not accept value '${v}'`);
        }
        o.compressionType = v as CompressionType;
        break;
      case 'backing_file':
        o.backingFile = v;
        break;
      case 'backing_fmt':
        if (v !== 'qcow2' && v !== 'raw') {
          throw new CommandFailed(`${file}: backing format '${v}' is not supported (qcow2 or raw)`);
        }
        o.backingFormat = v as BackingFormat;
        break;
      case 'preallocation':
        if (v !== 'off' && v !== 'metadata') {
          if (v === 'falloc' || v === 'full') {
            throw new CommandFailed(`${file}: preallocation mode '${v}' is not supported by qcow2-harness (off, metadata)`);
          }
          throw new CommandFailed(`${file}: Parameter 'preallocation' does not accept value '${v}'`);
        }
        o.preallocation = v;
        break;
      case 'data_file':
        o.dataFile = v;
        break;
      case 'data_file_raw':
        o.dataFileRaw = parseBool(key, v, file);
        break;
      default:
        throw new CommandFailed(`${file}: Invalid parameter '${key}'`);
    }
  }
  const v3 = (o.compat ?? '1.1') === '1.1';
  const hint = '(use version=v3 or greater)';
  if (!v3 && o.refcountBits !== undefined && o.refcountBits !== 16) {
    throw new CommandFailed(`${file}: Different refcount widths than 16 bits require compatibility level 1.1 or above ${hint}`);
  }
  if (!v3 && o.lazyRefcounts) {
    throw new CommandFailed(`${file}: Lazy refcounts only supported with compatibility level 1.1 and above ${hint}`);
  }
  if (!v3 && o.extendedL2) {
    throw new CommandFailed(`${file}: Extended L2 entries are only supported with compatibility level 1.1 and above ${hint}`);
  }
  if (o.extendedL2 && (o.clusterSize ?? 65536) < 16384) {
    throw new CommandFailed(`${file}: Extended L2 entries are only supported with cluster sizes of at least 16384 bytes`);
  }
  if (!v3 && o.compressionType === 'zstd') {
    throw new CommandFailed(`${file}: Non-zlib compression type is only supported with compatibility level 1.1 and above ${hint}`);
  }
  return o;
}

/** The "Formatting ..." line qemu-img create prints, in its key order. */
export function formattingLine(file: string, fmt: string, o: CreateOptions, compatAsGiven?: string, encryptShown: readonly string[] = []): string {
  if (fmt === 'raw') return `Formatting '${file}', fmt=raw size=${o.size}`;
  // qemu-img's order, which follows its option table, not the alphabet.
  const parts = [...encryptShown, `cluster_size=${o.clusterSize ?? 65536}`, `extended_l2=${o.extendedL2 ? 'on' : 'off'}`];
  if (o.preallocation !== undefined) parts.push(`preallocation=${o.preallocation}`);
  parts.push(`compression_type=${o.compressionType ?? 'zlib'}`, `size=${o.size}`);
  // qemu-img echoes compat only when given, and as it was spelled (v3, 1.1, ...).
  if (compatAsGiven !== undefined) parts.push(`compat=${compatAsGiven}`);
  if (o.backingFile !== undefined) parts.push(`backing_file=${o.backingFile}`);
  if (o.backingFormat !== undefined) parts.push(`backing_fmt=${o.backingFormat}`);
  if (o.dataFile !== undefined) parts.push(`data_file=${o.dataFile}`);
  if (o.dataFileRaw !== undefined) parts.push(`data_file_raw=${o.dataFileRaw ? 'on' : 'off'}`);
  parts.push(`lazy_refcounts=${o.lazyRefcounts ? 'on' : 'off'}`, `refcount_bits=${o.refcountBits ?? 16}`);
  return `Formatting '${file}', fmt=qcow2 ${parts.join(' ')}`;
}
