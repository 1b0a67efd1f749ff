export * from './errors.js';
export * from './types.js';
export { Qcow2Image, type BlockStatus } from './image.js';
export { MemoryStorage } from './storage/memory.js';
export { FileStorage } from './storage/file.js';
export type { BlockStorage } from './storage/types.js';
export * from './open-file.js';
export { resolveCreateOptions } from './create.js';
export { maxVirtualSize } from './validate.js';
