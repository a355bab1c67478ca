import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { MigrationEscalation, MigrationProgress, MigrationResult } from '../domain/migration';
import type { CliError } from './api-client';
import type { WorkflowDetail } from './follow-workflow';
import {
  escalationLine,
  followMigration,
  formatDuration,
  plainView,
  progressLine,
  resultLine,
  type FollowInput,
  type ProgressView,
} from './migration-progress';

const MiB = 1024 * 1024;

const base: MigrationProgress = {
  workflowId: 'migrate-vm-1-r1',
  vmId: 'vm-1',
  sourceHostId: 'host-a',
  targetHostId: 'host-b',
  phase: 'precopy',
  escalations: [],
};

const bar = (fraction: number) => `[${'#'.repeat(Math.round(fraction * 10)).padEnd(10, '-')}]`;

const step = (seq: number, overrides: Partial<MigrationEscalation> = {}): MigrationEscalation => ({
  seq,
  kind: 'raise-downtime',
  pass: 3 + seq,
  dataRemainingBytes: 120 * MiB,
  value: 300 * 2 ** seq,
  reason: '2 passes without gain',
  atMs: 1000 * seq,
  ...overrides,
});

describe('progress rendering', () => {
  test('a pre-copy line has the bar, pass, throughput, what is left and the ETA', () => {
    const line = progressLine(
      {
        ...base,
        dataTotalBytes: 1024 * MiB,
        dataProcessedBytes: 1400 * MiB,
        dataRemainingBytes: 256 * MiB,
        pass: 3,
        throughputBytesPerSecond: 118.2 * MiB,
        etaMs: 2300,
      },
      bar,
    );
    // 75% is what is left of memory, not what was sent (which passed the total as pages were sent again).
    assert.equal(line, 'precopy | [########--] 75% | pass 3 | 118 MiB/s | 256 MiB left | ETA 2 s');
  });

  test('a phase without job figures is the phase alone; the bar never passes 100%', () => {
    assert.equal(progressLine({ ...base, phase: 'preparing' }, bar), 'preparing');
    assert.equal(
      progressLine({ ...base, dataTotalBytes: 100, dataRemainingBytes: 0, pass: 9 }, bar),
      'precopy | [##########] 100% | pass 9 | 0.0 MiB left',
    );
  });

  test('durations read at a glance', () => {
    assert.equal(formatDuration(0), '0 s');
    assert.equal(formatDuration(42_400), '42 s');
    assert.equal(formatDuration(185_000), '3 min 05 s');
    assert.equal(formatDuration(3_720_000), '1 h 02 min');
  });

  test('each escalation kind reads as what was done and why', () => {
    assert.equal(
      escalationLine(step(1)),
      'escalation 1 at pass 4 (120 MiB left): max downtime raised to 600 ms: 2 passes without gain',
    );
    assert.equal(
      escalationLine(step(2, { kind: 'auto-converge', value: 20 })),
      'escalation 2 at pass 5 (120 MiB left): auto-converge (vCPUs throttled 20%): 2 passes without gain',
    );
    assert.match(escalationLine(step(3, { kind: 'post-copy' })), /: switched to post-copy: /);
    assert.match(escalationLine(step(4, { kind: 'abort', reason: 'deadline passed' })), /: aborted: deadline passed$/);
  });

  test('a result line has the measured figures, or how it ended', () => {
    const completed: MigrationResult = {
      workflowId: base.workflowId,
      vmId: 'vm-1',
      outcome: 'completed',
      finalHostId: 'host-b',
      sourceHostId: 'host-a',
      escalations: [step(1)],
      measured: { totalMs: 700, downtimeMs: 21, bytes: 150 * MiB, passes: 3, jobMs: 700 },
      workflowMs: 4200,
    };
    assert.equal(
      resultLine(completed),
      'completed: VM vm-1 runs on host-b after 4 s, downtime 21 ms, 150 MiB in 3 passes, 1 escalation steps',
    );
    assert.equal(
      resultLine({ ...completed, outcome: 'cancelled', finalHostId: 'host-a', reason: 'cancelled: by alice' }),
      'cancelled: cancelled: by alice',
    );
  });
});

/** A scripted API: each GET of the workflow answers the next detail; the last one repeats. */
function scriptedApi(details: Array<Partial<WorkflowDetail>>) {
  const posts: string[] = [];
  let i = 0;
  const api: FollowInput['api'] = {
    get: async <T>(path: string) => {
      if (path.startsWith('/v1/migrations/')) return { finalHostId: 'host-a' } as T;
      const detail = details[Math.min(i++, details.length - 1)]!;
      return { status: 'RUNNING', pendingActivities: [], ...detail } as T;
    },
    post: async <T>(path: string) => {
      posts.push(path);
      return {} as T;
    },
  };
  return { api, posts };
}

