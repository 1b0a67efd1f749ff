/**
 * qcow2's format-specific information (ImageInfoSpecificQCow2), as qemu-img
 * info and qemu-io's info command both print it: the data in qemu-img's key
 * order, and its human form (bdrv_image_info_specific_dump).
 */
import type { ImageInfo } from '../qcow2/index.js';
import { qdictEntries } from './qjson.js';

/** The "format-specific" data of qemu-img info --output json, keys in QEMU's order. */
export function formatSpecificData(info: ImageInfo): Record<string, unknown> {
  const data: Record<string, unknown> = {
    compat: info.compat,
    'compression-type': info.compressionType,
  };
  if (info.version === 3) data['lazy-refcounts'] = info.lazyRefcounts;
  if (info.bitmaps.length) data['bitmaps'] = info.bitmaps;
  data['refcount-bits'] = info.refcountBits;
  if (info.dataFile !== undefined) data['data-file'] = info.dataFile;
  if (info.dataFileRaw !== undefined) data['data-file-raw'] = info.dataFileRaw;
  if (info.encrypt !== undefined) data['encrypt'] = info.encrypt;
  // v2 headers have no feature bits, so qemu-img leaves these out for compat 0.10.
  if (info.version === 3) {
    data['corrupt'] = info.corrupt;
    data['extended-l2'] = info.extendedL2;
  }
  return data;
}

/** "Format specific information:" and its lines. */
export function formatSpecificText(data: Record<string, unknown>): string {
  let s = 'Format specific information:\n';
  // dump_qdict walks the QDict, so the lines come in its JSON order.
  for (const [k, v] of qdictEntries(data)) {
    if (k === 'bitmaps') {
      s += `    bitmaps:\n`;
      (v as { name: string; granularity: number; flags: string[] }[]).forEach((b, i) => {
        s += `        [${i}]:\n            flags:\n`;
        b.flags.forEach((f, j) => (s += `                [${j}]: ${f}\n`));
        s += `            name: ${b.name}\n            granularity: ${b.granularity}\n`;
      });
      continue;
    }
    if (k === 'encrypt') {
      s += humanTree('encrypt', v, 1);
      continue;
    }
    s += `    ${k.replace(/-/g, ' ')}: ${v}\n`;
  }
  return s;
}

/** QEMU's dump_qobject layout (block/qapi.c): dicts and lists nest by four spaces, list items are [i]. */
function humanTree(key: string, v: unknown, depth: number): string {
  const pad = '    '.repeat(depth);
  const name = key.replace(/-/g, ' ');
  if (Array.isArray(v)) return `${pad}${name}:\n` + v.map((x, i) => humanTree(`[${i}]`, x, depth + 1)).join('');
  if (v !== null && typeof v === 'object') {
    return `${pad}${name}:\n` + qdictEntries(v as Record<string, unknown>).map(([k, x]) => humanTree(k, x, depth + 1)).join('');
  }
  return `${pad}${name}: ${v}\n`;
}
