import { has, intOption, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { EXIT_OK, UsageError } from '../errors.js';
import { parseSize } from '../sizes.js';
import { requireQemuTools } from '../tools.js';

export const BENCH_HELP = `Usage: qcow2-harness bench [--json] [--dir DIR] [--size BYTES] [--writes N]
                           [--only convert,writes,amend] [--repeat N] [--keep]
                           [--amend-timeout S]

Times our CLI against qemu-img/qemu-io on the same images and prints ours/qemu ratios:
  convert   convert -O raw of a fully written image (--size, default 1 GiB, 64 KiB clusters)
  writes    --writes random 4 KiB writes (default 10000) in one qemu-io / one 'io' process,
            against qemu-io -t writeback (like for like) and qemu-io's default writethrough
  amend     amend -o refcount_bits=1 and =64 of a fully written image at 64 KiB clusters, and
            refcount_bits=64 at 2 MiB clusters (qemu-img 7.2 needs tens of minutes there: its
            time grows with the square of the cluster size; it is killed after --amend-timeout,
            default 120 s, and the ratio reported as an upper bound)

  --json     one JSON document on stdout instead of the table
  --dir      work directory (default: a new one under the system tmp dir, removed afterwards)
  --repeat   time each command N times and keep the fastest (default 1)
  --keep     keep the work directory
Needs qemu-img and qemu-io on PATH and a built CLI (npm run build).
Exit codes: 0 every result verified, 1 a result differs, a step failed, or a bad command line
`;

const BENCHMARKS = ['convert', 'writes', 'amend'];
const MiB = 1024 * 1024;

export async function benchCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(
    argv,
    { long: { json: false, keep: false, dir: true, size: true, writes: true, repeat: true, 'amend-timeout': true, only: true } },
    'bench',
  );
  if (has(p, 'help')) {
    ctx.stdout(BENCH_HELP);
    return EXIT_OK;
  }
  if (p.operands.length) throw new UsageError(`unknown argument '${p.operands[0]}'`, 'bench');
  const sizeText = last(p, 'size');
  const size = sizeText === undefined ? 1024 * MiB : parseSize(sizeText);
  if (size === null || size <= 0) throw new UsageError(`--size: '${sizeText}' is not a size`, 'bench');
  if (size % (2 * MiB) !== 0) throw new UsageError('--size must be a multiple of 2 MiB', 'bench');
  const only = new Set((last(p, 'only') ?? BENCHMARKS.join(',')).split(','));
  for (const x of only) if (!BENCHMARKS.includes(x)) throw new UsageError(`unknown benchmark '${x}'`, 'bench');
  requireQemuTools(['qemu-img', 'qemu-io']);
  const { runBench } = await import('../../harness/bench.js');
  return runBench({
    json: has(p, 'json'),
    keep: has(p, 'keep'),
    dir: last(p, 'dir'),
    size,
    writes: intOption(p, 'writes', 1, 'bench') ?? 10_000,
    repeat: intOption(p, 'repeat', 1, 'bench') ?? 1,
    amendTimeoutS: intOption(p, 'amend-timeout', 1, 'bench') ?? 120,
    only,
  });
}
