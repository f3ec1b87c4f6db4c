import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 300_000,
    hookTimeout: 300_000,
    pool: 'forks',
    // Two cores: run test files one at a time so LibTorch's threads do not fight each other.
    fileParallelism: false,
    globalSetup: ['./test/helpers/temp-root.ts'],
    reporters: ['default', './test/helpers/summary-reporter.ts'],
  },
});
