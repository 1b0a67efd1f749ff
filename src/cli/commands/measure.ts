import { luksPayloadBytes } from '../../qcow2/crypto/luks.js';
import { parseEncryptCreateOptions } from '../../qcow2/crypto/secrets.js';
import { Qcow2Error } from '../../qcow2/errors.js';
import { alignUp } from '../../qcow2/format/bytes.js';
import { L1_ENTRY_SIZE, MAX_L1_BYTES, SECTOR_SIZE } from '../../qcow2/format/constants.js';
import { bitmapsBytes, fullyAllocatedBytes, l2TablesFor } from '../../qcow2/measure.js';
import { all, has, last, parseArgs } from '../args.js';
import { BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_ZERO, blockStatusFailed, statusAbove } from '../block-status.js';
import { openChain, type OpenedChain } from '../chain.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_OK } from '../errors.js';
import { IMAGE_OPTS_HELP, IMAGE_OPTS_LONG, imageSpec, secretStore, type ImageSpec } from '../image-opts.js';
import { parseSnapshotParam } from './convert.js';
import { FORCE_SHARE_HELP, forceShare } from '../open.js';
import { parseOptionList } from '../options.js';
import { qemuJson } from '../qjson.js';
import { qemuImgNumber } from '../sizes.js';
import { parseMeasureOptions, type MeasureOptions } from '../measure-options.js';

export const MEASURE_HELP = `Usage: qcow2-harness measure [--output human|json] [-O qcow2|raw] [-o options] [-l snapshot] [--object OBJ] (--size N | [-f fmt] [--image-opts] [-U] FILE)

Calculates the file size a new image needs, as 'qemu-img measure': "required
size" for the data of FILE (or none, with --size), "fully allocated size" for
every cluster of the virtual disk, and for a qcow2 source with persistent
bitmaps the space they take ("bitmaps size").
  -O fmt         the format to measure for: raw (the default, as qemu-img) or qcow2
  -o options     qcow2 creation options that change the sizes: cluster_size,
                 refcount_bits, compat, extended_l2, preallocation (off,
                 metadata, falloc, full), backing_file (every cluster counts),
                 encrypt.format=luks with encrypt.key-secret (the LUKS header);
                 the other create options are accepted and change nothing
  --size N       measure a new empty image of N bytes (suffixes k M G T P E)
  -l snapshot    measure an internal snapshot of FILE: snapshot.name=NAME,
                 snapshot.id=ID, or NAME/ID alone
  --output FMT   human (default) or json
${FORCE_SHARE_HELP}
${IMAGE_OPTS_HELP}
Exit codes: 0 success, 1 failure (a bad command line or option, an image that
cannot be opened, a size too large for the cluster size), 70 an internal error.
`;

/** qemu's drivers without a measure callback: named as bdrv_measure refuses them. */
const NO_MEASURE = new Set(['vmdk', 'vdi', 'vhdx', 'vpc', 'qed', 'parallels', 'qcow', 'bochs', 'cloop', 'dmg', 'vvfat', 'file', 'host_device', 'nbd', 'null-co', 'blkdebug']);

interface Measured {
  required: number;
  fullyAllocated: number;
  bitmaps?: number;
}

/** The bytes of the source a qcow2 copy must hold: whole clusters of data, zero ranges skipped (qcow2_measure's loop). */
function allocatedBytes(src: OpenedChain, clusterSize: number): number {
  const size = src.top.size;
  let required = 0;
  for (let offset = 0, pnum = 0; offset < size; offset += pnum) {
    let st;
    try {
      st = statusAbove(src.top, offset, size - offset);
    } catch (e) {
      throw blockStatusFailed(e, 'Unable to get block status: Input/output error');
    }
    pnum = st.pnum;
    if (st.ret & BLOCK_ZERO) continue;
    if ((st.ret & (BLOCK_DATA | BLOCK_ALLOCATED)) === (BLOCK_DATA | BLOCK_ALLOCATED)) {
      pnum = alignUp(offset + pnum, clusterSize) - offset;
      // QEMU counts from the cluster's start, so a run starting inside a cluster counts that part twice.
      required += (offset % clusterSize) + pnum;
    }
  }
  return required;
}

/** qcow2_measure after the options are parsed. */
function measureQcow2(o: MeasureOptions, src: OpenedChain | undefined, size: number, store: ReturnType<typeof secretStore>): Measured {
  const cs = o.clusterSize;
  const luks = o.luks ? luksBytes(o, store, cs) : 0;
  let virtual = alignUp(size, cs);
  if (l2TablesFor(virtual, cs, o.extendedL2) * L1_ENTRY_SIZE > MAX_L1_BYTES) {
    throw new CommandFailed('The image size is too large (try using a larger cluster size)');
  }
  let required = 0;
  if (src) {
    virtual = alignUp(src.top.size, cs);
    // Without knowing what a new backing file shares with the source, every cluster may need writing.
    required = o.backingFile ? virtual : allocatedBytes(src, cs);
  }
  if (o.preallocation === 'full' || o.preallocation === 'falloc') required = virtual;
  const fullyAllocated = luks + fullyAllocatedBytes(virtual, cs, Math.log2(o.refcountBits), o.extendedL2);
  const m: Measured = { required: fullyAllocated - virtual + required, fullyAllocated };
  // Bitmaps only where both the source and the target could hold them (v3 on both sides).
  const q = src?.image.qcow2;
  if (o.version >= 3 && q && q.version >= 3) {
    m.bitmaps = bitmapsBytes(q.bitmaps().map((b) => ({ name: b.name, granularity: b.granularity, size: b.size })), cs);
  }
  return m;
}

