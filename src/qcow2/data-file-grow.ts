/** Growing an image that has an external data file (QEMU: qcow2_co_truncate with s->data_file). */
import { entryParts, setEntry, writableL2 } from './cluster-map.js';
import { resizeDataFile } from './data-file.js';
import { ALL_SUBCLUSTERS } from './l2.js';
import type { ImageState } from './state.js';

/**
 * Growing an image with a data file grows the data file to the new size;
 * with data_file_raw the new clusters are mapped to themselves as at
 * create (qcow2_co_truncate: preallocation=metadata is implied).
 */
export function growDataFile(s: ImageState, oldSize: number, size: number): void {
  if (!s.hasDataFile) return;
  resizeDataFile(s, size);
  if (!s.dataFileRaw) return;
  const cs = s.clusterSize;
  for (let vc = Math.ceil(oldSize / cs); vc * cs < size; vc++) {
    const { table, index } = writableL2(s, vc);
    const e = entryParts(vc * cs, true);
    setEntry(s, table, index, s.layout.extended ? { ...e, alloc: ALL_SUBCLUSTERS, zero: 0 } : { ...e, zero: 0, alloc: 0 });
  }
}
