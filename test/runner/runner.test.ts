/**
 * The test runner itself: over fixture files with one test of every outcome, a deliberately failing heavy test and
 * a test that hangs, npm test's last line counts every one of them and its exit code fails the run.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { reportRun } from './report';

const FIXTURES = path.join(__dirname, 'fixtures');
// Long enough for the fixture files that do end to load and finish on a loaded machine, short enough to wait for.
const TIMEOUT_MS = 15_000;

function runFixtures(): Promise<{ code: number | null; output: string; ms: number }> {
  const env = { ...process.env };
  // Set by node for the test file this runs in; the fixtures' runner must be a runner of its own.
  for (const key of Object.keys(env)) if (key.startsWith('NODE_TEST')) delete env[key];
  const started = Date.now();
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(FIXTURES, 'run-fixtures.ts'), String(TIMEOUT_MS)],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, output, ms: Date.now() - started })));
}

test('a failing heavy test and a hanging test are counted in the final line, and the run exits 1', async () => {
  const { code, output, ms } = await runFixtures();
  const lines = output.trimEnd().split('\n');
  assert.equal(lines.at(-1), 'npm test: 3 passed, 2 failed, 1 skipped, 1 cancelled, 1 todo', output);
  assert.equal(code, 1, output);
  // The hang was ended by the timeout, not by the test finishing.
  assert.ok(ms >= TIMEOUT_MS, `the run took ${ms} ms`);
  // Each failure is named, and the heavy batch's comes last: it starts only when the light batch (with the hang)
  // has ended.
  const listed = lines.slice(lines.indexOf('failed or cancelled:') + 1, -2);
  assert.equal(listed.at(-1), '  ✖ test/failing.fixture.ts: fails on purpose (testCodeFailure)', output);
  assert.deepEqual(listed.slice(0, -1).sort(), [
    '  ✖ hanging.fixture.ts (testTimeoutFailure)',
    '  ✖ passing.fixture.ts: is cancelled (cancelledByParent)',
  ]);
  // The human output is node's spec reporter over the same events.
  assert.match(output, /a deliberately failing heavy test/);
  assert.match(output, new RegExp(`test timed out after ${TIMEOUT_MS}ms`));
});

test('a run where nothing failed or was cancelled exits 0, whatever was skipped', () => {
  let report = '';
  const code = reportRun(
    { files: 3, totals: { passed: 4, failed: 0, skipped: 2, cancelled: 0, todo: 1 }, failures: [] },
    FIXTURES,
    (text) => (report += text),
  );
  assert.equal(report, '\nnpm test: 4 passed, 0 failed, 2 skipped, 0 cancelled, 1 todo\n');
  assert.equal(code, 0);
});

test('a run of files that reported no test at all fails', () => {
  let report = '';
  const totals = { passed: 0, failed: 0, skipped: 0, cancelled: 0, todo: 0 };
  const code = reportRun({ files: 2, totals, failures: [] }, FIXTURES, (text) => (report += text));
  assert.equal(code, 1);
  assert.equal(
    report,
    '\nnpm test: 2 test files reported no test\nnpm test: 0 passed, 0 failed, 0 skipped, 0 cancelled, 0 todo\n',
  );
});
