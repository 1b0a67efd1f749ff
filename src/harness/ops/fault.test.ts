import { describe, expect, it } from 'vitest';
import { DiskModel } from '../../model/disk.js';
import { StorageIoError } from '../../qcow2/errors.js';
import { entryOffset } from '../../qcow2/format/entries.js';
import { Qcow2Image } from '../../qcow2/image.js';
import { FaultyStorage } from '../../qcow2/storage/faulty.js';
import { MemoryStorage } from '../../qcow2/storage/memory.js';
import { makeData } from '../data.js';
import { runTrace } from '../execute.js';
import { toModelConfig } from '../config.js';
import { makeTarget } from '../targets/index.js';
import { plainConfig } from '../../../tests/support/trace.js';
import { blkdebugOptions, FaultContainmentError, formatOp, parseOp, specOf, TS_FAULT_POINTS, type EngineSession, type FaultOp } from './index.js';

const cs = 4096;

function session(): { s: EngineSession; img: Qcow2Image; faults: FaultyStorage } {
  const faults = new FaultyStorage(new MemoryStorage());
  const img = Qcow2Image.create(faults, { size: 8 * cs, clusterSize: cs });
  return { s: { image: img, faults, reopen: () => undefined }, img, faults };
}

const fault = (where: string, line: string): FaultOp => parseOp(`fault ${where} eio ${line}`) as FaultOp;

describe('fault op on our engine', () => {
  it('fails the n-th storage request of the op only, then the image works on', () => {
    const { s, img, faults } = session();
    const op = fault('write@1', `write 0 ${cs}`);
    expect(() => specOf(op).engine!(s, op, makeData(1, 0, cs))).toThrow(StorageIoError);
    // Disarmed: later requests go through.
    img.write(0, makeData(2, 0, cs));
    expect(faults.operations('write')).toBeGreaterThan(0);
    expect(img.read(0, cs)).toEqual(makeData(2, 0, cs));
    expect(img.check('none').corruptions).toBe(0);
  });

  it('a fault point the op never reaches lets it succeed', () => {
    const { s, img } = session();
    const op = fault('flush@9', `write 0 ${cs}`);
    specOf(op).engine!(s, op, makeData(1, 0, cs));
    expect(img.read(0, cs)).toEqual(makeData(1, 0, cs));
  });

  it('catches a write into a data cluster the op may not touch (planted bug)', () => {
    const { s, img, faults } = session();
    img.write(cs, makeData(1, cs, cs)); // guest cluster 1 now has a data cluster
    const e = img.entryFor(1);
    const hostOff = entryOffset(e.hi, e.lo);
    // An engine that, writing guest cluster 0, also scribbles on cluster 1's data.
    const buggy: EngineSession = {
      ...s,
      faults,
      image: new Proxy(img, {
        get(t, k) {
          if (k === 'write') return (off: number, d: Uint8Array) => (t.write(off, d), faults.write(hostOff, new Uint8Array(512)));
          const v = Reflect.get(t, k);
          return typeof v === 'function' ? v.bind(t) : v;
        },
      }),
    };
    const op = fault('write@50', `write 0 ${cs}`);
    expect(() => specOf(op).engine!(buggy, op, makeData(2, 0, cs))).toThrow(FaultContainmentError);
    // The same op without the scribble passes the check.
    specOf(op).engine!(s, op, makeData(2, 0, cs));
  });
});

