/**
 * What `qcow2-harness bench` prints: the rows it measured (bench.ts), the
 * report around them and the verdict per like-for-like row, which names
 * the floor a row cannot get under when it is above QEMU.
 */
import { loadavg } from 'node:os';

export interface BenchResult {
  name: string;
  cache: 'warm' | 'cold' | '-';
  /** Medians over the pairs, seconds. */
  qemuSeconds: number;
  oursSeconds: number;
  /** Median of the per-pair ratios ours/QEMU, and their range. */
  ratio: number;
  ratioMin: number;
  ratioMax: number;
  pairs: number;
  qemuCommand: string;
  oursCommand: string;
  /** Whether both sides produced the same result (bytes, or qemu-img check clean). */
  verified: boolean;
  note?: string;
  /**
   * The floor: `node -e ''` timed in the same pairs (a third side), as the
   * median of its per-pair ratio to QEMU. No command of ours can be faster
   * than Node starting, so a ratio above 1.0 is unreachable where this is.
   */
  nodeSeconds?: number;
  floorRatio?: number;
  /** Median per pair of ours minus node -e '': what our modules and engine add to Node's start-up. */
  beyondNodeSeconds?: number;
  /**
   * QEMU's own start-up: the same tool's `--version` (exec, dynamic linking,
   * option parsing) timed in the same pairs, and QEMU's time past it.
   */
  qemuStartSeconds?: number;
  qemuStartCommand?: string;
  beyondQemuStartSeconds?: number;
  /**
   * Median per pair of (ours − node -e '') / (QEMU − its --version): our work
   * past start-up against QEMU's. At or below 1.0 while the ratio is above
   * it, the whole difference is Node starting slower than a C binary.
   */
  workRatio?: number;
  /**
   * Median per pair of (node -e '' + QEMU − its --version) / QEMU: the ratio
   * of an engine exactly as fast as QEMU's past start-up, behind Node's start-up.
   */
  startFloorRatio?: number;
  /**
   * convert's second floor: dd moving the same number of bytes, timed in the
   * same pairs, in both of the ways to the disk (written O_DIRECT then fsync,
   * and through the page cache then fdatasync, as qemu-img -t writeback);
   * per pair the faster of the two, and the median of its ratio to QEMU.
   * What the kernel and the disk take with no image format, no zero
   * detection and no start-up beyond dd's.
   */
  ioFloorSeconds?: number;
  ioFloorRatio?: number;
  ioFloorCommand?: string;
  /** Whether this row is the like-for-like comparison the verdict judges (not the informational ones). */
  likeForLike: boolean;
}

export interface CampaignFigures {
  seconds: number;
  jobs: number;
  runs: number;
  runsPerSecond: number;
  /** User+system CPU of the campaign process and all its children, per run. */
  cpuSecondsPerRun: number;
  /** runs/s a machine with `jobs` idle cores would reach at that CPU cost. */
  idleRunsPerSecond: number;
  loadAverage: number;
  command: string;
  failures: number;
}

/** Seconds as the report prints them: four decimals below 0.1 s, three above. */
export const secs = (x: number): string => x.toFixed(x < 0.1 ? 4 : 3);

export function report(results: BenchResult[], campaign: CampaignFigures | undefined, notes: string[]): string {
  const f = secs;
  const lines = [`${machine()}; ratios are medians of per-pair ours/QEMU ratios (range in brackets)`];
  for (const r of results) {
    lines.push(
      `${r.name} [${r.cache}]`,
      `  QEMU ${f(r.qemuSeconds)} s   ours ${f(r.oursSeconds)} s   ratio ${r.ratio.toFixed(2)} [${r.ratioMin.toFixed(2)}–${r.ratioMax.toFixed(2)}] over ${r.pairs} pairs` +
        `${r.verified ? '' : '   (RESULTS DIFFER)'}`,
      `  QEMU: ${r.qemuCommand}`,
      `  ours: ${r.oursCommand}`,
      ...(r.note ? [`  note: ${r.note}`] : []),
      ...(r.floorRatio !== undefined
        ? [`  floor: node -e '' ${f(r.nodeSeconds!)} s = ${r.floorRatio.toFixed(2)}× QEMU; ours beyond Node's start-up ${f(r.beyondNodeSeconds!)} s`]
        : []),
      ...(r.workRatio !== undefined
        ? [`  start-up: ${r.qemuStartCommand} ${f(r.qemuStartSeconds!)} s, QEMU beyond it ${f(r.beyondQemuStartSeconds!)} s; work ratio (ours beyond Node / QEMU beyond its start-up) ${r.workRatio.toFixed(2)}, an engine as fast as QEMU's behind Node's start-up: ${r.startFloorRatio!.toFixed(2)}`]
        : []),
      ...(r.ioFloorRatio !== undefined
        ? [`  floor: dd moving the bytes alone ${f(r.ioFloorSeconds!)} s = ${r.ioFloorRatio.toFixed(2)}× QEMU (${r.ioFloorCommand})`]
        : []),
    );
  }
  lines.push('verdict (like-for-like rows):', ...verdict(results).map((v) => `  ${v}`));
  if (campaign) {
    lines.push(
      `ts campaign, ${campaign.jobs} jobs, ${campaign.seconds.toFixed(1)} s: ${campaign.runs} runs, ${campaign.runsPerSecond.toFixed(1)} runs/s at load ${campaign.loadAverage.toFixed(1)}; ` +
        `${(campaign.cpuSecondsPerRun * 1000).toFixed(1)} ms CPU per run (with children) → ${campaign.idleRunsPerSecond.toFixed(0)} runs/s on ${campaign.jobs} idle cores` +
        `${campaign.failures ? `; ${campaign.failures} failures` : ''}`,
      `  ${campaign.command}`,
      // A ts campaign on a sound build finds nothing: failures mean the figure timed failing runs
      // (a stale or mixed dist/ did this once), or a real engine bug to look at first.
      ...(campaign.failures ? [`  (CAMPAIGN FAILED: ${campaign.failures} failures, so runs/s is not a figure of a working engine; rerun the command above)`] : []),
    );
  }
  for (const n of notes) lines.push(`note: ${n}`);
  return `${lines.join('\n')}\n`;
}

