/**
 * On-disk constants of the qcow2 format (QEMU docs/interop/qcow2.txt).
 * Every magic number the engine needs lives here, named.
 */

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"

export const HEADER_V2_LENGTH = 72;
export const HEADER_V3_MIN_LENGTH = 104;
/** QEMU writes 112: the v3 header plus the compression type byte, padded to 8. */
export const HEADER_V3_LENGTH = 112;

export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
export const DEFAULT_CLUSTER_BITS = 16;

export const SECTOR_SIZE = 512;
export const SECTOR_BITS = 9;

/** Refcount order: refcount width is 1 << order bits. v2 images are fixed at 4 (16 bits). */
export const MAX_REFCOUNT_ORDER = 6;
export const DEFAULT_REFCOUNT_ORDER = 4;

// Incompatible feature bits (header v3, offset 72).
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_KNOWN =
  INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

// Compatible feature bits.
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;

// Autoclear feature bits.
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;
export const AUTOCLEAR_KNOWN = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW;

export const CRYPT_NONE = 0;
export const CRYPT_AES = 1;
export const CRYPT_LUKS = 2;

export const COMPRESSION_ZLIB = 0;
export const COMPRESSION_ZSTD = 1;

// Header extension types.
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO_HEADER = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

export const FEATURE_TYPE_INCOMPAT = 0;
export const FEATURE_TYPE_COMPAT = 1;
export const FEATURE_TYPE_AUTOCLEAR = 2;
export const FEATURE_NAME_ENTRY_SIZE = 48;
export const FEATURE_NAME_LENGTH = 46;

/** Backing file names longer than this are refused (QEMU's limit). */
export const MAX_BACKING_FILE_NAME = 1023;

// L1 / L2 entries.
export const L1_ENTRY_SIZE = 8;
export const L2_ENTRY_SIZE = 8;
export const L2_EXTENDED_ENTRY_SIZE = 16;
export const SUBCLUSTERS_PER_CLUSTER = 32;
/** Extended L2 entries need clusters of 16 KiB or more (qcow2.txt: subclusters of at least 512 bytes). */
export const MIN_EXTL2_CLUSTER_BITS = 14;
/** Bits 9..55 hold host offsets in L1, L2 and refcount table entries. */
export const OFFSET_MASK_HI = 0x00ffffff; // bits 32..55 of the high word
export const OFFSET_MASK_LO = 0xfffffe00; // bits 9..31 of the low word
export const OFLAG_COPIED_HI = 0x80000000; // bit 63
export const OFLAG_COMPRESSED_HI = 0x40000000; // bit 62
export const OFLAG_ZERO_LO = 0x00000001; // bit 0
/** Reserved bits of a standard L2 entry: 1..8 and 56..61. */
export const L2_RESERVED_LO = 0x000001fe;
export const L2_RESERVED_HI = 0x3f000000;
/** Reserved bits of an L1 entry: 0..8 and 56..62. */
export const L1_RESERVED_LO = 0x000001ff;
export const L1_RESERVED_HI = 0x7f000000;
/** Reserved bits of a refcount table entry: 0..8. */
export const REFTABLE_RESERVED_LO = 0x000001ff;

/** QEMU refuses L1 tables above 32 MiB (QCOW_MAX_L1_SIZE); it bounds the virtual size. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
/** QEMU refuses refcount tables above 8 MiB (QCOW_MAX_REFTABLE_SIZE). */
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
/** QEMU refuses more than 65536 snapshots (QCOW_MAX_SNAPSHOTS). */
export const MAX_SNAPSHOTS = 65536;
/** Snapshot table limit (QCOW_MAX_SNAPSHOTS_SIZE): 64 MiB. */
export const MAX_SNAPSHOTS_BYTES = 64 * 1024 * 1024;
/** Snapshot extra data QEMU accepts (QCOW_MAX_SNAPSHOT_EXTRA_DATA). */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
/** Host offsets must fit in 56 bits. */
export const MAX_HOST_OFFSET = 2 ** 56;

export const SNAPSHOT_HEADER_SIZE = 40;
export const SNAPSHOT_EXTRA_V3_SIZE = 24; // vm_state_size_large, disk_size, icount

/** Bitmap directory entry fixed part. */
export const BITMAP_DIR_ENTRY_FIXED = 24;
export const BITMAPS_EXT_SIZE = 24;

/** Refcount table entries are u64 host offsets of refcount blocks. */
export const REFTABLE_ENTRY_SIZE = 8;
/**
 * Refcount block offsets are aligned to 512 bytes at least: bits 0..8 of a
 * table entry are reserved, and QEMU masks them off (REFT_OFFSET_MASK).
 */
export const REFTABLE_OFFSET_ALIGN = 512;
/** Bitmap table entries are u64 (qcow2.txt "Bitmap table"). */
export const BITMAP_TABLE_ENTRY_SIZE = 8;
/** Snapshot table entries start on 8-byte boundaries (qcow2.txt "Snapshot table"). */
export const SNAPSHOT_ENTRY_ALIGN = 8;
/** "No instruction count" in a snapshot's icount field: all ones. */
export const SNAPSHOT_ICOUNT_NONE = 0xffffffffffffffffn;
/**
 * 2^63: a u64 host offset at or above it is negative to QEMU's block layer
 * (int64_t), so a read there fails.
 */
export const INT64_LIMIT = 2 ** 63;
/** qemu-img check reads a bitmap directory of at most 64 MiB; a larger one is only counted. */
export const CHECK_MAX_BITMAP_DIRECTORY_BYTES = 64 * 1024 * 1024;
