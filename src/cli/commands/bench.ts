import { has, intOption, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { EXIT_OK, UsageError } from '../errors.js';
import { parseSize } from '../sizes.js';
import { requireQemuTools } from '../tools.js';

export const BENCH_HELP = `Usage: qcow2-harness bench [--json] [--dir DIR] [--size BYTES] [--writes N] [--pairs N]
                           [--only convert,writes,check,amend,startup,campaign] [--cache warm,cold]
                           [--campaign-seconds S] [--campaign-jobs N] [--cli PATH] [--keep]

Times our CLI against qemu-img/qemu-io on the same images and prints ours/QEMU ratios,
each the median over --pairs pairs (default 5) measured back to back:
  convert   convert -O raw of a fully written image (--size, default 1 GiB, 64 KiB clusters),
            against qemu-img convert -t writeback (both flush the output once; like for like)
            and qemu-img's default -t unsafe (which never flushes)
  writes    --writes random 4 KiB writes (default 5000) in one 'io' process, against
            qemu-io -t writeback (like for like) and qemu-io's default writethrough
  check     check of the fully written image, and of one 1/8 its size at 512 B clusters
            (16x the L2 entries: the walk, not start-up, is the work)
  amend     amend -o refcount_bits=64 (from 16) of the fully written image, 64 KiB clusters
  startup   'qcow2-harness --version' against node -e '' (no QEMU side: the floor is Node's)
  campaign  a ts fuzz campaign (--campaign-seconds, default 20; --campaign-jobs, default 2):
            runs/s, and CPU seconds per run (the campaign and all its children)
Every pair also times node -e '' (Node's start-up, the floor of any command of ours) and
the QEMU tool's --version (its own start-up); convert's pairs also time dd moving the same
bytes (O_DIRECT + fsync, and page cache + fdatasync). The report ends with a verdict per
like-for-like row: ok (at or below 1.0); floor (Node's start-up alone is slower than
QEMU's whole command, so 1.0 cannot be reached); device (ours is no slower than dd moving
the same bytes: the disk, not the engine, sets the time); start-up (our work past Node's
start-up is no slower than QEMU's past its own: the rest is Node starting slower than a C
binary); or above (ours has work left, with what start-up and engine each take).

  --cache    warm, cold or both (default warm,cold); cold drops the page cache before each
             timed command (needs root: echo 3 > /proc/sys/vm/drop_caches)
  --cli      the built CLI to time (default: this one), e.g. another build to compare
  --json     one JSON document on stdout instead of the table
  --dir      work directory (default: a new one under the system tmp dir, removed afterwards)
  --keep     keep the work directory
Needs qemu-img and qemu-io on PATH and a built CLI (npm run build).
Exit codes: 0 every result verified and the campaign found nothing, 1 a result differs, the
campaign failed, a step failed, or a bad command line
`;

const BENCHMARKS = ['convert', 'writes', 'check', 'amend', 'startup', 'campaign'] as const;
const MiB = 1024 * 1024;

export async function benchCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(
    argv,
    {
      long: {
        json: false,
        keep: false,
        dir: true,
        size: true,
        writes: true,
        pairs: true,
        only: true,
        cache: true,
        'campaign-seconds': true,
        'campaign-jobs': true,
        cli: true,
      },
    },
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
  const only = (last(p, 'only') ?? BENCHMARKS.join(',')).split(',');
  for (const x of only) if (!(BENCHMARKS as readonly string[]).includes(x)) throw new UsageError(`unknown benchmark '${x}'`, 'bench');
  const caches = (last(p, 'cache') ?? 'warm,cold').split(',');
  for (const x of caches) if (x !== 'warm' && x !== 'cold') throw new UsageError(`--cache: '${x}' is not warm or cold`, 'bench');
  requireQemuTools(['qemu-img', 'qemu-io']);
  const { runBench } = await import('../../harness/bench.js');
  return runBench({
    json: has(p, 'json'),
    keep: has(p, 'keep'),
    dir: last(p, 'dir'),
    cli: last(p, 'cli'),
    size,
    writes: intOption(p, 'writes', 1, 'bench') ?? 5000,
    pairs: intOption(p, 'pairs', 1, 'bench') ?? 5,
    only: new Set(only as (typeof BENCHMARKS)[number][]),
    caches: [...new Set(caches as ('warm' | 'cold')[])],
    campaignSeconds: intOption(p, 'campaign-seconds', 1, 'bench') ?? 20,
    campaignJobs: intOption(p, 'campaign-jobs', 1, 'bench') ?? 2,
  });
}