/**
 * One line per like-for-like row: at or below QEMU, or above it with the
 * reason and the floor measured in the same pairs:
 * - floor: Node's start-up alone takes longer than QEMU's whole command;
 *   no engine work can bring that row to 1.0, only what we add to Node can shrink.
 * - start-up: our work past Node's start-up is no slower than QEMU's past
 *   its own (work ratio ≤ 1.0); what is left is Node starting slower than a
 *   C binary, which only a faster engine than QEMU's could hide.
 * - device: ours is no slower than dd moving the same bytes to the same
 *   disk; the copy waits on the device, which QEMU's run got faster.
 * - above: none of these; ours has work left to remove.
 */
export function verdict(results: BenchResult[]): string[] {
  const f = secs;
  return results
    .filter((r) => r.likeForLike)
    .map((r) => {
      const what = `${r.ratio.toFixed(2)}  ${r.name} [${r.cache}]`;
      if (r.ratio <= 1) return `ok      ${what}`;
      if (r.floorRatio === undefined) return `above   ${what}`;
      const node = `node -e '' alone takes ${f(r.nodeSeconds!)} s`;
      if (r.floorRatio > 1) {
        return `floor   ${what}: ${node}, ${r.floorRatio.toFixed(2)}× QEMU's whole ${f(r.qemuSeconds)} s, so 1.0 is out of reach; ours adds ${f(r.beyondNodeSeconds!)} s to Node's start-up`;
      }
      if (r.ioFloorRatio !== undefined && r.ratio <= r.ioFloorRatio) {
        return `device  ${what}: ours ${f(r.oursSeconds)} s, dd moving the same bytes ${f(r.ioFloorSeconds!)} s (${r.ioFloorRatio.toFixed(2)}× QEMU's ${f(r.qemuSeconds)} s): ours is no slower than the disk takes the bytes`;
      }
      if (r.workRatio !== undefined && r.workRatio <= 1) {
        return (
          `start-up ${what}: ours past Node's start-up ${f(r.beyondNodeSeconds!)} s against QEMU's past ${r.qemuStartCommand} ${f(r.beyondQemuStartSeconds!)} s (work ratio ${r.workRatio.toFixed(2)}); ` +
          `${node} against ${f(r.qemuStartSeconds!)} s for QEMU's, so an engine as fast as QEMU's would stand at ${r.startFloorRatio!.toFixed(2)}`
        );
      }
      const io = r.ioFloorRatio === undefined ? '' : `; dd moving the bytes alone takes ${f(r.ioFloorSeconds!)} s (${r.ioFloorRatio.toFixed(2)}× QEMU)`;
      const work = r.workRatio === undefined ? '' : `, work ratio ${r.workRatio.toFixed(2)} past both start-ups`;
      return `above   ${what}: ours ${f(r.oursSeconds)} s against QEMU's ${f(r.qemuSeconds)} s; ${node} (floor ${r.floorRatio.toFixed(2)}), our modules and engine the other ${f(r.beyondNodeSeconds!)} s${work}${io}`;
    });
}

export function machine(): string {
  return `node ${process.version}, ${process.platform}/${process.arch}, load ${loadavg()
    .map((x) => x.toFixed(1))
    .join(' ')}`;
}
