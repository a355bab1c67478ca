import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { TestEvent } from 'node:test/reporters';
import { classifyTestEvent, formatFinalLine, tally } from './counts';

type Options = { suite?: boolean; failureType?: string; skip?: string; todo?: string };

/** An event as node's runner emits it, with only the fields the counting reads. */
function event(type: 'test:pass' | 'test:fail', name: string, options: Options = {}): TestEvent {
  const error = Object.assign(new Error('failed'), { failureType: options.failureType });
  const data = {
    name,
    nesting: 0,
    testNumber: 1,
    file: '/repo/a.test.ts',
    details: {
      duration_ms: 1,
      ...(options.suite ? { type: 'suite' } : {}),
      ...(type === 'test:fail' ? { error } : {}),
    },
    ...(options.skip ? { skip: options.skip } : {}),
    ...(options.todo ? { todo: options.todo } : {}),
  };
  return { type, data } as TestEvent;
}

const outcome = (e: TestEvent) => classifyTestEvent(e)?.outcome;

test('tests count by outcome; a timeout is a failure, a test its parent left behind is cancelled', () => {
  assert.equal(outcome(event('test:pass', 'ok')), 'passed');
  assert.equal(outcome(event('test:fail', 'bad', { failureType: 'testCodeFailure' })), 'failed');
  assert.equal(outcome(event('test:fail', 'hung', { failureType: 'testTimeoutFailure' })), 'failed');
  assert.equal(outcome(event('test:fail', 'hook', { failureType: 'hookFailed' })), 'failed');
  assert.equal(outcome(event('test:fail', 'left', { failureType: 'cancelledByParent' })), 'cancelled');
  assert.equal(outcome(event('test:pass', 'skipped', { skip: 'why' })), 'skipped');
  assert.equal(outcome(event('test:fail', 'todo', { todo: 'later', failureType: 'testCodeFailure' })), 'todo');
});

test('a suite counts only when it failed by itself or was skipped', () => {
  assert.equal(outcome(event('test:pass', 'suite', { suite: true })), undefined);
  assert.equal(outcome(event('test:fail', 'suite', { suite: true, failureType: 'subtestsFailed' })), undefined);
  assert.equal(outcome(event('test:fail', 'suite', { suite: true, failureType: 'hookFailed' })), 'failed');
  assert.equal(outcome(event('test:fail', 'suite', { suite: true, failureType: 'testCodeFailure' })), 'failed');
  // Its tests were cancelled and are counted so; the suite's own hook failure is what failed.
  assert.equal(outcome(event('test:fail', 'suite', { suite: true, failureType: 'cancelledByParent' })), 'failed');
  assert.equal(outcome(event('test:pass', 'suite', { suite: true, skip: 'why' })), 'skipped');
});

test('a test that failed only through a subtest is not counted twice', () => {
  assert.equal(outcome(event('test:fail', 'parent', { failureType: 'subtestsFailed' })), undefined);
});

test('events other than a test ending count as nothing', () => {
  const plan = { type: 'test:plan', data: { nesting: 0, count: 3 } } as TestEvent;
  assert.equal(classifyTestEvent(plan), undefined);
});

test('the final line names every outcome, always in the same order', () => {
  const totals = tally([
    { outcome: 'passed', name: 'a' },
    { outcome: 'passed', name: 'b' },
    { outcome: 'failed', name: 'c' },
    { outcome: 'todo', name: 'd' },
  ]);
  assert.equal(formatFinalLine(totals), 'npm test: 2 passed, 1 failed, 0 skipped, 0 cancelled, 1 todo');
});
