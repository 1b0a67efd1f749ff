/**
 * Harness operations: their types and the op table (./ops/index.ts), one
 * description per op kind. This module only re-exports it, for the many
 * importers of './ops.js'.
 */
export * from './ops/index.js';
