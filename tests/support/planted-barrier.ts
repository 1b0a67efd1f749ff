/**
 * A missing data barrier planted in our engine, for the crash oracle's tests
 * (src/harness/crash.test.ts, and src/qcow2/storage/zero-range.test.ts with
 * fresh clusters zeroed by range).
 *
 * Three L2 tables and an L2 cache of two. After a flush, a write into a new
 * cluster under table A leaves A dirty; reading under B and then C evicts A,
 * and writing A back is where the engine flushes first (writeBackL2: data and
 * refcounts before the L2 entry that points at them). With that flush
 * dropped, the log holds the data, then the L2 table naming it.
 */
import { applyOp } from '../../src/harness/apply-model.js';
import { CrashTracker, examineCrashStates, visitCrashStates } from '../../src/harness/crash.js';
import { makeData } from '../../src/harness/data.js';
import type { Op } from '../../src/harness/ops.js';
import { DiskModel } from '../../src/model/disk.js';
import { Qcow2Image } from '../../src/qcow2/image.js';
import { RecordingStorage } from '../../src/qcow2/storage/recording.js';
import type { BlockStorage } from '../../src/qcow2/storage/types.js';
import { imgCheck } from '../../src/qemu/index.js';

/** Our engine's storage with its flushes dropped while `dropping`: a missing barrier, planted. */
export class BarrierDroppingStorage extends RecordingStorage {
  dropping = false;
  dropped = 0;
  zeroRanges = 0;
  constructor(opts: { writeZeroes?: boolean } = {}) {
    super(undefined, opts);
  }
  override writeZeroes(offset: number, length: number): boolean {
    this.zeroRanges++;
    return super.writeZeroes(offset, length);
  }
  override flush(): void {
    if (this.dropping) {
      this.dropped++;
      return;
    }
    super.flush();
  }
}

export interface PlantedBarrierRun {
  problem?: string;
  /** Flushes the plant dropped. */
  dropped: number;
  /** writeZeroes calls the engine made on the recording. */
  zeroRanges: number;
  /** qemu-img checks the crash states got. */
  qemuChecks: number;
}

/** Runs the scenario above, with the flush dropped when `plant`, and examines its crash states in `dir`. */
export async function runPlantedBarrier(o: { plant: boolean; dir: string; fill?: 'stale' | 'zeros'; writeZeroes?: boolean }): Promise<PlantedBarrierRun> {
  const cs = 4096;
  const l2Span = (cs / 8) * cs; // guest bytes one L2 table maps
  const model = new DiskModel({ size: 3 * l2Span, clusterSize: cs, refcountBits: 16, compat: '1.1', lazyRefcounts: false, extendedL2: false, compressionType: 'zlib' });
  const tracker = new CrashTracker(model);
  const rec = new BarrierDroppingStorage({ writeZeroes: o.writeZeroes });
  const img = Qcow2Image.create(rec, { size: 3 * l2Span, clusterSize: cs }, { l2CacheSize: 2 * cs });
  let n = 0;
  const op = (x: Op) => {
    n++;
    if (x.kind === 'write') img.write(x.off, makeData(n, x.off, x.len));
    if (x.kind === 'flush') img.flush();
    applyOp(model, x, n);
    tracker.afterOp(x, true);
  };
  for (const t of [0, 1, 2]) op({ kind: 'write', off: t * l2Span, len: 512 });
  op({ kind: 'flush' });
  rec.dropping = o.plant;
  op({ kind: 'write', off: cs, len: 512 }); // new cluster under table A
  img.read(l2Span, 512);
  img.read(2 * l2Span, 512); // evicts A: write-back after a (dropped) barrier
  rec.dropping = false;
  const open = (s: BlockStorage) => Qcow2Image.open(s);
  const r = await examineCrashStates(
    (budget, seed, visit) => visitCrashStates(rec, { budget, seed, dir: o.dir, open, ...(o.fill ? { fill: o.fill } : {}) }, visit),
    tracker,
    'the planted crash point',
    7,
    (file) => imgCheck(file),
  );
  img.close();
  return { ...r, dropped: rec.dropped, zeroRanges: rec.zeroRanges };
}
