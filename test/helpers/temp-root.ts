// Global setup: every temporary folder a test makes lies under one root per test run, removed at the end.
// Tests save ResNet checkpoints (about 135 MB each), so a run writes about 600 MB; left behind, runs filled the
// disk (ENOSPC in CI). Set TORCHLEARN_KEEP_TEST_TMP=1 to keep the folder for a post-mortem.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const TEMP_ROOT_ENV = 'TORCHLEARN_TEST_TMP';

export default function setup(): () => void {
  const root = mkdtempSync(join(tmpdir(), 'torchlearn-test-'));
  // Test workers are forked after global setup, so they inherit this.
  process.env[TEMP_ROOT_ENV] = root;
  return () => {
    if (process.env.TORCHLEARN_KEEP_TEST_TMP === '1') {
      console.log(`test files kept in ${root}`);
      return;
    }
    rmSync(root, { recursive: true, force: true });
  };
}
