import { all, has, intOption, last, parseArgs, type ParsedArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_HARNESS_USAGE, EXIT_OK, UsageError } from '../errors.js';
import type { ProducerSpec } from '../../harness/targets/index.js';
import { StatusLine } from '../status.js';
import { requireQemuTools } from '../tools.js';

/**
 * Every fuzz option: name, the value's placeholder (false: a flag), and its
 * help line (null: internal, not shown). A new option is one line here plus
 * the line in fuzzCommand() that reads it; --help, parsing and the command
 * line of forked workers follow from this table.
 */
const OPTIONS: [name: string, value: string | false, help: string | null][] = [
  ['target', 'T', 'ts (default: our engine), qemu (qemu-io/qemu-img), libqcow (python3-libqcow, a reader),\ncmd:PROGRAM (docs/cmd-protocol.md; a program may be a writer or a reader)'],
  ['producer', 'P', 'reader mode: qemu (default for readers) or ts writes every image, the target reads it;\nwith --target ts or qemu this makes that engine the reader'],
  ['time', 'S', 'run for S seconds (generation; shrinking a failure has its own budget)'],
  ['shrink-time', 'S', 'seconds each failure may spend shrinking (default 300), whenever it was found'],
  ['runs', 'N', 'run N generated cases (default 100 when --time is not given)'],
  ['seed', 'N', 'campaign seed (default: random, printed); same seed, same runs'],
  ['jobs', 'N', 'parallel workers (processes for ts, concurrent runs for qemu/cmd)'],
  ['shard', 'i/n', 'take only shard i of n (0-based); shards split a campaign deterministically'],
  ['corpus', 'DIR', 'where minimized failures go (default: corpus)'],
  ['max-ops', 'N', 'ops per case at most (default 12)'],
  ['exclude', 'LIST', 'leave out op kinds and configuration features, comma-separated (repeatable),\ne.g. write-compressed,compression_type=zstd: a known bug then does not drown new ones'],
  ['include', 'LIST', 'mix in op kinds the plain campaign never draws; only bitmap: the traces of the bitmap suite\n(persistent bitmap add/remove/clear/enable/disable/merge between guest I/O, resize, snapshot, reopen),\nclean-closing images, and no amend, crash, fault or aio (the bitmap model does not describe them);\n--target ts or qemu only'],
  ['json', false, 'last stdout line: {"runs","readRuns","refusals":{feature:count},"opCounts":{kind:count},"ops","qemuImgChecks","failures",\n"elapsedSeconds","corpus":[...]}'],
  ['junit', 'FILE', 'also write a JUnit XML report'],
  ['status-every', 'S', 'without a terminal, a status line at least every S seconds (default 10)'],
  ['progress-json', false, null], // a forked worker reports progress to its parent
];

/** Options a forked worker gets from its parent in its own form, not copied (the seed: the one the parent chose, even at random). */
const NOT_FOR_WORKERS = new Set(['jobs', 'shard', 'seed', 'json', 'junit', 'progress-json']);

function optionLines(): string {
  const shown: [string, string][] = OPTIONS.filter(([, , help]) => help !== null).map(([name, value, help]) => [
    `--${name}${value ? ` ${value}` : ''}`,
    help!,
  ]);
  shown.push(['--help', 'this text']);
  const width = Math.max(...shown.map(([flag]) => flag.length)) + 2;
  // A help text's further lines go under its first one.
  return shown.map(([flag, help]) => `  ${flag.padEnd(width)}${help.split('\n').join(`\n  ${' '.repeat(width)}`)}`).join('\n');
}

export const FUZZ_HELP = `Usage: qcow2-harness fuzz [options]

Property-based fuzzing of a qcow2 implementation against the reference model,
with qemu-img check/compare/info after every run. Failures are shrunk and saved.
${optionLines()}
On a terminal, one progress line is redrawn in place; otherwise (a log, CI) a
status line (runs, ops, runs/s, failures, elapsed) is printed at least every --status-every seconds.
Exit codes: 0 nothing found, 1 failures found, 2 bad command line
`;

const usage = (message: string) => new UsageError(message, 'fuzz', EXIT_HARNESS_USAGE);

