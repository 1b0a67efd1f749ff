/**
 * Opens an image operand with its backing chain for the commands that walk
 * QEMU's block status (map, compare, measure), as qemu-img's img_open does:
 * read-only, backing files and data file opened, the key required.
 */
import type { CliContext } from './context.js';
import { deviceLayer, type Layer } from './block-status.js';
import { checkOpened, type ImageSpec } from './image-opts.js';
import { openReadable, type ReadableImage } from './open.js';

export interface OpenedChain {
  image: ReadableImage;
  top: Layer;
}

export function openChain(ctx: CliContext, spec: ImageSpec, forceShare: boolean, snapshot?: string): OpenedChain {
  const image = openReadable(ctx, spec.file, {
    format: spec.format,
    passphrase: spec.passphrase(),
    name: spec.shownAs,
    forceShare,
    ...(snapshot === undefined ? {} : { snapshot }),
    ...(spec.dataFile === undefined ? {} : { dataFile: spec.dataFile }),
  });
  if (image.qcow2) checkOpened(image.qcow2, spec, true);
  try {
    // A data file named in the option string is the file the data clusters live in (qcow2_do_open's data-file child).
    return { image, top: deviceLayer(image.device, spec.file, spec.dataFile) };
  } catch (e) {
    image.device.close();
    throw e;
  }
}
