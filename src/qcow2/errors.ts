/**
 * Every failure the qcow2 engine reports is a Qcow2Error subclass, so callers
 * (the CLI, the harness) can map it to an exit code and a message without
 * string matching.
 */
export class Qcow2Error extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The file is not a qcow2 image, or a header field is out of range. */
export class InvalidImageError extends Qcow2Error {}

/** Metadata read from disk is inconsistent (pointer past EOF, misaligned, overlapping). */
export class CorruptImageError extends Qcow2Error {}

/** The image uses a feature this implementation refuses (unknown incompatible bit, encryption, ...). */
export class UnsupportedFeatureError extends Qcow2Error {}

/** A caller passed a bad argument (offset past the end, bad option value). */
export class InvalidArgumentError extends Qcow2Error {}

/** A write was attempted on a read-only image (opened read-only, or the corrupt bit is set). */
export class ReadOnlyError extends Qcow2Error {}

/** A metadata write would overwrite other live metadata; the write is refused and the image marked corrupt. */
export class OverlapError extends CorruptImageError {}

/** An operation cannot be done without breaking a limit (refcount overflow, v2 limits, size limits). */
export class LimitError extends Qcow2Error {}

/** The refcount table would have to grow past QEMU's QCOW_MAX_REFTABLE_SIZE (8 MiB): QEMU's -EFBIG. */
export class RefcountTableLimitError extends LimitError {}

/** The underlying storage failed (EIO, ENOSPC, short read). */
export class StorageIoError extends Qcow2Error {
  constructor(message: string, readonly code?: string) {
    super(message);
  }
}

/**
 * The image path names a FIFO, a socket or a directory, which QEMU's file
 * driver refuses (raw_open_common: "'file' driver requires 'X' to be a
 * regular file").
 */
export class NotRegularFileError extends Qcow2Error {}

/** A named snapshot does not exist, or a name/id is already taken. */
export class SnapshotError extends Qcow2Error {}

/**
 * Another process holds the image in a way that conflicts with this open
 * (QEMU's image locking: raw_check_lock_bytes in block/file-posix.c).
 */
export class ImageLockedError extends Qcow2Error {}

/** Image locks could not be taken at all (the lock addon is not built, or the file system refuses OFD locks). */
export class LockingUnavailableError extends Qcow2Error {}

/**
 * The backing file of an image could not be opened; the message is QEMU's
 * whole chain of reasons ("Could not open backing file: Could not open 'b':
 * No such file or directory"), each level of the chain adding its prefix.
 */
export class BackingFileError extends Qcow2Error {}

/** The file has no qcow2 magic: QEMU's "Image is not in qcow2 format" (qcow2_do_open), a sentence of its own. */
export class NotQcow2Error extends InvalidImageError {}
