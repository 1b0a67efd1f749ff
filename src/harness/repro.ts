/**
 * repro.sh: the minimal trace as a plain shell session over qemu-img and
 * qemu-io, so a QEMU developer can reproduce without this project. Data is a
 * per-op byte pattern instead of the harness's sector-unique data (qemu-io's
 * `-P`), and the expected guest view is built the same way in a raw file.
 * The script exits non-zero while the failure is present.
 */
import type { DiskModel } from '../model/disk.js';
import { ANY, SECTOR, type Layer } from '../model/layer.js';
import { imageOptsString, needsImageOpts, rawImageOpts, rewriteShellCommand, secretArgs, type ImageAccess } from '../qemu/access.js';
import { createOptionString } from '../qemu/img.js';
import { accessOf, backingChain, backingFileName, backingStamp, DATA_FILE_NAME, HARNESS_SECRET, LUKS_ITER_TIME_MS, type TraceConfig } from './config.js';
import { BACKING_STAMP_BASE, PATTERN_STAMP_BASE } from './data.js';
import type { OracleName } from './oracles.js';
import { qemuDeclines } from './declines.js';
import { crashCheckLines, crashViews } from './repro-crash.js';
import { formatOp, specOf, type Op } from './ops.js';
import type { KnownBug } from './targets/types.js';

const ENCRYPTION_BUGS: ReadonlySet<KnownBug> = new Set<KnownBug>(['unencrypted-compressed-write', 'encrypted-downgrade-garbage']);

/** qemu-io pattern byte standing in for a stamp (never 0, so data never reads as zeros). */
export function patternOf(stamp: number): number {
  // aio group writes carry their pattern byte in the op itself.
  if (stamp > PATTERN_STAMP_BASE && stamp < PATTERN_STAMP_BASE + 256) return stamp - PATTERN_STAMP_BASE;
  const k = stamp >= BACKING_STAMP_BASE ? 200 + ((stamp - BACKING_STAMP_BASE) % 55) : stamp % 199;
  return k === 0 ? 199 : k;
}

const hex = (n: number) => `0x${n.toString(16).padStart(2, '0')}`;
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** qemu-io -c commands writing a layer's content with patterns. */
function layerCommands(model: DiskModel, layer: Layer): string[] {
  const out: string[] = [];
  const n = layer.size / SECTOR;
  let s = 0;
  while (s < n) {
    const stamp = model.stampAt(layer, s);
    let e = s + 1;
    while (e < n && model.stampAt(layer, e) === stamp) e++;
    if (stamp !== 0 && stamp !== ANY) out.push(`write -q -P ${hex(patternOf(stamp))} ${s * SECTOR} ${(e - s) * SECTOR}`);
    s = e;
  }
  return out;
}

/** Shell lines building `file`, a raw file of a layer's guest view. */
function rawFileLines(model: DiskModel, file: string, layer: Layer): string[] {
  const L = [`qemu-img create -q -f raw ${file} ${layer.size}`];
  const cmds = layerCommands(model, layer);
  for (let i = 0; i < cmds.length; i += 200) L.push(`qemu-io -f raw ${cmds.slice(i, i + 200).map((x) => `-c ${q(x)}`).join(' ')} ${file}`);
  return L;
}

/** A qcow2 file as a shell operand of qemu-img/qemu-io: `-f qcow2 F`, or the secret and an option string. */
function operand(file: string, a: ImageAccess | undefined): string {
  return needsImageOpts(a) ? `${optsFlags(a)} ${q(imageOptsString(file, a))}` : `-f qcow2 ${file}`;
}

/** The secret's --object and --image-opts, before an option-string operand. */
function optsFlags(a: ImageAccess): string {
  return [...secretArgs(a).map((w, i) => (i === 1 ? q(w) : w)), '--image-opts'].join(' ');
}

/**
 * The image's qemu-img create line. LUKS creation measures PBKDF2 speed, and
 * qemu-img 7.2 gives up when a trial reads 0 ms of CPU ("Unable to get
 * accurate CPU usage", qcrypto_pbkdf2_count_iters), which a busy machine's
 * coarse thread clock does now and then: the script tries again.
 */
