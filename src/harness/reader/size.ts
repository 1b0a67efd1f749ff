/**
 * The disk size an implementation reports, held to the model's: a reader that
 * thinks the disk is bigger (or smaller) than it is misreads it even when
 * every byte it is asked for is right (a guest would see a disk of the wrong
 * size, with bytes past the real end).
 */
import type { Target } from '../targets/types.js';

export async function mediaSizeProblem(target: Target, modelSize: number, where: string, label = ''): Promise<string | undefined> {
  if (!target.mediaSize) return undefined;
  const size = await target.mediaSize();
  if (size === undefined || size === modelSize) return undefined;
  return `${label}${where}: reports a disk of ${size} bytes, the model's is ${modelSize}`;
}
