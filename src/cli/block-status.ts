/**
 * QEMU 7.2's block layer status model (block/io.c bdrv_co_block_status and
 * bdrv_co_common_block_status_above, with the qcow2, raw and file-posix
 * drivers' block_status callbacks) over the images this CLI opens, for the
 * commands that print or act on it: `map`, `compare`, `measure`. The qcow2
 * runs come from the engine (Qcow2Image.hostRun); what the block layer adds
 * is modelled here: ALLOCATED, the zeros an unallocated range reads beyond a
 * backing file or without one, a raw layer recursing into its file, a file's
 * holes (lseek SEEK_DATA/SEEK_HOLE), EOF, and a metadata-preallocated qcow2
 * image asking its file about data clusters (BDRV_BLOCK_RECURSE).
 */
import { hasHostCluster, HostKind } from '../qcow2/host-status.js';
import type { Qcow2Image } from '../qcow2/image.js';
import type { BlockStorage } from '../qcow2/storage/types.js';
import type { GuestDevice } from '../qcow2/types.js';
import { SECTOR_SIZE } from '../qcow2/format/constants.js';
import { fullBackingName } from '../qcow2/backing-name.js';
import { CommandFailed, describeQcow2Error, EXIT_FAILURE } from './errors.js';
import { Qcow2Error } from '../qcow2/errors.js';

/** include/block/block-common.h BDRV_BLOCK_* (the bits a status returns; not on-disk values). */
export const BLOCK_DATA = 0x01;
export const BLOCK_ZERO = 0x02;
export const BLOCK_OFFSET_VALID = 0x04;
export const BLOCK_ALLOCATED = 0x10;
export const BLOCK_EOF = 0x20;
export const BLOCK_RECURSE = 0x40;

export interface Status {
  ret: number;
  pnum: number;
  /** Host offset, meaningful with BLOCK_OFFSET_VALID. */
  map: number;
  /** The file node the host offset is in (its filename), with BLOCK_OFFSET_VALID. */
  file?: string;
}

/** One node of a chain: a qcow2 image or a raw file, with what block status needs of it. */
export interface Layer {
  /** bdrv_getlength: the virtual size (a raw file's length rounded up to whole sectors). */
  size: number;
  backing: Layer | null;
  /** The driver's block_status followed by the generic part, for this node alone. */
  status(offset: number, bytes: number): Status;
}

/** A file-posix node: its holes read as zeros, data elsewhere; it has no backing. */
function fileStatus(storage: BlockStorage, name: string, offset: number, bytes: number): Status {
  const total = Math.ceil(storage.size() / SECTOR_SIZE) * SECTOR_SIZE;
  if (offset >= total) return { ret: BLOCK_EOF, pnum: 0, map: 0 };
  const want = Math.min(bytes, total - offset);
  const a = storage.allocation?.(offset);
  let ret: number;
  let pnum: number;
  if (a === 'trailing-hole') [ret, pnum] = [BLOCK_ZERO, want];
  else if (a === undefined) [ret, pnum] = [BLOCK_DATA, want];
  else if (a.data === offset) [ret, pnum] = [BLOCK_DATA, a.hole - offset];
  else [ret, pnum] = [BLOCK_ZERO, a.data - offset];
  pnum = Math.min(pnum, want);
  ret |= BLOCK_OFFSET_VALID | BLOCK_ALLOCATED;
  if (offset + pnum === total) ret |= BLOCK_EOF;
  return { ret, pnum, map: offset, file: name };
}

/** raw_co_block_status answers BDRV_BLOCK_RAW: the generic layer asks its file instead. */
export function rawLayer(storage: BlockStorage, name: string): Layer {
  const size = Math.ceil(storage.size() / SECTOR_SIZE) * SECTOR_SIZE;
  return {
    size,
    backing: null,
    status(offset, bytes) {
      if (offset >= size) return { ret: BLOCK_EOF, pnum: 0, map: 0 };
      const st = fileStatus(storage, name, offset, Math.min(bytes, size - offset));
      if (offset + st.pnum === size) st.ret |= BLOCK_EOF;
      return st;
    },
  };
}

