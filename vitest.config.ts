import { defineConfig } from 'vitest/config';

// Tests drive the real qemu-img/qemu-io, so they are I/O and process heavy:
// separate processes (forks) isolate native modules (zstd-napi) and temp
// files, two workers match the 2-core CI machine, and the timeouts leave room
// for many qemu-img spawns per test.
export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'tests/**/*.test.ts', 'properties/**/*.prop.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
