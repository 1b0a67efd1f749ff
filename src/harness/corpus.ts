/**
 * The regression corpus: corpus/<id>/{trace.json, image.qcow2, repro.sh}.
 * An entry is written in a temporary directory and renamed into place, so a
 * reader never sees half an entry; the id hashes the target, the oracle and
 * the minimal trace, so the same failure found twice is one entry.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { configProblems, type TraceConfig } from './config.js';
import type { OracleName } from './oracles.js';
import { formatOp, parseOp, type Op } from './ops.js';

export const TRACE_FORMAT_VERSION = 1;

/** What replay expects of an entry documenting a bug outside this project. */
export interface ExternalExpectation {
  /** Who owns the bug, e.g. "qemu 7.2". */
  project: string;
  description: string;
  /** The replay must still fail with this oracle... */
  oracle: OracleName;
  /** ...and a message containing this text. */
  messageIncludes: string;
  /** A bug about how much work QEMU does: measured by counting, never timed (see replay-cost.ts). */
  cost?: CostExpectation;
}

/**
 * A hostile-image entry: a bug no op trace reaches, because it needs an image
 * no engine writes. The entry's ops, run by `producer`, write a base image;
 * `patch` then changes bytes of it (as a bad disk or another writer could);
 * the target repairs the result with check -r `repair`, and the repair must
 * leave an image qemu-img check passes, that opens read/write, and whose guest
 * view is what the ops wrote (replay-hostile.ts).
 */
export interface HostileImage {
  producer: 'qemu' | 'ts';
  patch: BytePatch[];
  repair: 'leaks' | 'all';
}

/** Bytes at a file offset: `from` (hex) is what the base image must hold there, `to` what is written. */
export interface BytePatch {
  offset: number;
  from: string;
  to: string;
  /** What the bytes are and what the change means, for a reader of trace.json. */
  what: string;
}

/** The entry's ops, run through qemu-img at each cluster size, must grow by this factor per doubling. */
export interface CostExpectation {
  clusterSizes: number[];
  minGrowthPerDoubling: number;
}

export interface TraceFile {
  formatVersion: number;
  id: string;
  target: string;
  config: TraceConfig;
  ops: string[];
  seed?: number;
  path?: string;
  oracle: OracleName;
  message: string;
  opIndex?: number;
  /** Per-call timeout for external tools during replay (hang entries keep it short). */
  timeoutMs?: number;
  /** oracle + message with numbers blanked: the same bug seen through different traces. */
  signature?: string;
  /** Present when the entry documents a bug outside this project. */
  external?: ExternalExpectation;
  /** Reader entries: the engine that wrote the image the target misread (docs/cmd-protocol.md, protocol 2). */
  producer?: 'qemu' | 'ts';
  /** What the implementation under test said it is (a reader's `implementation`, e.g. "libqcow 20201213"). */
  implementation?: string;
  /** Present when the entry is a hostile image to repair rather than an op trace to run. */
  hostile?: HostileImage;
}

/** The target as signatures and ids see it: a reader target is named with its producer. */
export function targetKey(target: string, producer?: string): string {
  return producer ? `${target} producer=${producer}` : target;
}

/**
 * Where a failure showed: the kind of the op it was detected after, 'setup'
 * (op 0) or 'end' (the end-of-run oracles). Part of the signature: two bugs
 * can print the same message (qemu-img convert's "error while reading at
 * byte 0: Input/output error" after a failed compressed write, and after a
 * downgrade that strands a snapshot's cluster), never at the same op kind.
 */
export function failurePlace(opIndex: number | undefined, ops: readonly (Op | string)[]): string {
  if (opIndex === undefined) return 'end';
  if (opIndex === 0) return 'setup';
  const op = ops[opIndex - 1];
  if (op === undefined) return 'end';
  if (typeof op !== 'string') return op.kind;
  try {
    return parseOp(op).kind;
  } catch {
    return op.split(' ')[0] || '?';
  }
}

/** A failure's shape regardless of sizes and offsets, so one bug found via many traces is saved once. */
export function failureSignature(target: string, oracle: string, message: string, place: string): string {
  const shape = message
    // How many sectors a mismatch spans is its extent, not its kind (verify.ts describeMismatch).
    .replace(/ \(\d+ sectors differ\)/g, '')
    .replace(/'[^']*'/g, "'…'")
    .replace(/0x[0-9a-f]+/gi, '#')
    .replace(/\d+/g, '#');
  return `${target} ${oracle} at ${place}: ${shape}`;
}

