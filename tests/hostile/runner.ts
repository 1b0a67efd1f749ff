/**
 * Runs hostile cases in a child process with a time and memory bound, so a
 * hang or a runaway allocation in the engine is a reported failure of one
 * case instead of a stuck test run.
 *
 * The child is the TypeScript source bundled on the fly with rolldown (what
 * vite itself bundles with), so it always runs the current engine code, not
 * a stale dist/. The bundle is written under node_modules/.cache so that its
 * bare imports (zstd-napi) resolve from the project.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const bundles = new Map<string, Promise<string>>();
/** Job files are numbered per process: several runInChild calls may run at once. */
let jobNo = 0;

/** Bundles a TypeScript entry (path relative to the project root) into one ESM file; returns its path. */
export function bundle(entry: string): Promise<string> {
  let p = bundles.get(entry);
  if (!p) {
    p = (async () => {
      const { build } = await import('rolldown');
      const outDir = join(ROOT, 'node_modules', '.cache', 'qcow2-harness-tests');
      mkdirSync(outDir, { recursive: true });
      // One file per entry, replaced atomically: concurrent test workers bundle the same source.
      const file = join(outDir, `${entry.replace(/[^a-z0-9]+/gi, '-')}.mjs`);
      const tmp = `${file}.${process.pid}.tmp.mjs`;
      await build({
        input: join(ROOT, entry),
        platform: 'node',
        external: [/^node:/, 'zstd-napi', 'execa'],
        resolve: { extensionAlias: { '.js': ['.ts', '.js'] } },
        // One file: the CLI loads its commands with dynamic imports.
        output: { file: tmp, format: 'esm', sourcemap: 'inline', codeSplitting: false },
        logLevel: 'warn',
      });
      renameSync(tmp, file);
      return file;
    })();
    bundles.set(entry, p);
  }
  return p;
}

export type ChildOutcome<R> =
  | { kind: 'done'; report: R; ms: number; maxRssMB: number; rssBeforeMB: number; arrayBuffersMB: number }
  | { kind: 'hang'; ms: number }
  | { kind: 'crash'; detail: string };

export interface ChildLimits {
  /** No case may take longer (the child is killed and the case reported as a hang). */
  caseTimeoutMs: number;
  /** Address-space cap of the child (ulimit -v), so a huge allocation fails inside the case. */
  vmemMB: number;
  /** A case that pushes the child's peak RSS past this fails. */
  rssLimitMB: number;
  /** The child stops after a case that pushed its peak RSS past this; the parent respawns it. */
  restartRssMB: number;
  /** Extra node options of the child (a --max-old-space-size makes a runaway heap a crash of one case). */
  nodeArgs?: string[];
}

export const DEFAULT_LIMITS: ChildLimits = { caseTimeoutMs: 15_000, vmemMB: 3072, rssLimitMB: 300, restartRssMB: 160 };

/**
 * Runs every case id of `job.cases` in child processes built from `entry`;
 * returns one outcome per id. The job is written as JSON for the child.
 */
export async function runInChild<R>(
  entry: string,
  job: { cases: { id: string }[]; [k: string]: unknown },
  jobDir: string,
  limits: ChildLimits = DEFAULT_LIMITS,
): Promise<Map<string, ChildOutcome<R>>> {
  const file = await bundle(entry);
  const out = new Map<string, ChildOutcome<R>>();
  let pending = job.cases.slice();
  while (pending.length > 0) {
    const jobFile = join(jobDir, `job-${process.pid}-${jobNo++}.json`);
    writeFileSync(jobFile, JSON.stringify({ ...job, cases: pending, rssLimitMB: limits.rssLimitMB, restartRssMB: limits.restartRssMB }));
    const { started, stderr, exit } = await runOnce<R>(file, jobFile, limits, out);
    const before = pending.length;
    pending = pending.filter((c) => !out.has(c.id));
    if (started && !out.has(started)) {
      out.set(started, exit === 'timeout' ? { kind: 'hang', ms: limits.caseTimeoutMs } : { kind: 'crash', detail: `${exit}\n${stderr.slice(-2000)}` });
      pending = pending.filter((c) => c.id !== started);
    }
    if (pending.length === before) {
      // The child made no progress at all (it could not even start): report every case once.
      for (const c of pending) out.set(c.id, { kind: 'crash', detail: `child made no progress (${exit}):\n${stderr.slice(-2000)}` });
      pending = [];
    }
  }
  return out;
}

function runOnce<R>(
  file: string,
  jobFile: string,
  limits: ChildLimits,
  out: Map<string, ChildOutcome<R>>,
): Promise<{ started?: string; stderr: string; exit: string }> {
  return new Promise((resolveRun) => {
    const nodeArgs = (limits.nodeArgs ?? []).map((a) => `"${a}" `).join('');
    const cmd = `ulimit -v ${limits.vmemMB * 1024} && exec "${process.execPath}" ${nodeArgs}"${file}" "${jobFile}"`;
    const child = spawn('sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
    let started: string | undefined;
    let startedAt = 0;
    let stderr = '';
    let buf = '';
    let timedOut = false;
    const arm = (ms = limits.caseTimeoutMs): NodeJS.Timeout =>
      setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, ms);
    let timer = arm();
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.length > 20_000) stderr = stderr.slice(-10_000);
    });
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.startsWith('{')) continue;
        const msg = JSON.parse(line) as { start?: string; done?: string; tick?: string; ms?: number; report?: R; maxRssMB?: number; rssBeforeMB?: number; arrayBuffersMB?: number };
        clearTimeout(timer);
        // A tick may name the bound of the step it starts: one that is not the command under test (an oracle's run).
        timer = arm(msg.ms);
        if (msg.start) {
          started = msg.start;
          startedAt = performance.now();
        } else if (msg.done) {
          out.set(msg.done, {
            kind: 'done',
            report: msg.report as R,
            ms: performance.now() - startedAt,
            maxRssMB: msg.maxRssMB ?? 0,
            rssBeforeMB: msg.rssBeforeMB ?? 0,
            arrayBuffersMB: msg.arrayBuffersMB ?? 0,
          });
          started = undefined;
        }
      }
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolveRun({ started, stderr, exit: timedOut ? 'timeout' : `exit ${code ?? ''} ${signal ?? ''}`.trim() });
    });
  });
}
