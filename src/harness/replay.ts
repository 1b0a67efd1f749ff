/**
 * Replaying corpus entries. An entry of ours is a regression test: it passes
 * when the trace now runs clean. An entry documenting a bug outside this
 * project (trace.json "external") passes while the bug still shows exactly as
 * documented, so a change in that behaviour is noticed. A hostile-image
 * entry (trace.json "hostile") is a repair of a patched image instead of an
 * op trace (replay-hostile.ts), judged the same way.
 */
import { readEntry, type TraceFile } from './corpus.js';
import { runTrace } from './execute.js';
import type { Failure } from './oracles.js';
import { replayCost } from './replay-cost.js';
import { runHostile } from './replay-hostile.js';
import { makeTarget } from './targets/index.js';

export interface ReplayResult {
  id: string;
  dir: string;
  target: string;
  passed: boolean;
  /** What the entry expects, in words. */
  expected: string;
  failure?: Failure;
  entry: TraceFile;
  /** Set when an external entry's bug no longer shows: what to do about it. */
  note?: string;
}

export async function replayEntry(dir: string, o: { target?: string; tmpRoot?: string } = {}): Promise<ReplayResult> {
  const entry = readEntry(dir);
  const targetName = o.target ?? entry.target;
  const cost = entry.external?.cost;
  if (cost) return { id: entry.id, dir, target: targetName, entry, ...(await replayCost(entry, cost, o.tmpRoot)) };
  const r = entry.hostile ? { failure: await runHostile(entry, targetName, o.tmpRoot), implementation: undefined } : await runOps(entry, targetName, o);
  const ext = entry.external;
  let passed: boolean;
  let expected: string;
  if (ext) {
    expected = `${ext.project} bug still present: ${ext.oracle} failure mentioning "${ext.messageIncludes}"`;
    passed = r.failure !== undefined && r.failure.oracle === ext.oracle && r.failure.message.includes(ext.messageIncludes);
  } else {
    expected = 'runs clean (regression test)';
    passed = r.failure === undefined;
  }
  const note =
    ext && !passed
      ? r.failure
        ? `${ext.project}: the trace now fails differently; check whether the documented bug changed`
        : `${ext.project}: the documented bug no longer shows (fixed in ${r.implementation ?? 'this version'}?): drop "external" to keep the entry as a regression test`
      : undefined;
  return { id: entry.id, dir, target: targetName, passed, expected, failure: r.failure, entry, note };
}

async function runOps(entry: ReturnType<typeof readEntry>, targetName: string, o: { target?: string; tmpRoot?: string }) {
  // Known-bug tolerances are off: an external entry must see its bug.
  // A reader entry rebuilds its image with the producer that wrote it (unless replayed on another target).
  const producer = o.target === undefined || o.target === entry.target ? entry.producer : undefined;
  const target = makeTarget(targetName, { strict: true, timeoutMs: entry.timeoutMs, producer });
  return runTrace(target, entry.config, { ops: entry.parsedOps }, { tmpRoot: o.tmpRoot });
}
