/** Thin, typed wrappers over qemu-img subcommands. Every call has a timeout (HangError). */
import * as fs from 'node:fs';
import { imageOptsString, needsImageOpts, rawImageOpts, secretArgs, type ImageAccess, type QemuSecret } from './access.js';
import { QemuToolError } from './errors.js';
import { DEFAULT_TIMEOUT_MS, QEMU_IMG, runTool, type ToolResult } from './run.js';

/** qemu-img create -o encrypt.*: the format and the secret the key is in. */
export interface ImgEncryptOptions {
  format: 'aes' | 'luks';
  secret: QemuSecret;
  /** encrypt.iter-time in ms (LUKS): QEMU's default 2000 makes every open cost seconds of PBKDF2. */
  iterTimeMs?: number;
}

export interface ImgCreateOptions {
  format?: 'qcow2' | 'raw';
  size: number;
  clusterSize?: number;
  refcountBits?: number;
  compat?: '0.10' | '1.1';
  lazyRefcounts?: boolean;
  extendedL2?: boolean;
  compressionType?: 'zlib' | 'zstd';
  backingFile?: string;
  backingFormat?: 'qcow2' | 'raw';
  preallocation?: 'off' | 'metadata';
  /** data_file (give an absolute path: qemu-img 7.2 takes a relative one from its current directory). */
  dataFile?: string;
  dataFileRaw?: boolean;
  encrypt?: ImgEncryptOptions;
}

export interface QemuSnapshotInfo {
  id: string;
  name: string;
  'vm-state-size': number;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  icount?: number;
}

export interface QemuInfo {
  'virtual-size': number;
  'cluster-size'?: number;
  format: string;
  'actual-size'?: number;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: QemuSnapshotInfo[];
  'format-specific'?: {
    type: string;
    data: {
      compat: string;
      'compression-type'?: string;
      'lazy-refcounts'?: boolean;
      'refcount-bits'?: number;
      corrupt?: boolean;
      'extended-l2'?: boolean;
      encrypt?: { format: string };
      'data-file'?: string;
      'data-file-raw'?: boolean;
    };
  };
  encrypted?: boolean;
}

export interface QemuCheck {
  'image-end-offset'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
  'check-errors': number;
  corruptions?: number;
  leaks?: number;
  'corruptions-fixed'?: number;
  'leaks-fixed'?: number;
  filename?: string;
  format?: string;
}

export interface CheckOutcome {
  /** qemu-img check exit code: 0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 unsupported. */
  rc: number;
  json?: QemuCheck;
  stderr: string;
}

function must(r: ToolResult, what: string): ToolResult {
  if (r.rc !== 0) throw new QemuToolError(`${what} failed (rc ${r.rc}): ${r.stderr.trim() || r.stdout.trim()}`, r.rc, r.stderr);
  return r;
}

export function createOptionString(o: ImgCreateOptions): string {
  const kv: string[] = [];
  if (o.clusterSize !== undefined) kv.push(`cluster_size=${o.clusterSize}`);
  if (o.refcountBits !== undefined) kv.push(`refcount_bits=${o.refcountBits}`);
  if (o.compat !== undefined) kv.push(`compat=${o.compat}`);
  if (o.lazyRefcounts !== undefined) kv.push(`lazy_refcounts=${o.lazyRefcounts ? 'on' : 'off'}`);
  if (o.extendedL2 !== undefined) kv.push(`extended_l2=${o.extendedL2 ? 'on' : 'off'}`);
  if (o.compressionType !== undefined) kv.push(`compression_type=${o.compressionType}`);
  if (o.preallocation !== undefined) kv.push(`preallocation=${o.preallocation}`);
  if (o.dataFile !== undefined) kv.push(`data_file=${o.dataFile}`);
  if (o.dataFileRaw) kv.push('data_file_raw=on');
  if (o.encrypt) {
    kv.push(`encrypt.format=${o.encrypt.format}`, `encrypt.key-secret=${o.encrypt.secret.id}`);
    if (o.encrypt.format === 'luks' && o.encrypt.iterTimeMs !== undefined) kv.push(`encrypt.iter-time=${o.encrypt.iterTimeMs}`);
  }
  return kv.join(',');
}

/**
 * The image operand of a qemu-img command: `-f FORMAT FILE`, or, when the
 * access needs it, the secret and `--image-opts` (qemu-img refuses -f beside it).
 */
export function imageOperand(file: string, access: ImageAccess | undefined, format = 'qcow2'): string[] {
  if (format === 'qcow2' && needsImageOpts(access)) return [...secretArgs(access), '--image-opts', imageOptsString(file, access)];
  return ['-f', format, file];
}

export function createArgs(path: string, o: ImgCreateOptions): string[] {
  const args = ['create', '-q', ...(o.encrypt ? secretArgs({ secret: o.encrypt.secret }) : []), '-f', o.format ?? 'qcow2'];
  const opts = (o.format ?? 'qcow2') === 'qcow2' ? createOptionString(o) : '';
  if (opts) args.push('-o', opts);
  if (o.backingFile) args.push('-b', o.backingFile, '-F', o.backingFormat ?? 'raw');
  args.push(path, String(o.size));
  return args;
}