describe('fault op on an image with an external data file', () => {
  // Data clusters sit in the data file at host offset = guest offset; the image file holds metadata only.
  function dataFileSession() {
    const faults = new FaultyStorage(new MemoryStorage());
    const dataFaults = new FaultyStorage(new MemoryStorage());
    // Past one L2 table's reach (512 clusters of 4 KiB), so a write at the end allocates a second one.
    const img = Qcow2Image.create(faults, { size: 520 * cs, clusterSize: cs, dataFile: 'image.data' }, { openDataFile: () => dataFaults });
    const s: EngineSession = { image: img, faults, dataFaults, reopen: () => undefined };
    return { s, img, faults, dataFaults };
  }

  it('does not hold a metadata write at a data cluster offset of the data file against the op', () => {
    const { s, img } = dataFileSession();
    img.write(0, makeData(1, 0, 4 * cs)); // data clusters at 0..3*cs of the data file
    // Allocating guest cluster 515 writes an L2 table into the image file at 2 * cs, the offset of
    // guest cluster 2's data in the data file (found by `fuzz --seed 7`: a false FaultContainmentError).
    const at = 515 * cs + 3072;
    const op = fault('read@4', `write ${at} 512`);
    specOf(op).engine!(s, op, makeData(2, at, 512));
    expect(img.read(at, 512)).toEqual(makeData(2, at, 512));
  });

  it('a data-file fault point fails the data path: the op fails, each sector keeps its old or new value, the image checks clean', () => {
    for (const [where, line] of [
      ['data-write@1', `write ${cs} ${cs}`],
      ['data-write@1', `write ${cs + 512} 1024`],
      ['data-flush@1', 'flush'],
    ] as const) {
      const { s, img } = dataFileSession();
      img.write(0, makeData(1, 0, 2 * cs));
      img.flush();
      // Allocated, not yet flushed: the flush must make the data file durable before the L2 entry names it.
      if (line === 'flush') img.write(cs, makeData(2, cs, cs));
      const op = fault(where, line);
      expect(() => specOf(op).engine!(s, op, makeData(2, cs, cs)), `${where} ${line}`).toThrow(StorageIoError);
      for (let n = 0; n < (2 * cs) / 512; n++) {
        const b = Buffer.from(img.read(n * 512, 512));
        const ok = [makeData(1, n * 512, 512), makeData(2, n * 512, 512), new Uint8Array(512)].some((x) => b.equals(Buffer.from(x)));
        expect(ok, `${where} ${line}: sector ${n}`).toBe(true);
      }
      expect(img.check('none').corruptions).toBe(0);
    }
  });

  it('data-file points are parsed and formatted, refused without a data file, and drawn only where there is one', () => {
    expect(formatOp(parseOp('fault data-flush@3 enospc flush'))).toBe('fault data-flush@3 enospc flush');
    const { s } = session();
    const op = fault('data-write@1', `write 0 ${cs}`);
    expect(() => specOf(op).engine!(s, op, makeData(1, 0, cs))).toThrow(/needs an image with an external data file/);
    const points = (dataFile: boolean) => {
      const model = new DiskModel(toModelConfig(plainConfig({ clusterSize: cs, ...(dataFile ? { dataFile: { raw: false } } : {}) })));
      const seen = new Set<string>();
      for (let pick = 3; pick < 1000; pick += 4) {
        const w = specOf({ kind: 'fault', where: 'write@1', errno: 'eio', op: { kind: 'write', off: 0, len: 512 } }).wrap!(
          { kind: 0, anchor: 'cluster', frac: 0, delta: 0, unit: 'sector', count: 1, lenDelta: 0, flag: false, pick },
          { kind: 'write', off: 0, len: 512 },
          model,
          { capabilities: new Set(), faultPoints: TS_FAULT_POINTS },
        ) as FaultOp | null;
        if (w) seen.add(w.where.replace(/@\d+$/, ''));
      }
      return [...seen].sort();
    };
    expect(points(false)).toEqual(['flush', 'read', 'write']);
    expect(points(true)).toEqual(['data-flush', 'data-write', 'flush', 'read', 'write']);
  });

  it('catches a write into a data cluster of the data file the op may not touch (planted bug)', () => {
    const { s, img, dataFaults } = dataFileSession();
    img.write(cs, makeData(1, cs, cs));
    const buggy: EngineSession = {
      ...s,
      image: new Proxy(img, {
        get(t, k) {
          if (k === 'write') return (off: number, d: Uint8Array) => (t.write(off, d), dataFaults.write(cs, new Uint8Array(512)));
          const v = Reflect.get(t, k);
          return typeof v === 'function' ? v.bind(t) : v;
        },
      }),
    };
    const op = fault('write@50', `write 0 ${cs}`);
    expect(() => specOf(op).engine!(buggy, op, makeData(2, 0, cs))).toThrow(/data cluster at 4096 of guest cluster 1/);
  });
});

describe('fault op in the model', () => {
  const cfg = { size: 4 * cs, clusterSize: cs, refcountBits: 16, compat: '1.1', lazyRefcounts: false, extendedL2: false, compressionType: 'zlib' } as const;

  it('may fail or succeed, unless the op itself must be refused', () => {
    const m = new DiskModel(cfg);
    expect(specOf(fault('write@1', 'write 0 512')).expect(m, fault('write@1', 'write 0 512')).verdict).toBe('either');
    const past = fault('write@1', `write ${4 * cs} 512`);
    expect(specOf(past).expect(m, past).verdict).toBe('refuse');
  });

  it('after a failure takes each sector as the target kept it, old or new, and nothing else', async () => {
    const m = new DiskModel(cfg);
    m.write(0, 1024, 1);
    const op = fault('write@2', 'write 0 1024');
    // Sector 0 kept the old data (op #1), sector 1 got the new (op #2).
    const shown = new Uint8Array(1024);
    shown.set(makeData(1, 0, 512), 0);
    shown.set(makeData(2, 512, 512), 512);
    expect(await specOf(op).settleFailure!(m, op, 2, async () => shown)).toBeUndefined();
    expect([m.stampAt(m.active, 0), m.stampAt(m.active, 1)]).toEqual([1, 2]);
    // Data of a third op is neither.
    const m2 = new DiskModel(cfg);
    const bad = await specOf(op).settleFailure!(m2, op, 2, async () => makeData(7, 0, 1024));
    expect(bad).toMatch(/sector 0 holds neither its old nor its new value/);
  });
});

describe('fault op on QEMU', () => {
  it('opens the image through blkdebug with one once=on rule', () => {
    expect(blkdebugOptions('/a,b.qcow2', 'l2_update', 'enospc')).toBe(
      'driver=qcow2,file.driver=blkdebug,file.image.filename=/a,,b.qcow2,file.inject-error.0.event=l2_update,file.inject-error.0.errno=28,file.inject-error.0.once=on',
    );
    const op = fault('l2_update', 'write -z 0 512');
    expect(formatOp(op)).toBe('fault l2_update eio write -z 0 512');
    expect(specOf(op).repro(op, '0x02')).toEqual({
      shell: `qemu-io --image-opts -c 'write -q -z 0 512' '${blkdebugOptions('image.qcow2', 'l2_update', 'eio')}'`,
    });
  });
});

describe('fault op on QEMU', () => {
  it('an image a failed close left dirty with lazy refcounts passes when repair makes it whole (found by fuzz --seed 202)', async () => {
    // The refcount block cache flush at close fails (flush_to_disk, ENOSPC): QEMU keeps the dirty bit, its
    // refcounts are stale as lazy_refcounts=on allows, and the next read-write open repairs them.
    const config = plainConfig({ size: 64 * 1024, clusterSize: 512, lazyRefcounts: true });
    const r = await runTrace(makeTarget('qemu'), config, { ops: [parseOp('fault flush_to_disk enospc write 0 512')] });
    expect(r.failure).toBeUndefined();
  });
});
