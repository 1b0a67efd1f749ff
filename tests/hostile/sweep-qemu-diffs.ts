/**
 * Cases of the robustness sweep where qemu-img 7.2 info and ours disagree on
 * whether the corrupted image opens, each with what QEMU does, what we do
 * and why ours is kept. The sweep fails on a disagreement missing here and
 * on an entry that no longer disagrees, so this list stays exact.
 */

const SNAPSHOT_TABLE_PAST_EOF =
  'The snapshot table (or an entry of it) lies past the end of the file. QEMU reads it anyway: file-posix pads a ' +
  'read past the end with zeros (handle_aiocb_rw), qcow2_do_open only checks the table offset for alignment and ' +
  'overflow (validate_table_offset), so qcow2_read_snapshots finds all-zero entries (empty id and name, no L1 ' +
  'table) and qemu-img info lists them; only qemu-img check calls the table incomplete ("snapshot table entry N ' +
  "is incomplete\"), as ours does. Ours refuses a normal open with that message instead of inventing snapshots " +
  'from bytes that are not in the file; check -r all still repairs it as QEMU does. Kept: refusing is the safer ' +
  'answer, and every command agrees with qemu-img check.';

const DATA_FILE_RAW_WITHOUT_DATA_FILE =
  'autoclear_features has the data-file-raw bit but the image has no external data file. qemu-img info opens with ' +
  'BDRV_O_NO_IO and shows the image; every other qemu-img and qemu-io command (check, convert, snapshot -l, ' +
  "qemu-io -r) refuses it with \"data-file-raw requires a data file\", as ours does for info too. Kept: one answer " +
  'for every command.';

export const SWEEP_QEMU_DIFFS: ReadonlyMap<string, string> = new Map([
  ['v2-64k-snap/header:snapshotsOffset=far-past-eof', SNAPSHOT_TABLE_PAST_EOF],
  ['v2-64k-snap/truncate:at-reftable@65536', SNAPSHOT_TABLE_PAST_EOF],
  ['v2-64k-snap/truncate:half@491520', SNAPSHOT_TABLE_PAST_EOF],
  ['v2-64k-snap/truncate:mid-data@328192', SNAPSHOT_TABLE_PAST_EOF],
  ['v3-64k-compressed-snaps/header:snapshotsOffset=far-past-eof', SNAPSHOT_TABLE_PAST_EOF],
  ['v3-64k-compressed-snaps/truncate:at-l1@196608', SNAPSHOT_TABLE_PAST_EOF],
  ['v3-32k-extl2/header:autoclearFeatures=all', DATA_FILE_RAW_WITHOUT_DATA_FILE],
  ['v3-512b-rc8-zstd/header:snapshotsOffset=far-past-eof', SNAPSHOT_TABLE_PAST_EOF],
  ['v3-512b-rc8-zstd/snapshot:id-size=max', SNAPSHOT_TABLE_PAST_EOF],
  ['v2-16k-rawbacking-compressed/header:snapshotsOffset=far-past-eof', SNAPSHOT_TABLE_PAST_EOF],
  ['v2-16k-rawbacking-compressed/truncate:header@72', SNAPSHOT_TABLE_PAST_EOF],
  ['v2-16k-rawbacking-compressed/truncate:mid-l1@49160', SNAPSHOT_TABLE_PAST_EOF],
  ['v2-16k-rawbacking-compressed/truncate:mid-refblock@40960', SNAPSHOT_TABLE_PAST_EOF],
]);
