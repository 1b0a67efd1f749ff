export { HangError, QemuToolError, ToolError } from './errors.js';
export * from './img.js';
export * from './io.js';
export { DEFAULT_TIMEOUT_MS, QEMU_IMG, QEMU_IO, runTool, type ToolResult } from './run.js';
export { countInstructions, VALGRIND, type CountedRun } from './cost.js';
export { QEMU_NBD, qemuDirtyRanges } from './dirty-bitmap.js';
export * from './access.js';
