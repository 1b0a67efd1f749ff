/**
 * `qemu-img measure -o` as QEMU 7.2 reads it: first qemu_opts_do_parse
 * checks every option against the target driver's creation options (and the
 * file protocol's), by type, each error followed by "Invalid options for
 * file format"; then qcow2_measure reads the ones that change sizes, with its
 * own checks and words (which differ from qemu-img create's).
 */
import { MAX_CLUSTER_BITS, MAX_REFCOUNT_ORDER, MIN_CLUSTER_BITS, MIN_EXTL2_CLUSTER_BITS } from '../qcow2/format/constants.js';
import { CommandFailed, EXIT_FAILURE } from './errors.js';
import { parseSize } from './sizes.js';

type OptType = 'size' | 'str' | 'bool' | 'number';

/** bdrv_file's creation options, which img_measure appends to every driver's. */
const FILE_OPTS: Record<string, OptType> = { size: 'size', preallocation: 'str', nocow: 'bool', extent_size_hint: 'size' };

/** qcow2_create_opts (block/qcow2.c), by QemuOptType. */
const QCOW2_OPTS: Record<string, OptType> = {
  ...FILE_OPTS,
  compat: 'str',
  backing_file: 'str',
  backing_fmt: 'str',
  encryption: 'bool',
  'encrypt.format': 'str',
  'encrypt.key-secret': 'str',
  'encrypt.cipher-alg': 'str',
  'encrypt.cipher-mode': 'str',
  'encrypt.ivgen-alg': 'str',
  'encrypt.ivgen-hash-alg': 'str',
  'encrypt.hash-alg': 'str',
  'encrypt.iter-time': 'number',
  cluster_size: 'size',
  lazy_refcounts: 'bool',
  refcount_bits: 'number',
  compression_type: 'str',
  data_file: 'str',
  data_file_raw: 'bool',
  extended_l2: 'bool',
};

export interface MeasureOptions {
  extendedL2: boolean;
  clusterSize: number;
  version: 2 | 3;
  refcountBits: number;
  preallocation: 'off' | 'metadata' | 'falloc' | 'full';
  backingFile: boolean;
  luks: boolean;
  /** The encrypt.* options, for the LUKS header's size. */
  encrypt: Map<string, string>;
}

const BOOLS: Record<string, boolean> = { on: true, yes: true, true: true, y: true, off: false, no: false, false: false, n: false };

/** One value of its QemuOptType, or qemu_opts_do_parse's error and its hint lines. */
function parsed(key: string, type: OptType, v: string, fmt: string): number | boolean | string {
  const invalid = `qcow2-harness: Invalid options for file format '${fmt}'`;
  if (type === 'bool') {
    if (v in BOOLS) return BOOLS[v]!;
    throw new CommandFailed(`Parameter '${key}' expects 'on' or 'off'`, EXIT_FAILURE, invalid);
  }
  if (type === 'number') {
    if (/^\s*(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)$/.test(v)) return Number(v.trim().replace(/^0([0-7]+)$/, '0o$1'));
    throw new CommandFailed(`Parameter '${key}' expects a number`, EXIT_FAILURE, invalid);
  }
  if (type === 'size') {
    const n = parseSize(v);
    if (n !== null) return n;
    throw new CommandFailed(
      `Parameter '${key}' expects a non-negative number below 2^64`,
      EXIT_FAILURE,
      `Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.\n${invalid}`,
    );
  }
  return v;
}

/** Both phases; fmt is the target driver (qcow2 or raw). */
export function parseMeasureOptions(pairs: Map<string, string>, fmt: 'qcow2' | 'raw'): MeasureOptions {
  const table = fmt === 'qcow2' ? QCOW2_OPTS : FILE_OPTS;
  const values = new Map<string, number | boolean | string>();
  for (const [k, v] of pairs) {
    const type = table[k];
    if (type === undefined) throw new CommandFailed(`Invalid parameter '${k}'`, EXIT_FAILURE, `qcow2-harness: Invalid options for file format '${fmt}'`);
    values.set(k, parsed(k, type, v, fmt));
  }
  const encrypt = new Map([...pairs].filter(([k]) => k.startsWith('encrypt.')));
  const o: MeasureOptions = { extendedL2: false, clusterSize: 65536, version: 3, refcountBits: 16, preallocation: 'off', backingFile: false, luks: false, encrypt };
  if (fmt === 'raw') return o;
  // qcow2_measure's order: extended_l2, cluster_size, compat, refcount_bits, preallocation.
  o.extendedL2 = (values.get('extended_l2') as boolean | undefined) ?? false;
  const cs = (values.get('cluster_size') as number | undefined) ?? 65536;
  const bits = Math.log2(cs);
  if (!Number.isInteger(bits) || bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
    throw new CommandFailed(`Cluster size must be a power of two between ${2 ** MIN_CLUSTER_BITS} and ${2 ** (MAX_CLUSTER_BITS - 10)}k`);
  }
  if (o.extendedL2 && bits < MIN_EXTL2_CLUSTER_BITS) {
    throw new CommandFailed(`Extended L2 entries are only supported with cluster sizes of at least ${2 ** MIN_EXTL2_CLUSTER_BITS} bytes`);
  }
  o.clusterSize = cs;
  const compat = values.get('compat') as string | undefined;
  if (compat !== undefined && compat !== '0.10' && compat !== '1.1') throw new CommandFailed(`Invalid compatibility level: '${compat}'`);
  o.version = compat === '0.10' ? 2 : 3;
  const rb = (values.get('refcount_bits') as number | undefined) ?? 16;
  if (rb > 2 ** MAX_REFCOUNT_ORDER || rb <= 0 || (rb & (rb - 1)) !== 0) throw new CommandFailed('Refcount width must be a power of two and may not exceed 64 bits');
  if (o.version < 3 && rb !== 16) {
    throw new CommandFailed('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  o.refcountBits = rb;
  const pre = (values.get('preallocation') as string | undefined) ?? 'off';
  if (pre !== 'off' && pre !== 'metadata' && pre !== 'falloc' && pre !== 'full') throw new CommandFailed(`invalid parameter value: ${pre}`);
  o.preallocation = pre;
  o.backingFile = values.has('backing_file');
  o.luks = values.get('encrypt.format') === 'luks';
  return o;
}