/** What a signature is computed from: a corpus entry, a new one, or a failure a campaign just found. */
export interface SignedFailure {
  target: string;
  producer?: string;
  oracle: string;
  message: string;
  opIndex?: number;
  ops: readonly (Op | string)[];
}

/**
 * The signature of an entry or of a failure, computed from the failure (so
 * entries saved by an older version, whose stored `signature` has another
 * form, compare alike).
 */
export function entrySignature(t: SignedFailure): string {
  return failureSignature(targetKey(t.target, t.producer), t.oracle, t.message, failurePlace(t.opIndex, t.ops));
}

/** Signatures of the entries already in a corpus, mapped to their ids. */
export function corpusSignatures(corpusDir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const dir of listEntries(corpusDir)) {
    try {
      const t = JSON.parse(fs.readFileSync(path.join(dir, 'trace.json'), 'utf8')) as TraceFile;
      out.set(entrySignature(t), t.id);
    } catch {
      // a broken entry is reported by replay, not here
    }
  }
  return out;
}

export function entryId(target: string, oracle: string, config: TraceConfig, ops: Op[]): string {
  const h = createHash('sha256');
  h.update(`${target}\n${oracle}\n${JSON.stringify(config)}\n${ops.map(formatOp).join('\n')}`);
  return h.digest('hex').slice(0, 12);
}

export interface NewEntry {
  target: string;
  config: TraceConfig;
  ops: Op[];
  seed?: number;
  path?: string;
  oracle: OracleName;
  message: string;
  opIndex?: number;
  external?: ExternalExpectation;
  producer?: 'qemu' | 'ts';
  implementation?: string;
  /** The image at the failing point, copied in as image.qcow2 (with its backing file, if any). */
  imageFile?: string;
  backingFile?: string;
  /** Further files of a backing chain, below backingFile, copied in under their own names. */
  chainFiles?: string[];
  /** The external data file beside the image (configs with dataFile), copied in as image.data. */
  dataFile?: string;
  repro: string;
  /** Override the id (named entries written by hand, e.g. external bugs). */
  id?: string;
}

