// Prints one closing line, "N passed, N failed, N skipped", after vitest's own report, so that any
// CI reading the plain closing line sees the counts.
import { appendFileSync } from 'node:fs';
import type { Reporter, TestModule } from 'vitest/node';

export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    const counts = { passed: 0, failed: 0, skipped: 0 };
    for (const m of testModules) {
      for (const t of m.children.allTests()) {
        const s = t.result().state;
        if (s === 'passed') counts.passed++;
        else if (s === 'failed') counts.failed++;
        else counts.skipped++;
      }
    }
    const pass = process.env.TORCHLEARN_BLAS_PASS ? `${process.env.TORCHLEARN_BLAS_PASS}-blas: ` : '';
    console.log(`\n${pass}${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`);
    // scripts/test.sh adds the passes up into one closing line
    if (process.env.TORCHLEARN_TEST_COUNTS) appendFileSync(process.env.TORCHLEARN_TEST_COUNTS, JSON.stringify(counts) + '\n');
  }
}