/** Tries a create this many times when qemu-img's PBKDF2 benchmark misfires (below). */
const CREATE_TRIES = 5;

/**
 * qemu-img create, tried again while it fails with "Unable to get accurate CPU
 * usage": qcrypto_pbkdf2_count_iters (QEMU 7.2) gives up when a benchmark
 * round of a LUKS key slot reads 0 ms of thread CPU time, which a busy
 * machine's coarse clock does now and then. That is the tool failing to
 * calibrate, not a verdict on the image; any other failure is final.
 */
export async function imgCreate(path: string, o: ImgCreateOptions, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
  for (let i = 1; ; i++) {
    const r = await runTool(QEMU_IMG, createArgs(path, o), timeoutMs);
    if (r.rc === 0 || i >= CREATE_TRIES || !r.stderr.includes('Unable to get accurate CPU usage')) {
      must(r, 'qemu-img create');
      return;
    }
    fs.rmSync(path, { force: true });
  }
}

export async function imgInfo(path: string, o: { format?: string; timeoutMs?: number; access?: ImageAccess } = {}): Promise<QemuInfo> {
  const args = ['info', '--output=json', '-U'];
  if (needsImageOpts(o.access)) args.push(...imageOperand(path, o.access));
  else {
    if (o.format) args.push('-f', o.format);
    args.push(path);
  }
  const r = must(await runTool(QEMU_IMG, args, o.timeoutMs), 'qemu-img info');
  try {
    return JSON.parse(r.stdout) as QemuInfo;
  } catch {
    throw new QemuToolError(`qemu-img info printed no JSON: ${r.stdout.slice(0, 200)}`);
  }
}

/** qemu-img check; returns the exit code and, when qemu-img printed it, the parsed JSON. */
export async function imgCheck(
  path: string,
  o: { repair?: 'leaks' | 'all'; format?: string; timeoutMs?: number; access?: ImageAccess } = {},
): Promise<CheckOutcome> {
  const args = ['check', '--output=json'];
  if (o.repair) args.push('-r', o.repair);
  args.push(...imageOperand(path, o.access, o.format));
  const r = await runTool(QEMU_IMG, args, o.timeoutMs);
  let json: QemuCheck | undefined;
  const start = r.stdout.indexOf('{');
  if (start >= 0) {
    try {
      json = JSON.parse(r.stdout.slice(start)) as QemuCheck;
    } catch {
      json = undefined;
    }
  }
  return { rc: r.rc, json, stderr: r.stderr };
}

/** qemu-img compare: rc 0 identical, 1 different, 2 error. */
export async function imgCompare(
  a: string,
  b: string,
  o: { formatA?: string; formatB?: string; strict?: boolean; timeoutMs?: number; access?: ImageAccess } = {},
): Promise<ToolResult> {
  const args = ['compare', '-U'];
  if (o.strict) args.push('-s');
  // With --image-opts both operands are option strings (img_compare): `a` a qcow2 image with the access, `b` raw.
  if (needsImageOpts(o.access) && (o.formatA ?? 'qcow2') === 'qcow2' && (o.formatB ?? 'raw') === 'raw') {
    args.push(...secretArgs(o.access), '--image-opts', imageOptsString(a, o.access), rawImageOpts(b));
    return runTool(QEMU_IMG, args, o.timeoutMs);
  }
  if (o.formatA) args.push('-f', o.formatA);
  if (o.formatB) args.push('-F', o.formatB);
  args.push(a, b);
  return runTool(QEMU_IMG, args, o.timeoutMs);
}

/** Converts to raw; `snapshotId` reads an internal snapshot instead of the active layer. */
export async function imgConvertToRaw(
  src: string,
  dst: string,
  o: { format?: string; snapshotId?: string; timeoutMs?: number; access?: ImageAccess } = {},
): Promise<void> {
  const args = ['convert', '-U', '-O', 'raw'];
  if (o.snapshotId !== undefined) args.push('-l', `snapshot.id=${o.snapshotId}`);
  args.push(...imageOperand(src, o.access, o.format), dst);
  must(await runTool(QEMU_IMG, args, o.timeoutMs), 'qemu-img convert');
}

/** qemu-img snapshot -c|-a|-d NAME; returns the result so callers can treat a refusal as data. */
export async function imgSnapshot(path: string, flag: 'c' | 'a' | 'd', name: string, timeoutMs?: number, access?: ImageAccess): Promise<ToolResult> {
  const operand = needsImageOpts(access) ? imageOperand(path, access) : [path];
  return runTool(QEMU_IMG, ['snapshot', `-${flag}`, name, ...operand], timeoutMs);
}

export async function imgAmend(path: string, options: string, timeoutMs?: number, access?: ImageAccess): Promise<ToolResult> {
  return runTool(QEMU_IMG, ['amend', '-o', options, ...imageOperand(path, access)], timeoutMs);
}

export async function imgResize(path: string, size: number, o: { shrink?: boolean; timeoutMs?: number; access?: ImageAccess } = {}): Promise<ToolResult> {
  const args = ['resize', '-q'];
  if (o.shrink) args.push('--shrink');
  args.push(...imageOperand(path, o.access), String(size));
  return runTool(QEMU_IMG, args, o.timeoutMs);
}
