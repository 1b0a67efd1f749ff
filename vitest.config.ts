import { defineConfig } from 'vitest/config';

// Tests drive the real qemu-img/qemu-io, so they are I/O and process heavy:
// separate processes (forks) isolate native modules (zstd-napi) and temp
// files, two workers match the 2-core CI machine. The timeouts are hang guards
// only, one for every test (no test sets its own): a suite that takes a minute
// on an idle machine took over two at load 17 while other work ran beside it,
// and no verdict may depend on the machine's speed. Each tool call still has its
// own hang guard (src/qemu/run.ts), so a hung qemu-img fails its test early.
export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'tests/**/*.test.ts', 'properties/**/*.prop.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 900_000,
    hookTimeout: 900_000,
  },
});