function parseShard(v: string | undefined): { index: number; count: number } {
  if (v === undefined) return { index: 0, count: 1 };
  const m = /^(\d+)\/(\d+)$/.exec(v);
  if (!m || Number(m[2]) < 1 || Number(m[1]) >= Number(m[2])) throw usage('--shard must be i/n with 0 <= i < n');
  return { index: Number(m[1]), count: Number(m[2]) };
}

/** The parsed options again as words, for a forked worker's command line. */
function workerArgv(p: ParsedArgs): string[] {
  const out: string[] = [];
  for (const [name, value] of OPTIONS) {
    if (NOT_FOR_WORKERS.has(name)) continue;
    for (const v of all(p, name)) out.push(value ? `--${name}=${v}` : `--${name}`);
  }
  return out;
}

export async function fuzzCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { long: Object.fromEntries(OPTIONS.map(([name, value]) => [name, value !== false])), usageExit: EXIT_HARNESS_USAGE }, 'fuzz');
  if (has(p, 'help')) {
    ctx.stdout(FUZZ_HELP);
    return EXIT_OK;
  }
  if (p.operands.length) throw usage(`unexpected argument '${p.operands[0]}'`);
  const int = (name: string, min: number) => intOption(p, name, min, 'fuzz', EXIT_HARNESS_USAGE);
  const target = last(p, 'target') ?? 'ts';
  const producer = last(p, 'producer');
  const timeSec = int('time', 1);
  const runs = int('runs', 1);
  if (timeSec !== undefined && runs !== undefined) throw usage('give --time or --runs, not both');
  const o = {
    target,
    producer: producer as ProducerSpec | undefined,
    timeSec,
    shrinkTimeSec: int('shrink-time', 1),
    runs,
    seed: int('seed', -(2 ** 31)) ?? Math.floor(Math.random() * 2 ** 31),
    jobs: int('jobs', 1) ?? 1,
    shard: parseShard(last(p, 'shard')),
    corpusDir: last(p, 'corpus') ?? 'corpus',
    maxOps: int('max-ops', 1) ?? 12,
    json: has(p, 'json'),
    junit: last(p, 'junit'),
    workerArgv: workerArgv(p),
  };
  const statusEvery = int('status-every', 1) ?? 10;
  // Loaded only now: --help and a bad command line never pay for fast-check and the targets.
  const { isProducerSpec, isTargetSpec, libqcowMissing } = await import('../../harness/targets/index.js');
  if (!isTargetSpec(target)) throw usage(`unknown target '${target}'`);
  if (producer !== undefined && !isProducerSpec(producer)) throw usage(`--producer must be qemu or ts, not '${producer}'`);
  if (target === 'libqcow') {
    const missing = libqcowMissing();
    // Python's pyqcow is not there: the environment, said in one line (exit 2, as before).
    if (missing) throw new CommandFailed(missing, EXIT_HARNESS_USAGE);
  }
  requireQemuTools(target === 'qemu' ? ['qemu-img', 'qemu-io'] : ['qemu-img']);
  const { parseExclusions, parseInclusions } = await import('../../harness/exclude.js');
  let exclude;
  try {
    exclude = parseExclusions(all(p, 'exclude'));
  } catch (e) {
    throw usage((e as Error).message);
  }
  let includeBitmaps;
  try {
    includeBitmaps = parseInclusions(all(p, 'include')).bitmaps;
  } catch (e) {
    throw usage((e as Error).message);
  }
  if (includeBitmaps && ((target !== 'ts' && target !== 'qemu') || producer !== undefined)) {
    throw usage('--include bitmap needs --target ts or qemu (a writer whose bitmaps QEMU can read), without --producer');
  }
  if (includeBitmaps && exclude.kinds.has('bitmap')) throw usage('--include bitmap and --exclude bitmap contradict each other');
  const { runFuzz } = await import('../../harness/commands.js');

  const mode = has(p, 'progress-json') ? 'worker' : process.stderr.isTTY === true ? 'live' : 'status';
  const status = new StatusLine({ target, mode, everySeconds: statusEvery, write: (t) => ctx.stderr(t) });
  if (mode !== 'worker') ctx.stderr(`fuzz: target ${target}, seed ${o.seed}, shard ${o.shard.index}/${o.shard.count}\n`);
  status.start();
  try {
    return await runFuzz({ ...o, exclude, includeBitmaps }, ctx, { update: (s) => status.update(s), done: () => status.stop() });
  } finally {
    status.stop();
  }
}
