import * as fs from 'node:fs';
import * as path from 'node:path';
import { has, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { EXIT_HARNESS_USAGE, EXIT_OK, UsageError } from '../errors.js';
import { requireQemuTools } from '../tools.js';

export const REPLAY_HELP = `Usage: qcow2-harness replay [--target T] [--json] DIR|corpus/<id> ...

Replays corpus entries. DIR may be one entry or a corpus directory (every entry in it).
An entry of ours passes when its trace now runs clean; an entry documenting an
external bug passes while that bug still shows as documented. A hostile-image
entry (trace.json "hostile") patches the image its ops write and has the target
repair it (check -r): it runs clean when qemu-img check then passes, the image
opens read/write and reads back as written; ts and qemu can repair.
  --target T   replay on another target than the one that found it
  --json       last stdout line: {"entries","passed","failed","results":[...]}
Exit codes: 0 all pass, 1 some fail, 2 bad command line
`;

const usage = (message: string) => new UsageError(message, 'replay', EXIT_HARNESS_USAGE);

export async function replayCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { long: { target: true, json: false }, usageExit: EXIT_HARNESS_USAGE }, 'replay');
  if (has(p, 'help')) {
    ctx.stdout(REPLAY_HELP);
    return EXIT_OK;
  }
  if (p.operands.length === 0) throw usage('give a corpus entry or a corpus directory');
  const target = last(p, 'target');
  const { isTargetSpec } = await import('../../harness/targets/index.js');
  if (target !== undefined && !isTargetSpec(target)) throw usage(`unknown target '${target}'`);
  const { listEntries } = await import('../../harness/corpus.js');
  const dirs: string[] = [];
  for (const d of p.operands) {
    // Relative to the process's directory, as the entries' own paths in the results are.
    if (fs.existsSync(path.join(d, 'trace.json'))) dirs.push(d);
    else if (fs.existsSync(d) && fs.statSync(d).isDirectory()) dirs.push(...listEntries(d));
    else throw usage(`'${d}' is neither a corpus entry nor a corpus directory`);
  }
  requireQemuTools(['qemu-img', 'qemu-io']);
  const { runReplay } = await import('../../harness/commands.js');
  return runReplay({ dirs, target, json: has(p, 'json') }, ctx);
}