function createLine(c: TraceConfig): string {
  const { dataFile, encrypt, ...rest } = c;
  // The script runs in its own directory, and qemu-img 7.2 takes a relative data file name from there.
  const opts = createOptionString({
    ...rest,
    ...(dataFile ? { dataFile: DATA_FILE_NAME, dataFileRaw: dataFile.raw } : {}),
    ...(encrypt ? { encrypt: { format: encrypt.format, secret: HARNESS_SECRET, iterTimeMs: LUKS_ITER_TIME_MS } } : {}),
  });
  const back = c.backing ? ` -b ${backingFileName(c.backing)} -F ${c.backing.format}` : '';
  const secret = encrypt ? ` ${secretArgs(accessOf(c)).map((w, i) => (i === 1 ? q(w) : w)).join(' ')}` : '';
  const line = `qemu-img create -q -f qcow2${secret} -o ${opts}${back} image.qcow2 ${c.size}`;
  if (encrypt?.format !== 'luks') return line;
  return `for try in 1 2 3 4 5; do ${line} 2>create.err && break; grep -q 'accurate CPU usage' create.err || { cat create.err; bug "qemu-img create failed"; }; done`;
}

/** The checks of the image at the end: clean (after repair, when dirty), equal to expected.raw, of the right size. */
function endChecks(r: ReproInput, a: ImageAccess | undefined): string[] {
  const L: string[] = [];
  if (r.config.dirty) {
    // Lazy refcounts may be stale on a dirty image; what matters is that repair leaves it clean.
    L.push(`cp image.qcow2 repaired.qcow2; run qemu-img check -q -r all ${operand('repaired.qcow2', a)} >/dev/null 2>&1`);
    L.push(`run qemu-img check ${operand('repaired.qcow2', a)} || bug "qemu-img check reports problems after repair"`);
  } else {
    L.push(`run qemu-img check ${operand('image.qcow2', a)} || bug "qemu-img check reports problems"`);
  }
  L.push('# Expected guest view, built in a raw file.');
  L.push(...rawFileLines(r.model, 'expected.raw', r.model.active));
  const cmp = needsImageOpts(a) ? `${operand('image.qcow2', a)} ${q(rawImageOpts('expected.raw'))}` : '-f qcow2 -F raw image.qcow2 expected.raw';
  L.push(`run qemu-img compare ${cmp} || bug "guest view differs from the expected one"`);
  return L;
}

export interface ReproInput {
  /** Target that found the failure; for ours, the script also replays through our CLI when it is installed. */
  target?: string;
  config: TraceConfig;
  ops: Op[];
  /** The model after the ops the target accepted (its expected guest view). */
  model: DiskModel;
  /** Indices (1-based) of ops the target refused; the script lets them fail. */
  refused: Set<number>;
  oracle: OracleName;
  message: string;
  timeoutSec?: number;
}