/** Writes an entry atomically; returns its id and whether it already existed. */
export function writeEntry(corpusDir: string, e: NewEntry): { id: string; dir: string; duplicate: boolean } {
  const id = e.id ?? entryId(targetKey(e.target, e.producer), e.oracle, e.config, e.ops);
  const dir = path.join(corpusDir, id);
  if (fs.existsSync(dir)) return { id, dir, duplicate: true };
  fs.mkdirSync(corpusDir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(corpusDir, `.tmp-${id}-`));
  try {
    const trace: TraceFile = {
      formatVersion: TRACE_FORMAT_VERSION,
      id,
      target: e.target,
      config: e.config,
      ops: e.ops.map(formatOp),
      seed: e.seed,
      path: e.path,
      oracle: e.oracle,
      message: e.message,
      opIndex: e.opIndex,
      signature: entrySignature(e),
      external: e.external,
      producer: e.producer,
      implementation: e.implementation,
    };
    fs.writeFileSync(path.join(tmp, 'trace.json'), JSON.stringify(trace, null, 2) + '\n');
    if (e.imageFile && fs.existsSync(e.imageFile)) fs.copyFileSync(e.imageFile, path.join(tmp, 'image.qcow2'));
    for (const f of [e.backingFile, ...(e.chainFiles ?? [])]) if (f && fs.existsSync(f)) fs.copyFileSync(f, path.join(tmp, path.basename(f)));
    if (e.dataFile && fs.existsSync(e.dataFile)) fs.copyFileSync(e.dataFile, path.join(tmp, path.basename(e.dataFile)));
    fs.writeFileSync(path.join(tmp, 'repro.sh'), e.repro, { mode: 0o755 });
    fs.chmodSync(tmp, 0o755); // mkdtemp makes it private; corpus entries are for everyone
    try {
      fs.renameSync(tmp, dir);
    } catch (err) {
      // Another worker renamed the same id first: it is the same failure.
      if (fs.existsSync(dir)) return { id, dir, duplicate: true };
      throw err;
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { id, dir, duplicate: false };
}

export class CorpusFormatError extends Error {}

export function readEntry(dir: string): TraceFile & { ops: string[]; parsedOps: Op[] } {
  const file = path.join(dir, 'trace.json');
  const t = JSON.parse(fs.readFileSync(file, 'utf8')) as TraceFile;
  if (t.formatVersion !== TRACE_FORMAT_VERSION) {
    throw new CorpusFormatError(`${file}: format version ${t.formatVersion}, expected ${TRACE_FORMAT_VERSION}`);
  }
  const problems = configProblems(t.config);
  if (problems.length) throw new CorpusFormatError(`${file}: bad config: ${problems.join('; ')}`);
  const hostile = t.hostile ? hostileProblems(t.hostile) : [];
  if (hostile.length) throw new CorpusFormatError(`${file}: bad hostile image: ${hostile.join('; ')}`);
  return { ...t, parsedOps: t.ops.map(parseOp) };
}

const HEX_BYTES = /^(?:[0-9a-f]{2})+$/i;

/** What is wrong with a hostile block, in words (empty when nothing is). */
export function hostileProblems(h: HostileImage): string[] {
  const p: string[] = [];
  if (h.producer !== 'qemu' && h.producer !== 'ts') p.push(`hostile.producer '${String(h.producer)}' is not qemu or ts`);
  if (h.repair !== 'leaks' && h.repair !== 'all') p.push(`hostile.repair '${String(h.repair)}' is not leaks or all`);
  if (!Array.isArray(h.patch) || h.patch.length === 0) return [...p, 'hostile.patch must list at least one byte patch'];
  h.patch.forEach((b, i) => {
    if (!Number.isSafeInteger(b.offset) || b.offset < 0) p.push(`hostile.patch[${i}].offset must be a byte offset`);
    if (typeof b.from !== 'string' || typeof b.to !== 'string' || !HEX_BYTES.test(b.from) || !HEX_BYTES.test(b.to)) {
      p.push(`hostile.patch[${i}]: from and to must be hex bytes`);
    } else if (b.from.length !== b.to.length) p.push(`hostile.patch[${i}]: from and to must be the same length`);
  });
  return p;
}

/** Every entry directory under a corpus directory (skipping temporaries). */
export function listEntries(corpusDir: string): string[] {
  if (!fs.existsSync(corpusDir)) return [];
  return fs
    .readdirSync(corpusDir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && !d.name.startsWith('.') && fs.existsSync(path.join(corpusDir, d.name, 'trace.json')))
    .map((d) => path.join(corpusDir, d.name))
    .sort();
}

/** How a new finding's minimized trace relates to a corpus entry (issue 12 item 5). */
export interface CorpusMatch {
  id: string;
  /** 'same ops': the finding's ops are the entry's; 'prefix': the entry's ops begin the finding's. */
  how: 'same ops' | 'prefix';
  /** The configurations are equal too (otherwise the same ops ran on another image). */
  sameConfig: boolean;
}

/** JSON with keys sorted at every level: configs saved by different versions compare by content. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/**
 * The entries of a corpus whose ops a finding repeats, whatever the oracle
 * and message (one bug seen by two oracles has two signatures): the same
 * target, and the same ops or the entry's ops as a proper prefix. `self`, the
 * entry the finding was just saved as, is left out. Same ops come first.
 */
export function corpusMatches(
  corpusDir: string,
  f: { target: string; producer?: string; config: TraceConfig; ops: readonly string[] },
  self?: string,
): CorpusMatch[] {
  const key = targetKey(f.target, f.producer);
  const config = canonical(f.config);
  const out: CorpusMatch[] = [];
  for (const dir of listEntries(corpusDir)) {
    let t: TraceFile;
    try {
      t = JSON.parse(fs.readFileSync(path.join(dir, 'trace.json'), 'utf8')) as TraceFile;
    } catch {
      continue; // a broken entry is reported by replay, not here
    }
    // A hostile entry's ops only build its base image: a trace that repeats them has not met its bug.
    if (t.hostile || t.id === self || targetKey(t.target, t.producer) !== key || t.ops.length === 0 || t.ops.length > f.ops.length) continue;
    if (!t.ops.every((x, i) => x === f.ops[i])) continue;
    out.push({ id: t.id, how: t.ops.length === f.ops.length ? 'same ops' : 'prefix', sameConfig: canonical(t.config) === config });
  }
  return out.sort((a, b) => (a.how === b.how ? 0 : a.how === 'same ops' ? -1 : 1));
}

/** The matches in words, for the fuzz summary: `matches corpus X (same ops, same config), Y (its ops as a prefix; config differs)`. */
export function describeMatches(ms: readonly CorpusMatch[]): string {
  return (
    'matches corpus ' +
    ms.map((m) => `${m.id} (${m.how === 'same ops' ? 'same ops' : 'its ops as a prefix'}${m.sameConfig ? ', same config' : '; config differs'})`).join(', ')
  );
}