/** The LUKS header area, in whole clusters; the secret must exist, as block_crypto_create_opts_init looks it up. */
function luksBytes(o: MeasureOptions, store: ReturnType<typeof secretStore>, cs: number): number {
  try {
    const enc = parseEncryptCreateOptions(o.encrypt);
    store.lookupUtf8(enc.keySecret!);
    return alignUp(luksPayloadBytes(enc.luks), cs);
  } catch (e) {
    if (e instanceof Qcow2Error) throw new CommandFailed(e.message);
    throw e;
  }
}

/** img_open, then bdrv_snapshot_load_tmp for -l: a snapshot that is not there is reported after the open. */
function openSource(ctx: CliContext, spec: ImageSpec, shared: boolean, snapshotText: string | undefined): OpenedChain {
  const src = openChain(ctx, spec, shared);
  if (snapshotText === undefined) return src;
  const wanted = parseSnapshotParam(snapshotText, 'measure');
  const q = src.image.qcow2;
  const found = q?.listSnapshots().some((sn) => sn.name === wanted || sn.id === wanted) ?? false;
  src.image.device.close();
  if (!q) throw new CommandFailed("Failed to load snapshot: Block format 'raw' used by device '' does not support temporarily loading internal snapshots");
  if (!found) throw new CommandFailed("Failed to load snapshot: Can't find snapshot");
  return openChain(ctx, spec, shared, wanted);
}

function output(m: Measured, json: boolean): string {
  if (json) {
    const j: Record<string, number> = {};
    if (m.bitmaps !== undefined) j['bitmaps'] = m.bitmaps;
    j['required'] = m.required;
    j['fully-allocated'] = m.fullyAllocated;
    return qemuJson(j) + '\n';
  }
  let s = `required size: ${m.required}\nfully allocated size: ${m.fullyAllocated}\n`;
  if (m.bitmaps !== undefined) s += `bitmaps size: ${m.bitmaps}\n`;
  return s;
}

export async function measureCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { short: { f: true, O: true, o: true, l: true, U: false }, long: { output: true, size: true, 'force-share': false, ...IMAGE_OPTS_LONG } }, 'measure');
  if (has(p, 'help')) {
    ctx.stdout(MEASURE_HELP);
    return EXIT_OK;
  }
  const out = last(p, 'output');
  if (out !== undefined && out !== 'human' && out !== 'json') throw new CommandFailed('--output must be used with human or json as argument.');
  const sizeText = last(p, 'size');
  const givenSize = sizeText === undefined ? undefined : qemuImgNumber('image size', sizeText);
  const store = secretStore(p);
  if (p.operands.length > 1) throw new CommandFailed('At most one filename argument is allowed.');
  const file = p.operands[0];
  if (file === undefined && (has(p, 'image-opts') || has(p, 'f') || has(p, 'l'))) throw new CommandFailed('--image-opts, -f, and -l require a filename argument.');
  if (file !== undefined && givenSize !== undefined) throw new CommandFailed('--size N cannot be used together with a filename.');
  if (file === undefined && givenSize === undefined) throw new CommandFailed('Either --size N or one filename must be specified.');
  const src = file === undefined ? undefined : openSource(ctx, imageSpec(p, file, 'measure', store), forceShare(p), last(p, 'l'));
  try {
    const fmt = last(p, 'O') ?? 'raw';
    if (fmt !== 'qcow2' && fmt !== 'raw') {
      if (NO_MEASURE.has(fmt)) throw new CommandFailed(`Block driver '${fmt}' does not support size measurement`);
      if (fmt === 'luks') throw new CommandFailed("qcow2-harness measures for qcow2 and raw only, not 'luks'");
      throw new CommandFailed(`Unknown file format '${fmt}'`);
    }
    const o = parseMeasureOptions(parseOptionList(all(p, 'o')), fmt);
    const size = src ? src.top.size : givenSize!;
    // raw_measure: the whole disk (a source's virtual size, or the size in whole sectors).
    const m: Measured = fmt === 'raw' ? { required: src ? size : alignUp(size, SECTOR_SIZE), fullyAllocated: 0 } : measureQcow2(o, src, size, store);
    if (fmt === 'raw') m.fullyAllocated = m.required;
    ctx.stdout(output(m, out === 'json'));
    return EXIT_OK;
  } finally {
    src?.image.device.close();
  }
}
