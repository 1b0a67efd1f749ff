import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createQcow2File, openQcow2File } from '../../qcow2/open-file.js';
import type { Qcow2Image } from '../../qcow2/image.js';
import { imgCheck, imgCompare } from '../../qemu/index.js';
import { has, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { EXIT_FAILURE, EXIT_OK, UsageError } from '../errors.js';
import { reason } from '../open.js';
import { parseImageSize } from '../sizes.js';
import { requireQemuTools } from '../tools.js';

export const DEMO_HELP = `Usage: qcow2-harness demo [--size SIZE] [--cluster-size SIZE] [--dir DIR] [--keep]

Creates a qcow2 image with this project's engine, runs a short scripted
session on it (writes at aligned and unaligned offsets, a compressed cluster,
reads, discards, write-zeroes with and without unmap, a reopen), checks every
read against an in-memory reference disk, then asks QEMU: 'qemu-img check'
must find no errors or leaks and 'qemu-img compare' must find the image
identical to the reference.
Exit codes: 0 all of that holds, 1 otherwise (or a bad command line), 70 an
internal error.
  --size SIZE          virtual size (default 16M)
  --cluster-size SIZE  cluster size (default 64k)
  --dir DIR            where to put the files (default: a new temp directory, removed afterwards)
  --keep               keep the files and print where they are
`;

type Step = { what: string; run: (img: Qcow2Image, model: Uint8Array) => void };

/** Content unique per call, so a misplaced range can never pass for the right one. */
function stamp(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  let x = (seed * 2654435761) >>> 0;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function script(size: number, cs: number): Step[] {
  const w = (off: number, len: number, seed: number): Step => ({
    what: `write ${off} ${len}`,
    run: (img, m) => {
      const d = stamp(len, seed);
      img.write(off, d);
      m.set(d, off);
    },
  });
  return [
    w(0, cs, 1),
    w(cs + 1000, 3 * cs, 2),
    w(size / 2 - 512, 4096, 3),
    w(size - 4096, 4096, 4),
    {
      what: `write -c ${size / 4} ${cs}`,
      run: (img, m) => {
        const d = new Uint8Array(cs).fill(0x66);
        img.writeCompressed(size / 4, d);
        m.set(d, size / 4);
      },
    },
    { what: `discard 0 ${cs}`, run: (img, m) => (img.discard(0, cs), m.fill(0, 0, cs)) },
    // A partial-cluster discard leaves the data (DESIGN.md, guest-visible semantics).
    { what: `discard ${2 * cs + 7} 100`, run: (img) => img.discard(2 * cs + 7, 100) },
    { what: `write -z ${cs + 5000} 10000`, run: (img, m) => (img.writeZeroes(cs + 5000, 10000), m.fill(0, cs + 5000, cs + 15000)) },
    { what: `write -z -u ${2 * cs} ${cs}`, run: (img, m) => (img.writeZeroes(2 * cs, cs, { unmap: true }), m.fill(0, 2 * cs, 3 * cs)) },
    w(2 * cs + 3, 3, 5),
    { what: 'flush', run: (img) => img.flush() },
  ];
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

export async function demoCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { long: { size: true, 'cluster-size': true, dir: true, keep: false } }, 'demo');
  if (has(p, 'help')) {
    ctx.stdout(DEMO_HELP);
    return EXIT_OK;
  }
  if (p.operands.length) throw new UsageError(`Unexpected argument: ${p.operands[0]}`, 'demo');
  const size = parseImageSize(last(p, 'size') ?? '16M', 'demo');
  const cs = parseImageSize(last(p, 'cluster-size') ?? '64k', 'demo');
  if (size < 8 * cs || size % cs) throw new UsageError('--size must be a multiple of the cluster size and at least 8 clusters', 'demo');
  requireQemuTools(['qemu-img']);
  const given = last(p, 'dir');
  const dir = given ? path.resolve(ctx.cwd, given) : fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-harness-demo-'));
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'demo.qcow2');
  const rawFile = path.join(dir, 'expected.raw');
  const problems: string[] = [];
  const model = new Uint8Array(size);
  try {
    ctx.stdout(`Creating ${file} (qcow2, ${size} bytes, cluster_size=${cs})\n`);
    let img = createQcow2File(file, { size, clusterSize: cs });
    try {
      for (const step of script(size, cs)) {
        step.run(img, model);
        // Read back a window around every step, plus the whole disk at the end.
        const got = img.read(0, size);
        const at = firstDifference(got, model);
        ctx.stdout(`  ${step.what.padEnd(28)} ${at < 0 ? 'ok' : `MISMATCH at guest offset ${at}`}\n`);
        if (at >= 0) problems.push(`after '${step.what}' the disk differs from the reference at offset ${at}`);
      }
    } finally {
      img.close();
    }
    img = openQcow2File(file, { readOnly: true });
    try {
      const at = firstDifference(img.read(0, size), model);
      ctx.stdout(`  ${'close, reopen, read all'.padEnd(28)} ${at < 0 ? 'ok' : `MISMATCH at guest offset ${at}`}\n`);
      if (at >= 0) problems.push(`after reopening, the disk differs from the reference at offset ${at}`);
    } finally {
      img.close();
    }

    const check = await imgCheck(file);
    const j = check.json;
    const verdict = j
      ? `exit ${check.rc}, ${j.corruptions ?? 0} corruptions, ${j.leaks ?? 0} leaks, ${j['allocated-clusters'] ?? 0}/${j['total-clusters'] ?? 0} clusters allocated`
      : `exit ${check.rc}: ${check.stderr.trim()}`;
    ctx.stdout(`qemu-img check: ${verdict}\n`);
    if (check.rc !== 0) problems.push(`qemu-img check: ${verdict}`);

    fs.writeFileSync(rawFile, model);
    const cmp = await imgCompare(file, rawFile, { formatA: 'qcow2', formatB: 'raw' });
    const said = (cmp.stdout + cmp.stderr).trim();
    ctx.stdout(`qemu-img compare with the reference: ${said} (exit ${cmp.rc})\n`);
    if (cmp.rc !== 0) problems.push(`qemu-img compare: ${said}`);
  } catch (e) {
    problems.push(`the session failed: ${reason(e)}`);
  } finally {
    if (has(p, 'keep')) ctx.stdout(`Files kept in ${dir}\n`);
    else if (given) fs.rmSync(file, { force: true }), fs.rmSync(rawFile, { force: true });
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  if (problems.length) {
    for (const m of problems) ctx.stderr(`qcow2-harness: demo: ${m}\n`);
    ctx.stdout('RESULT: FAIL\n');
    return EXIT_FAILURE;
  }
  ctx.stdout('RESULT: OK (our engine and qemu-img agree)\n');
  return EXIT_OK;
}
