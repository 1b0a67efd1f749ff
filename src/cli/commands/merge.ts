import * as fs from 'node:fs';
import * as path from 'node:path';
import { has, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_HARNESS_USAGE, EXIT_OK, UsageError } from '../errors.js';

export const MERGE_HELP = `Usage: qcow2-harness merge [--json] DEST SRC...

Merges the corpora of sharded campaigns (fuzz --shard i/n --corpus SRC) into
DEST: the union of their entries, one per failure signature (the oracle and the
message with numbers blanked), the smallest trace winning (an entry documenting
an external bug wins over a plain finding; then fewer ops, then shorter text).
DEST is created if missing; its own entries take part, so a DEST entry is
replaced when a smaller trace of its signature comes in, and DEST ends with one
entry per signature too. Each entry is copied to a temporary name and renamed
into place; everything is read before anything changes, so a broken entry
stops the merge with DEST untouched. Merging the same inputs again changes
nothing. SRC may be a corpus directory or one entry.
  --json   last stdout line: {"read","signatures","added":[...],"removed":[...],"unchanged":[...]}
Exit codes: 0 merged, 1 an entry could not be read or written, 2 bad command line
`;

const usage = (message: string) => new UsageError(message, 'merge', EXIT_HARNESS_USAGE);

export async function mergeCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { long: { json: false }, usageExit: EXIT_HARNESS_USAGE }, 'merge');
  if (has(p, 'help')) {
    ctx.stdout(MERGE_HELP);
    return EXIT_OK;
  }
  if (p.operands.length < 2) throw usage('give DEST and at least one SRC corpus');
  const [dest, ...sources] = p.operands.map((d) => path.resolve(ctx.cwd, d));
  if (fs.existsSync(dest!) && !fs.statSync(dest!).isDirectory()) throw usage(`'${p.operands[0]}' is not a directory`);
  sources.forEach((s, i) => {
    if (!fs.existsSync(s) || !fs.statSync(s).isDirectory()) throw usage(`'${p.operands[i + 1]}' is not a corpus directory`);
  });
  const { mergeCorpora } = await import('../../harness/merge.js');
  const { CorpusFormatError } = await import('../../harness/corpus.js');
  let r;
  try {
    r = mergeCorpora(dest!, sources);
  } catch (e) {
    if (e instanceof CorpusFormatError) throw new CommandFailed(`${e.message}; nothing merged`);
    throw e;
  }
  const line =
    `merge: ${r.read} entries read, ${r.signatures} signatures in ${p.operands[0]}: ` +
    `${r.added.length} added, ${r.removed.length} removed, ${r.unchanged.length} unchanged\n`;
  if (has(p, 'json')) {
    ctx.stderr(line);
    ctx.stdout(JSON.stringify(r) + '\n');
  } else ctx.stdout(line);
  return EXIT_OK;
}