/** qcow2_co_block_status plus the generic rules for a format with a backing file. */
export function qcow2Layer(img: Qcow2Image, name: string, dataFileName: string | undefined): Layer {
  const info = img.info();
  const l = img.layer();
  const dataName = dataFileName ?? name;
  const backing = l.backing ? deviceLayer(l.backing, fullBackingName(name, info.backingFile ?? '')) : null;
  const size = img.virtualSize;
  return {
    size,
    backing,
    status(offset, bytes) {
      if (offset >= size) return { ret: BLOCK_EOF, pnum: 0, map: 0 };
      const run = img.hostRun(offset, Math.min(bytes, size - offset));
      let ret = 0;
      const st: Status = { ret: 0, pnum: run.bytes, map: 0 };
      if (hasHostCluster(run.kind) && !l.encrypted) {
        ret |= BLOCK_OFFSET_VALID;
        st.map = run.host;
        st.file = dataName;
      }
      if (run.kind === HostKind.ZeroPlain || run.kind === HostKind.ZeroAlloc) ret |= BLOCK_ZERO;
      else if (run.kind !== HostKind.UnallocatedPlain && run.kind !== HostKind.UnallocatedAlloc) ret |= BLOCK_DATA;
      if (l.metadataPreallocated && ret & BLOCK_DATA && ret & BLOCK_OFFSET_VALID) ret |= BLOCK_RECURSE;
      if (ret & (BLOCK_DATA | BLOCK_ZERO)) ret |= BLOCK_ALLOCATED;
      else if (!backing || offset >= backing.size) ret |= BLOCK_ZERO;
      if (ret & BLOCK_RECURSE && ret & BLOCK_DATA && !(ret & BLOCK_ZERO)) {
        // The file's answer refines the data cluster's: a hole there reads as zeros.
        const f = fileStatus(l.dataStorage, dataName, st.map, st.pnum);
        if (f.ret & BLOCK_EOF && (f.pnum === 0 || f.ret & BLOCK_ZERO)) ret |= BLOCK_ZERO;
        else {
          st.pnum = f.pnum;
          ret |= f.ret & BLOCK_ZERO;
        }
      }
      if (offset + st.pnum === size) ret |= BLOCK_EOF;
      // The request to recurse is the block layer's own business: callers never see it (qemu-img compare -s shows it).
      st.ret = ret & ~BLOCK_RECURSE;
      return st;
    },
  };
}

/** A device an image opened (its backing file): the engine's qcow2 image or a raw file. */
export function deviceLayer(dev: GuestDevice, name: string, dataFileName?: string): Layer {
  const q = (dev as { qcow2?: Qcow2Image }).qcow2;
  if (q) return qcow2Layer(q, name, dataFileName ?? q.info().dataFile);
  const storage = (dev as { storage?: BlockStorage }).storage;
  if (!storage) throw new Error('a backing device that is neither a qcow2 image nor a raw file');
  return rawLayer(storage, name);
}

/**
 * bdrv_block_status_above(bs, NULL): the status of the whole chain, the
 * first layer that allocates the range deciding it (qemu-img compare, measure).
 */
export function statusAbove(top: Layer, offset: number, bytes: number): Status {
  let st = top.status(offset, bytes);
  if (st.pnum === 0 || st.ret & BLOCK_ALLOCATED) return st;
  const eof = st.ret & BLOCK_EOF ? offset + st.pnum : -1;
  let n = st.pnum;
  for (let p = top.backing; p; p = p.backing) {
    st = p.status(offset, n);
    if (st.pnum === 0) {
      // Past a shorter backing file: zeros, as if allocated there.
      st = { ret: BLOCK_ZERO | BLOCK_ALLOCATED, pnum: n, map: 0 };
      break;
    }
    if (st.ret & BLOCK_ALLOCATED) {
      st.ret &= ~BLOCK_EOF;
      break;
    }
    n = st.pnum;
  }
  if (offset + st.pnum === eof) st.ret |= BLOCK_EOF;
  return st;
}

/**
 * A block status query that failed (a corrupt image: QEMU's -EIO): what the
 * engine found, then the command's own line, as qemu-img prints the qcow2
 * driver's corruption message before its own.
 */
export function blockStatusFailed(e: unknown, line: string, exitCode = EXIT_FAILURE): unknown {
  if (!(e instanceof Qcow2Error)) return e;
  return new CommandFailed(describeQcow2Error(e), exitCode, `qcow2-harness: ${line}`);
}
