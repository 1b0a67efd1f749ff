/**
 * Merging the corpora of sharded campaigns (`qcow2-harness merge DEST SRC...`).
 *
 * Shards of one campaign find the same bug through different traces, each
 * saving its own minimal one. The merged corpus keeps one entry per failure
 * signature (corpus.ts failureSignature: the oracle and the message with
 * numbers blanked), the smallest trace of all of them.
 *
 * Every change to DEST is one rename: a winner is copied into a temporary
 * directory inside DEST and renamed into place; a loser already in DEST is
 * renamed out to a temporary name before it is deleted. A reader (replay, a
 * concurrent campaign's listEntries, which skips dot names) sees whole entries
 * only. Everything is read before anything is written, so an unreadable entry
 * stops the merge with DEST untouched. The winner of a signature depends only
 * on the entries, so a second merge of the same inputs changes nothing.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CorpusFormatError, entrySignature, listEntries, readEntry, type TraceFile } from './corpus.js';

export interface MergeCandidate {
  dir: string;
  id: string;
  signature: string;
  trace: TraceFile;
  /** Already in DEST (wins ties, so a re-merge moves nothing). */
  inDest: boolean;
}

export interface MergeReport {
  /** Entries read, DEST's included. */
  read: number;
  signatures: number;
  /** Entries copied into DEST. */
  added: string[];
  /** DEST entries removed because a smaller trace of their signature came in (or a DEST twin won). */
  removed: string[];
  /** DEST entries that stay as they are. */
  unchanged: string[];
}

/**
 * Which of two entries of one signature stays: one documenting an external
 * bug (hand-curated, replay expects it to keep failing) over a plain finding,
 * then fewer ops, then the shorter trace text, then the one already in DEST,
 * then the smaller id — a total order, so the result never depends on the
 * order the shards are listed in.
 */
export function smaller(a: MergeCandidate, b: MergeCandidate): boolean {
  const key = (c: MergeCandidate): [number, number, number, number] => [
    c.trace.external ? 0 : 1,
    c.trace.ops.length,
    c.trace.ops.join('\n').length,
    c.inDest ? 0 : 1,
  ];
  const ka = key(a);
  const kb = key(b);
  for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i]! < kb[i]!;
  return a.id < b.id;
}

/** The entries of a corpus directory, or the entry itself when dir is one. */
function entriesOf(dir: string): string[] {
  return fs.existsSync(path.join(dir, 'trace.json')) ? [dir] : listEntries(dir);
}

function candidates(dirs: string[], inDest: boolean): MergeCandidate[] {
  return dirs.map((dir) => {
    let trace: TraceFile;
    try {
      trace = readEntry(dir);
    } catch (e) {
      if (e instanceof SyntaxError) throw new CorpusFormatError(`${path.join(dir, 'trace.json')}: not JSON (${e.message})`);
      throw e;
    }
    return { dir, id: trace.id, signature: entrySignature(trace), trace, inDest };
  });
}

/** Chooses the winner of every signature among DEST's and the sources' entries. */
export function planMerge(dest: string, sources: string[]): { winners: Map<string, MergeCandidate>; destEntries: MergeCandidate[]; read: number } {
  const destEntries = candidates(listEntries(dest), true);
  const destReal = fs.existsSync(dest) ? fs.realpathSync(dest) : path.resolve(dest);
  const incoming = sources
    .filter((s) => fs.realpathSync(s) !== destReal) // DEST named as a source too: it is read once
    .flatMap((s) => candidates(entriesOf(s), false));
  const winners = new Map<string, MergeCandidate>();
  for (const c of [...destEntries, ...incoming]) {
    const w = winners.get(c.signature);
    if (!w || smaller(c, w)) winners.set(c.signature, c);
  }
  return { winners, destEntries, read: destEntries.length + incoming.length };
}

/** Copies an entry into DEST under its id: a temporary directory, then one rename. */
function install(dest: string, c: MergeCandidate): void {
  const tmp = fs.mkdtempSync(path.join(dest, `.tmp-merge-${c.id}-`));
  try {
    fs.cpSync(c.dir, tmp, { recursive: true });
    fs.chmodSync(tmp, 0o755); // mkdtemp makes it private; corpus entries are for everyone
    fs.renameSync(tmp, path.join(dest, c.id));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Takes an entry out of DEST: renamed to a dot name first, so no reader sees it half deleted. */
function retire(dest: string, dir: string): void {
  const trash = path.join(dest, `.trash-merge-${path.basename(dir)}-${process.pid}`);
  fs.renameSync(dir, trash);
  fs.rmSync(trash, { recursive: true, force: true });
}

export function mergeCorpora(dest: string, sources: string[]): MergeReport {
  const { winners, destEntries, read } = planMerge(dest, sources);
  fs.mkdirSync(dest, { recursive: true });
  const report: MergeReport = { read, signatures: winners.size, added: [], removed: [], unchanged: [] };
  const destIds = new Set(destEntries.map((c) => c.id));
  // Add first, remove after: at every moment each signature has at least one entry.
  for (const w of [...winners.values()].sort((a, b) => (a.id < b.id ? -1 : 1))) {
    if (w.inDest || destIds.has(w.id)) continue; // the same trace is there already (ids hash the trace)
    install(dest, w);
    report.added.push(w.id);
  }
  const kept = new Set([...winners.values()].map((w) => w.id));
  for (const c of destEntries) {
    if (kept.has(c.id)) report.unchanged.push(c.id);
    else {
      retire(dest, c.dir);
      report.removed.push(c.id);
    }
  }
  return report;
}
