/**
 * The bitmap end oracle: the persistent bitmaps of the image at the end of a
 * run must be the model's, exactly: the list qemu-img info shows (names,
 * granularity, flags, order), every dirty granule as QEMU reads it back
 * through qemu-nbd, and, for targets that can say, their own reading.
 */
import { ModelBitmaps } from '../model/bitmaps.js';
import type { DiskModel } from '../model/disk.js';
import { qemuDirtyRanges, type ImageAccess, type QemuInfo } from '../qemu/index.js';
import type { Target } from './targets/types.js';

interface ListedBitmap {
  name: string;
  granularity: number;
  flags: string[];
}

export async function judgeBitmaps(target: Target, model: DiskModel, image: string, info: QemuInfo, access?: ImageAccess): Promise<string | undefined> {
  const listed = ((info as unknown as { 'format-specific'?: { data?: { bitmaps?: ListedBitmap[] } } })['format-specific']?.data?.bitmaps ?? []).map(
    (b) => ({ name: b.name, granularity: b.granularity, flags: b.flags }),
  );
  const want = model.bitmaps.list.map((b) => ({ name: b.name, granularity: b.granularity, flags: b.enabled ? ['auto'] : [] }));
  if (JSON.stringify(listed) !== JSON.stringify(want)) {
    return `qemu-img info lists bitmaps ${JSON.stringify(listed)}, the model has ${JSON.stringify(want)}`;
  }
  const own = target.bitmaps ? await target.bitmaps() : undefined;
  for (const b of model.bitmaps.list) {
    const expected = ModelBitmaps.ranges(b, model.size);
    const qemu = await qemuDirtyRanges(image, b.name, undefined, access);
    if (JSON.stringify(qemu) !== JSON.stringify(expected)) {
      return `bitmap '${b.name}': QEMU reads dirty ${JSON.stringify(qemu)}, the model has ${JSON.stringify(expected)}`;
    }
    const mine = own?.find((x) => x.name === b.name);
    if (own && JSON.stringify(mine?.dirty) !== JSON.stringify(expected)) {
      return `bitmap '${b.name}': ${target.name} reads dirty ${JSON.stringify(mine?.dirty)}, the model has ${JSON.stringify(expected)}`;
    }
  }
  return undefined;
}
