/**
 * External data files (qcow2.txt "External data file name" extension,
 * incompatible bit 2, autoclear bit 1 "raw external data"; QEMU:
 * has_data_file / data_file_is_raw in block/qcow2.h).
 *
 * With a data file, guest data never lives in the image file: every data
 * cluster sits in the data file at the host offset equal to its guest
 * offset (qcow2.txt: "the host cluster offset of every data cluster is its
 * guest offset"; QEMU: qcow2_get_host_offset checks it), the qcow2 file's
 * refcounts count only its own metadata (check_refcounts_l2 skips data
 * clusters), and freeing a data cluster passes the discard through to the
 * data file instead of dropping a reference (qcow2_free_any_cluster).
 * Compressed clusters and internal snapshots cannot exist there.
 */
import { InvalidArgumentError, InvalidImageError, SnapshotError, UnsupportedFeatureError } from './errors.js';
import { AUTOCLEAR_DATA_FILE_RAW } from './format/constants.js';
import type { ImageState } from './state.js';

/** QEMU's -ENOTSUP text, which qemu-img and qemu-io print for a refused compressed write or snapshot. */
export const DATA_FILE_NOT_SUPPORTED = 'Operation not supported';
/** qemu-img snapshot prints the errno too: "Could not create snapshot 'X': -95 (Operation not supported)". */
export const DATA_FILE_SNAPSHOT_REFUSAL = `-95 (${DATA_FILE_NOT_SUPPORTED})`;

/** A host cluster for guest cluster vc: its guest offset in the data file, or a fresh cluster of the image file. */
export function allocDataCluster(s: ImageState, vc: number): number {
  if (!s.hasDataFile) return s.refcounts.allocClusters(1);
  // Written again before the discard that freed it went through: the discard must not wipe the new data.
  s.pendingDataDiscards.delete(vc * s.clusterSize);
  return vc * s.clusterSize;
}

/**
 * The discard a freed data cluster passes through to the data file
 * (QEMU: qcow2_free_any_cluster → bdrv_pdiscard on s->data_file). A
 * discarded range reads as zeros: file-posix punches a hole, we write the
 * zeros (only inside the file; a hole past its end reads as zeros anyway).
 *
 * It waits for the flush that makes the L2 update dropping the cluster
 * durable (ImageState.applyDataDiscards), as a refcount decrement waits
 * (freeLater): QEMU discards at once, and a crash before that L2 table
 * reaches the disk then leaves the old entry pointing at a hole, which reads
 * as zeros the guest never wrote there and, in an encrypted image, as the
 * decryption of zeros (found by `fuzz --target ts --seed 77`). With
 * data_file_raw the data file is the guest view and is zeroed at once.
 */
export function discardDataCluster(s: ImageState, host: number): void {
  if (s.dataFileRaw) s.zeroDataCluster(host);
  else if (s.dataStorage) s.pendingDataDiscards.add(host);
}

/** Zeroes [a, b) of the data file, as qcow2_subcluster_zeroize does first with data_file_raw. */
export function zeroRawDataFile(s: ImageState, a: number, b: number): void {
  const data = s.dataStorage;
  if (!data || !s.dataFileRaw || b <= a) return;
  const end = Math.min(b, data.size());
  if (end > a) data.write(a, new Uint8Array(end - a));
}

/** Refuses a compressed write with an external data file (qcow2_co_pwritev_compressed_part: -ENOTSUP). */
export function refuseCompressedWithDataFile(s: ImageState): void {
  if (s.hasDataFile) throw new UnsupportedFeatureError(`${DATA_FILE_NOT_SUPPORTED} (compressed writes are unsupported with an external data file)`);
}

/** Refuses an internal snapshot with an external data file (qcow2_snapshot_create: -ENOTSUP). */
export function refuseSnapshotWithDataFile(s: ImageState): void {
  if (s.hasDataFile) throw new SnapshotError(DATA_FILE_SNAPSHOT_REFUSAL);
}

/** Resizes the data file along with the image (qcow2_co_truncate truncates s->data_file). */
export function resizeDataFile(s: ImageState, size: number): void {
  const data = s.dataStorage;
  if (data && data.size() !== size) data.truncate(size);
}

/**
 * Opens the data file of an image that has one (qcow2_do_open: the
 * "data-file" option, else the name in the header extension, else "'data-file'
 * is required for this image"). Without an opener the image stays usable
 * for metadata only (qemu-img info opens with BDRV_O_NO_IO and needs no data file).
 */
export function openDataFile(s: ImageState): void {
  if (!s.hasDataFile) {
    if (s.openOptions.dataFileExplicit) throw new InvalidArgumentError("'data-file' can only be set for images with an external data file");
    return;
  }
  const opener = s.openOptions.openDataFile;
  if (!opener) return;
  const storage = opener(s.ext.dataFile);
  if (!storage) throw new InvalidImageError("'data-file' is required for this image");
  s.dataStorage = storage;
}


/** What qemu-img amend may change about a data file (qcow2_amend_options). */
export interface DataFileAmend {
  /** A new name for the data file ('' drops the name, as QEMU does). */
  dataFile?: string;
  dataFileRaw?: boolean;
}

/** qcow2_amend_options' data file rules, checked before anything changes. */
export function checkDataFileAmend(s: ImageState, o: DataFileAmend): void {
  if (o.dataFile !== undefined && !s.hasDataFile) {
    throw new InvalidArgumentError('data-file can only be set for images that use an external data file');
  }
  // Setting the bit would vouch for a data file nobody kept in sync.
  if (o.dataFileRaw && !s.dataFileRaw) throw new InvalidArgumentError('data-file-raw cannot be set on existing images');
}

/** Renames the data file in the header and/or clears data_file_raw; the caller checked with checkDataFileAmend. */
export function applyDataFileAmend(s: ImageState, o: DataFileAmend): void {
  let changed = false;
  if (o.dataFile !== undefined) {
    if (o.dataFile === '') delete s.ext.dataFile;
    else s.ext.dataFile = o.dataFile;
    changed = true;
  }
  if (o.dataFileRaw === false && s.dataFileRaw) {
    s.header.autoclearFeatures &= ~AUTOCLEAR_DATA_FILE_RAW;
    changed = true;
  }
  if (changed) s.writeHeader();
}
