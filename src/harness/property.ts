/**
 * Property-suite helper: runs a fixed-seed, bounded campaign of traces on a
 * target and, on failure, throws with the seed, the fast-check path and the
 * shrunk trace in text form (what a CI log needs to reproduce it).
 */
import fc from 'fast-check';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { runTrace, type RunOutcome } from './execute.js';
import { formatOp } from './ops.js';
import { traceProperty } from './runner.js';
import { makeTarget } from './targets/index.js';

export interface TraceSuiteOptions {
  seed: number;
  numRuns: number;
  maxOps: number;
  /** fast-check path of a known counterexample, to replay just it. */
  path?: string;
  /** Make crash ops common (see opSeedsArb). */
  crashOps?: boolean;
}

export async function assertTraces(target: string, o: TraceSuiteOptions): Promise<{ runs: number; ops: number; checks: number; crashOps: number }> {
  const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-prop-'));
  let runs = 0;
  let ops = 0;
  let checks = 0;
  let crashOps = 0;
  try {
    const prop = traceProperty(
      target,
      o.maxOps,
      (r: RunOutcome) => {
        runs++;
        ops += r.ops.length;
        checks += r.qemuImgChecks;
        crashOps += r.ops.filter((x) => x.kind === 'crash').length;
      },
      tmpRoot,
      { crashBias: o.crashOps },
    );
    const details = await fc.check(prop, { seed: o.seed, numRuns: o.numRuns, path: o.path, endOnFailure: false });
    if (details.failed && details.counterexample) {
      const [config, seeds] = details.counterexample;
      const r = await runTrace(makeTarget(target), config, { seeds }, { tmpRoot });
      const f = r.failure;
      throw new Error(
        [
          `target ${target}: ${f ? `${f.oracle}: ${f.message}` : 'failure did not reproduce on re-run'}`,
          `seed ${o.seed}, path "${details.counterexamplePath}" (replay: same seed with path set)`,
          `config ${JSON.stringify(config)}`,
          ...r.ops.map((x, i) => `  ${String(i + 1).padStart(3)}: ${formatOp(x)}`),
        ].join('\n'),
      );
    }
    if (details.failed) throw new Error(`property errored: ${String(details.errorInstance)}`);
  } finally {
    fs.rmSync(tmpRoot, { recursive: true, force: true });
  }
  return { runs, ops, checks, crashOps };
}