function recordingView(): ProgressView & { lines: string[]; updates: string[] } {
  const lines: string[] = [];
  const updates: string[] = [];
  return { lines, updates, update: (p) => updates.push(p.phase), line: (l) => lines.push(l), stop() {} };
}

describe('followMigration', () => {
  test('prints each escalation once as it appears and ends 0 on completion', async () => {
    const view = recordingView();
    const out: string[] = [];
    const result: MigrationResult = {
      workflowId: base.workflowId,
      vmId: 'vm-1',
      outcome: 'completed',
      finalHostId: 'host-b',
      sourceHostId: 'host-a',
      escalations: [step(1), step(2)],
      workflowMs: 2000,
    };
    const { api } = scriptedApi([
      { progress: { ...base, phase: 'planning' } },
      { progress: { ...base, escalations: [step(1)] } },
      { progress: { ...base, escalations: [step(1)] } },
      { progress: { ...base, escalations: [step(1), step(2)] } },
      { status: 'COMPLETED', result },
    ]);
    const code = await followMigration({
      api,
      workflowId: base.workflowId,
      view,
      out: (l) => out.push(l),
      confirm: async () => assert.fail('nobody pressed Ctrl-C'),
      onInterrupt: () => () => {},
      intervalMs: 1,
    });
    assert.equal(code, 0);
    assert.deepEqual(view.lines, [escalationLine(step(1)), escalationLine(step(2))]);
    assert.deepEqual(view.updates, ['planning', 'precopy', 'precopy', 'precopy']);
    assert.deepEqual(out, [resultLine(result)]);
  });

  test('Ctrl-C then yes cancels, follows to the end and fails with where the VM runs', async () => {
    const view = recordingView();
    let interrupt: (() => void) | undefined;
    const { api, posts } = scriptedApi([
      { progress: base },
      { progress: base },
      { progress: { ...base, phase: 'rolling-back' } },
      { status: 'CANCELLED' },
    ]);
    const questions: string[] = [];
    const following = followMigration({
      api,
      workflowId: base.workflowId,
      view,
      out: () => assert.fail('not completed'),
      confirm: async (q) => {
        questions.push(q);
        return true;
      },
      onInterrupt: (handler) => {
        interrupt = handler;
        return () => (interrupt = undefined);
      },
      intervalMs: 20,
    });
    await new Promise((r) => setTimeout(r, 5));
    interrupt!();
    await assert.rejects(following, (err: CliError) => {
      assert.equal(err.message, 'cancelled; the VM runs on host-a');
      assert.equal(err.exitCode, 1);
      return true;
    });
    assert.deepEqual(questions, [`cancel migration ${base.workflowId}? [y/N] `]);
    assert.deepEqual(posts, [`/v1/workflows/${base.workflowId}/cancel`]);
    assert.match(view.lines[0]!, /^cancel requested; following/);
    assert.equal(interrupt, undefined, 'stops listening for Ctrl-C at the end');
  });

  test('Ctrl-C then no detaches, leaving the migration running', async () => {
    let interrupt: (() => void) | undefined;
    const { api, posts } = scriptedApi([{ progress: base }]);
    const following = followMigration({
      api,
      workflowId: base.workflowId,
      view: recordingView(),
      out: () => {},
      confirm: async () => false,
      onInterrupt: (handler) => {
        interrupt = handler;
        return () => {};
      },
      intervalMs: 60_000,
    });
    await new Promise((r) => setTimeout(r, 5));
    interrupt!();
    await assert.rejects(following, {
      message: `detached from ${base.workflowId}; it goes on: novacron migration show ${base.workflowId}`,
      exitCode: 130,
    });
    assert.deepEqual(posts, []);
  });

  test('a refusal or failure is one line from the result the failure carries', async () => {
    const refused: MigrationResult = {
      workflowId: base.workflowId,
      vmId: 'vm-1',
      outcome: 'failed',
      finalHostId: 'host-a',
      sourceHostId: 'host-a',
      escalations: [],
      workflowMs: 9000,
      reason: 'MigrationJobFailed: connection reset; vm-1 runs on host-a',
    };
    const { api } = scriptedApi([
      { status: 'FAILED', failure: { message: refused.reason!, type: 'MigrationJobFailed', details: [refused] } },
    ]);
    await assert.rejects(
      followMigration({
        api,
        workflowId: base.workflowId,
        view: recordingView(),
        out: () => {},
        confirm: async () => false,
        onInterrupt: () => () => {},
        intervalMs: 1,
      }),
      { message: `failed: ${refused.reason}`, exitCode: 1 },
    );
  });

  test('plain output shows each phase once', () => {
    const lines: string[] = [];
    const view = plainView((l) => lines.push(l));
    view.update({ ...base, phase: 'planning' });
    view.update({ ...base, pass: 1 });
    view.update({ ...base, pass: 2 });
    view.update({ ...base, phase: 'committing' });
    assert.deepEqual(lines, ['planning', 'precopy | pass 1', 'committing']);
  });
});
