import * as fs from 'node:fs';
import * as path from 'node:path';
import { has, intOption, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_HARNESS_USAGE, EXIT_OK, UsageError } from '../errors.js';
import { requireQemuTools } from '../tools.js';

export const MINIMIZE_HELP = `Usage: qcow2-harness minimize [--target T] [--corpus DIR] [--max-attempts N] [--json] corpus/<id>

Re-shrinks a saved failure (e.g. after a fix) and saves the smaller trace as a new entry.
  --target T          shrink on another target than the one that found it
  --corpus DIR        where the new entry goes (default: the entry's own corpus)
  --max-attempts N    stop shrinking after N runs
  --json              last stdout line: {"id","fails","attempts","newId","ops"}
Exit codes: 0 minimized (or already minimal), 1 the entry no longer fails, 2 bad command line
`;

const usage = (message: string) => new UsageError(message, 'minimize', EXIT_HARNESS_USAGE);

export async function minimizeCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { long: { target: true, corpus: true, 'max-attempts': true, json: false }, usageExit: EXIT_HARNESS_USAGE }, 'minimize');
  if (has(p, 'help')) {
    ctx.stdout(MINIMIZE_HELP);
    return EXIT_OK;
  }
  if (p.operands.length !== 1) throw usage('give exactly one corpus entry');
  const dir = path.resolve(ctx.cwd, p.operands[0]!);
  if (!fs.existsSync(path.join(dir, 'trace.json'))) throw usage(`'${p.operands[0]}' is not a corpus entry`);
  const maxAttempts = intOption(p, 'max-attempts', 1, 'minimize', EXIT_HARNESS_USAGE);
  const { CorpusFormatError, readEntry } = await import('../../harness/corpus.js');
  let entry;
  try {
    entry = readEntry(dir);
  } catch (e) {
    // A damaged entry is bad input, not a bug of ours.
    if (e instanceof CorpusFormatError || e instanceof SyntaxError) throw new CommandFailed(`${p.operands[0]}: ${e.message}`);
    throw e;
  }
  // Its ops only build the image its patch corrupts: shrinking them says nothing about the repair it documents.
  if (entry.hostile) throw usage(`'${p.operands[0]}' is a hostile-image entry (a patched image to repair), which has no failing op trace to shrink`);
  const target = last(p, 'target') ?? entry.target;
  const { isTargetSpec } = await import('../../harness/targets/index.js');
  if (!isTargetSpec(target)) throw usage(`unknown target '${target}'`);
  const corpus = last(p, 'corpus');
  const corpusDir = corpus !== undefined ? path.resolve(ctx.cwd, corpus) : path.dirname(dir);
  requireQemuTools(['qemu-img', 'qemu-io']);
  const { runMinimize } = await import('../../harness/commands.js');
  return runMinimize({ entry, target, corpusDir, maxAttempts, json: has(p, 'json') }, ctx);
}
