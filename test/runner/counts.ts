/**
 * How `npm test` counts: every test node's runner reports, from both batches, read from a machine-readable
 * reporter (count-reporter.ts) rather than from the tail of the human output.
 *
 * Where this differs from node's own summary, on purpose:
 * - a test that timed out counts as failed (node 20 files it under cancelled): a hang is a failure to fix;
 * - a suite that failed by itself (its hook or its body threw) counts as failed, and a skipped suite as skipped
 *   (node counts neither, so such a file could fail or vanish with every count at zero);
 * - a test or suite that failed only because one inside it failed is not counted a second time.
 */
import type { TestEvent } from 'node:test/reporters';

export const OUTCOMES = ['passed', 'failed', 'skipped', 'cancelled', 'todo'] as const;
export type Outcome = (typeof OUTCOMES)[number];
export type Totals = Record<Outcome, number>;

export interface CountedTest {
  outcome: Outcome;
  name: string;
  /** The test file; node reports a file that crashed, would not load or timed out under its own path. */
  file?: string;
  /** node's reason for a failure: testCodeFailure, hookFailed, testTimeoutFailure, cancelledByParent... */
  failureType?: string;
}

/** What one reporter event counts as, or undefined when it counts as nothing. */
export function classifyTestEvent(event: TestEvent): CountedTest | undefined {
  if (event.type !== 'test:pass' && event.type !== 'test:fail') return undefined;
  const { data } = event;
  const base = { name: data.name, ...(data.file ? { file: data.file } : {}) };
  if (data.skip !== undefined && data.skip !== false) return { ...base, outcome: 'skipped' };
  if (data.todo !== undefined && data.todo !== false) return { ...base, outcome: 'todo' };
  const isSuite = data.details.type === 'suite';
  if (event.type === 'test:pass') return isSuite ? undefined : { ...base, outcome: 'passed' };
  const failureType = (event.data.details.error as Error & { failureType?: unknown }).failureType;
  const reason = typeof failureType === 'string' ? failureType : 'unknown';
  if (reason === 'subtestsFailed') return undefined;
  if (reason === 'cancelledByParent' && !isSuite) return { ...base, outcome: 'cancelled', failureType: reason };
  return { ...base, outcome: 'failed', failureType: reason };
}

export function emptyTotals(): Totals {
  return { passed: 0, failed: 0, skipped: 0, cancelled: 0, todo: 0 };
}

export function tally(tests: Iterable<CountedTest>, into: Totals = emptyTotals()): Totals {
  for (const test of tests) into[test.outcome] += 1;
  return into;
}

/** The run's last line, always with every outcome in this order so that scripts can read it. */
export function formatFinalLine(totals: Totals): string {
  return `npm test: ${OUTCOMES.map((outcome) => `${totals[outcome]} ${outcome}`).join(', ')}`;
}

/** Failed and cancelled tests make the run fail; skipped and todo ones do not. */
export function runSucceeded(totals: Totals): boolean {
  return totals.failed === 0 && totals.cancelled === 0;
}
