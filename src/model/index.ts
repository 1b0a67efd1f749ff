export { DiskModel } from './disk.js';
export { ANY, Layer, SECTOR, ZERO } from './layer.js';
export type { BackingModel, Compat, Expectation, ImageConfig, MetaModel, SnapshotModel, Verdict } from './types.js';