export function reproScript(r: ReproInput): string {
  const c = r.config;
  const L: string[] = [];
  const T = r.timeoutSec ?? 60;
  L.push('#!/bin/sh');
  L.push(`# Reproduces with qemu-img/qemu-io only: ${r.oracle}: ${r.message.replace(/\n/g, ' ')}`);
  L.push('# Exits 1 while the problem is present, 0 once it is gone. Needs qemu-utils.');
  L.push('set -u');
  L.push('here=$(cd "$(dirname "$0")" && pwd)');
  L.push('w=$(mktemp -d); trap \'rm -rf "$w"\' EXIT; cd "$w"');
  L.push('bug() { echo "BUG: $*"; exit 1; }');
  L.push(`run() { timeout ${T} "$@"; rc=$?; [ $rc -eq 124 ] && bug "hang: $*"; return $rc; }`);
  L.push('');
  L.push('# The image our target left behind, checked as it is (ts-target findings show here).');
  // An image with a data file is checked with it: an entry saved without one has nothing to check.
  L.push(c.dataFile ? `if [ -f "$here/image.qcow2" ] && [ -f "$here/${DATA_FILE_NAME}" ]; then` : 'if [ -f "$here/image.qcow2" ]; then');
  L.push('  cp "$here/image.qcow2" saved.qcow2');
  const access = accessOf(c);
  // The saved image names the run directory's data file; point it at the saved copy instead.
  if (c.dataFile) L.push(`  cp "$here/${DATA_FILE_NAME}" saved.data`);
  L.push(`  run qemu-img check -q ${operand('saved.qcow2', { ...access, ...(c.dataFile ? { dataFile: 'saved.data' } : {}) })} >/dev/null 2>&1; rc=$?`);
  L.push('  [ $rc -ne 0 ] && [ $rc -ne 124 ] && bug "saved image.qcow2 fails qemu-img check (rc $rc)"');
  L.push('fi');
  if (r.target && r.target !== 'qemu') {
    L.push(`# Found on target ${r.target}: with qcow2-harness installed, replay it there too.`);
    L.push('if command -v qcow2-harness >/dev/null 2>&1; then');
    L.push(`  qcow2-harness replay "$here" || bug "replay on ${r.target} still fails"`);
    L.push('fi');
  }
  L.push('');
  L.push(`# The same ops through QEMU${r.target && r.target !== 'qemu' ? ' (the reference: for a finding against another target this part shows what QEMU does)' : ''}.`);
  // The backing chain bottom up: the bottom file from a raw file, each file above it over the one below.
  for (const l of [...backingChain(c)].reverse()) {
    const b = l.config;
    const pats = b.writes.map(([off, len], i) => `-c ${q(`write -q -P ${hex(patternOf(backingStamp(i, l.level)))} ${off} ${len}`)}`);
    if (b.backing) {
      const lower = backingFileName(b.backing, l.level + 1);
      L.push(`qemu-img create -q -f qcow2 -o cluster_size=${b.clusterSize ?? 65536} -b ${lower} -F ${b.backing.format} ${l.file} ${b.size}`);
      if (pats.length) L.push(`qemu-io -f qcow2 ${pats.join(' ')} ${l.file}`);
      continue;
    }
    L.push(`qemu-img create -q -f raw backing.src ${b.size}`);
    if (pats.length) L.push(`qemu-io -f raw ${pats.join(' ')} backing.src`);
    if (b.format === 'raw') L.push(`mv backing.src ${l.file}`);
    else L.push(`qemu-img convert -f raw -O qcow2 -o cluster_size=${b.clusterSize ?? 65536} backing.src ${l.file}`);
  }
  L.push(createLine(c));
  let batch: string[] = [];
  let batchRefused = false;
  /** Set at the failing crash op: its batch is kept, and run on a copy of the image from before it. */
  let crashBatch: string[] | undefined;
  const flush = (beforeCrash = false) => {
    if (!batch.length) return;
    if (beforeCrash) {
      L.push(`cp image.qcow2 crash.qcow2${c.dataFile ? ` && cp ${DATA_FILE_NAME} crash.data` : ''}`);
      crashBatch = [...batch];
    }
    // A dirty config kills each qemu-io after its flush (exit 134, SIGABRT) instead of closing the image.
    const end = c.dirty ? ` -c flush -c abort` : '';
    const ok = c.dirty ? ' 2>/dev/null; [ $? -eq 134 ] || bug "qemu-io failed"' : ' || bug "qemu-io failed"';
    const tail = batchRefused ? ' # some of these fail, as they must' : ok;
    // qemu-io takes the image operand last, after its commands.
    const [opts, file] = needsImageOpts(access) ? [optsFlags(access), q(imageOptsString('image.qcow2', access))] : ['-f qcow2', 'image.qcow2'];
    L.push(`run qemu-io ${opts} ${batch.map((x) => `-c ${q(x)}`).join(' ')}${end} ${file}${tail}`);
    batch = [];
    batchRefused = false;
  };
  r.ops.forEach((op, i) => {
    const index = i + 1;
    const refused = r.refused.has(index);
    // A refused op QEMU would get wrong (a known bug, declines.ts) stays out: QEMU would take it.
    const declined = refused ? qemuDeclines(c, op, ENCRYPTION_BUGS) : undefined;
    if (declined) {
      flush();
      L.push(`# op ${index} (${formatOp(op)}) left out: ${declined}`);
      return;
    }
    if (op.kind === 'crash' && !refused && r.oracle === 'crash' && index === r.ops.length) {
      flush(true);
      const views = crashViews(c, r.ops, r.refused, index);
      if (crashBatch && views) {
        const crashOperand = (file: string, dataFile?: string) => operand(file, dataFile ? { ...access, dataFile } : access);
        L.push(...crashCheckLines(index, crashBatch, c.dataFile !== undefined, q, crashOperand, (file, layer) => rawFileLines(views.model, file, layer), views));
      } else L.push(`# op ${index} (crash): ${crashBatch ? 'an aio group before it: its order is the target\'s, not scripted' : 'no qemu-io batch before it: nothing pending'}`);
      return;
    }
    const step = specOf(op).repro(op, hex(patternOf(index)));
    if (step && 'io' in step) {
      batch.push(step.io);
      batchRefused ||= refused;
      return;
    }
    // Every other op ends the qemu-io process (a reopen is no more than that).
    flush();
    if (!step) return;
    const cmd = rewriteShellCommand(step.shell, 'image.qcow2', access);
    L.push(refused ? `run ${cmd} 2>/dev/null && bug "op ${index} must be refused"` : `run ${cmd} || bug "op ${index} failed: ${cmd}"`);
  });
  flush();
  L.push('');
  L.push(...endChecks(r, access));
  L.push(`size=$(qemu-img info --output=json image.qcow2 | sed -n 's/.*"virtual-size": \\([0-9]*\\).*/\\1/p')`);
  L.push(`[ "$size" = "${r.model.size}" ] || bug "virtual size $size, expected ${r.model.size}"`);
  L.push('echo "no problem found"');
  L.push('exit 0');
  return L.join('\n') + '\n';
}
