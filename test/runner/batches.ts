/**
 * Runs test files in node's test runner, in two batches, and counts what its event stream reports (counts.ts).
 * The runner's API is used in this process rather than `node --test` in a child: the events arrive as objects,
 * the spec reporter prints the same stream, and node 20 cannot load a TypeScript reporter module by path.
 */
import path from 'node:path';
import { run } from 'node:test';
import type { TestEvent } from 'node:test/reporters';
import { spec } from 'node:test/reporters';
import { finished } from 'node:stream/promises';
import type { Writable } from 'node:stream';
import { classifyTestEvent, emptyTotals, tally, type CountedTest, type Totals } from './counts';

/**
 * Files that start hypervisors, stacks and worker processes run one at a time after the rest: on a 2-core machine
 * two of them at once starve each other's Temporal calls into deadline errors.
 */
export function isHeavy(relativePath: string): boolean {
  const normalized = relativePath.split(path.sep).join('/');
  return normalized.startsWith('test/') || normalized.endsWith('.integration.test.ts');
}

export interface BatchInput {
  /** Paths are classified light or heavy relative to this. */
  root: string;
  files: string[];
  lightConcurrency: number;
  /**
   * node's --test-timeout. Node 20 applies it to each test file's process as well as to each test (seen with
   * node 20.20: a file running longer is ended and reported 'test timed out'), so it must exceed the slowest file.
   */
  timeoutMs: number;
  /** Where the spec reporter writes; it is not ended. */
  output: Writable;
}

export interface BatchResult {
  /** How many files ran. */
  files: number;
  totals: Totals;
  /** Failed and cancelled tests, in the order they ended. */
  failures: CountedTest[];
}

async function runBatch(files: string[], concurrency: number, input: BatchInput, counted: CountedTest[]) {
  const events = run({ files, concurrency, timeout: input.timeoutMs });
  const count = (event: TestEvent) => {
    const test = classifyTestEvent(event);
    if (test) counted.push(test);
  };
  events.on('test:pass', (data: Extract<TestEvent, { type: 'test:pass' }>['data']) =>
    count({ type: 'test:pass', data }),
  );
  events.on('test:fail', (data: Extract<TestEvent, { type: 'test:fail' }>['data']) =>
    count({ type: 'test:fail', data }),
  );
  const printed = events.pipe(new spec());
  printed.pipe(input.output, { end: false });
  await finished(printed);
}

export async function runTestBatches(input: BatchInput): Promise<BatchResult> {
  const heavy = input.files.filter((file) => isHeavy(path.relative(input.root, file)));
  const light = input.files.filter((file) => !heavy.includes(file));
  const counted: CountedTest[] = [];
  for (const [files, concurrency] of [
    [light, input.lightConcurrency],
    [heavy, 1],
  ] as const) {
    if (files.length > 0) await runBatch(files, concurrency, input, counted);
  }
  return {
    files: input.files.length,
    totals: tally(counted, emptyTotals()),
    failures: counted.filter((test) => test.outcome === 'failed' || test.outcome === 'cancelled'),
  };
}
