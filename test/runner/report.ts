/** The end of `npm test`'s output: the tests that failed or were cancelled, then the counts, then its exit code. */
import path from 'node:path';
import type { BatchResult } from './batches';
import { formatFinalLine, runSucceeded } from './counts';

export function reportRun(result: BatchResult, root: string, write: (text: string) => void): number {
  if (result.failures.length > 0) {
    write('\nfailed or cancelled:\n');
    for (const test of result.failures) {
      // A file that crashed, would not load or timed out is reported under its own path.
      const label =
        test.file === undefined || test.file === test.name
          ? path.relative(root, test.name)
          : `${path.relative(root, test.file)}: ${test.name}`;
      write(`  ✖ ${label} (${test.failureType ?? test.outcome})\n`);
    }
  }
  // node's runner can run nothing and say nothing (a run() it refuses, files it cannot find): that is no pass.
  const reported = Object.values(result.totals).reduce((sum, n) => sum + n, 0);
  if (reported === 0) write(`\nnpm test: ${result.files} test files reported no test`);
  write(`\n${formatFinalLine(result.totals)}\n`);
  return reported > 0 && runSucceeded(result.totals) ? 0 : 1;
}
