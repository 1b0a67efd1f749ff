/**
 * Replay of a corpus entry whose external bug is about how much work QEMU
 * does (trace.json "external.cost"): the entry's ops run through qemu-img
 * under an instruction counter at a ladder of cluster sizes, and the bug
 * shows while each doubling of the cluster size multiplies the count by at
 * least the documented factor. Counting instructions, not seconds, keeps the
 * verdict the same on a fast, a slow and a loaded machine.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { countInstructions, imgCreate, QEMU_IMG } from '../qemu/index.js';
import { creationOptions } from './config.js';
import type { CostExpectation, TraceFile } from './corpus.js';
import type { Op } from './ops.js';
import type { Failure } from './oracles.js';

export interface CostReplay {
  passed: boolean;
  expected: string;
  failure?: Failure;
}

/** qemu-img arguments of an op that runs as a qemu-img command (only amend is needed so far). */
function qemuImgArgs(op: Op, image: string): string[] {
  if (op.kind !== 'amend') throw new Error(`cost replay: op '${op.kind}' is not a qemu-img command`);
  const v = op.key === 'lazy_refcounts' ? (op.value ? 'on' : 'off') : String(op.value);
  return ['amend', '-f', 'qcow2', '-o', `${op.key}=${v}`, image];
}

export async function replayCost(entry: TraceFile & { parsedOps: Op[] }, cost: CostExpectation, tmpRoot?: string): Promise<CostReplay> {
  const sizes = cost.clusterSizes;
  const expected =
    `${entry.external!.project} bug still present: each doubling of the cluster size (${sizes.join(', ')}) ` +
    `multiplies the instructions of "${entry.ops.join('; ')}" by >= ${cost.minGrowthPerDoubling}`;
  const root = tmpRoot ?? os.tmpdir();
  fs.mkdirSync(root, { recursive: true });
  const dir = fs.mkdtempSync(path.join(root, 'qh-cost-'));
  try {
    const counts: number[] = [];
    for (const clusterSize of sizes) {
      const image = path.join(dir, `c${clusterSize}.qcow2`);
      await imgCreate(image, creationOptions({ ...entry.config, clusterSize }, undefined));
      let total = 0;
      for (const op of entry.parsedOps) {
        const args = qemuImgArgs(op, image);
        const r = await countInstructions(QEMU_IMG, args);
        if (r.rc !== 0) {
          const message = `qemu-img ${args.join(' ')} failed (rc ${r.rc}) at cluster size ${clusterSize}: ${r.stderr.trim()}`;
          return { passed: false, expected, failure: { oracle: 'op', message } };
        }
        total += r.instructions;
      }
      counts.push(total);
    }
    // Growth per doubling, so a ladder may skip sizes: (c1/c0)^(1/log2(s1/s0)).
    const growth = counts.slice(1).map((c, i) => (c / counts[i]!) ** (1 / Math.log2(sizes[i + 1]! / sizes[i]!)));
    const shows = growth.every((g) => g >= cost.minGrowthPerDoubling);
    const measured =
      `${entry.ops.map((o) => `qemu-img ${o}`).join('; ')}: ${counts.map((c, i) => `${(c / 1e6).toFixed(1)}M at ${sizes[i]}`).join(', ')} ` +
      `instructions (x${growth.map((g) => g.toFixed(2)).join(', x')} per doubling; linear work would be x2)`;
    if (!growth.every((g) => g >= cost.minGrowthPerDoubling)) return { passed: false, expected: `${expected} (measured ${measured})` };
    const failure: Failure = { oracle: 'cost', message: measured };
    return { passed: measured.includes(entry.external!.messageIncludes), expected, failure };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
