export * from './bytes.js';
export * from './constants.js';
export * from './header.js';
export * from './extensions.js';
export * from './entries.js';
export * from './refcount-block.js';
export * from './snapshot-table.js';
export * from './bitmaps.js';
