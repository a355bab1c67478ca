/**
 * Workflow layer: initializeCluster on the real Temporal server with mocked checks, so that parallelism,
 * fail-fast, degradation and retries are observed in real histories.
 */
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { Worker } from '@temporalio/worker';
import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type {
  ClusterInitActivities,
  ComponentCheckInput,
  ComponentCheckResult,
} from '../activities/cluster-init-activities';
import { loadWorkflowBundle } from '../workers/workflow-bundle';
import { temporalClient } from '../test/support/services';
import { waitUntil } from '../test/support/wait';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import type { WorkflowOutcome } from './interceptors';
import type { Client, Connection } from '@temporalio/client';
import type { InitializeClusterInput } from '../domain/cluster-init';
import type { BootReport } from './initialize-cluster';
import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';

type CheckBehaviour = (input: ComponentCheckInput, attempt: number) => Promise<ComponentCheckResult['detail']>;

const INPUT: Omit<InitializeClusterInput, 'nodeId'> = {
  retry: { maximumAttempts: 3, initialIntervalMs: 50, backoffCoefficient: 2, maximumIntervalMs: 200 },
  componentTimeoutMs: 10_000,
};

let bundle: WorkflowBundleWithSourceMap;
let client: Client;
let connection: Connection;
let nativeConnection: NativeConnection;

before(async () => {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  bundle = await loadWorkflowBundle();
  ({ client, connection } = await temporalClient());
  nativeConnection = await NativeConnection.connect({ address: process.env.NOVACRON_TEST_TEMPORAL_ADDRESS! });
});

after(async () => {
  await connection.close();
  await nativeConnection.close();
});

/** Runs one init against mock checks; `behaviour` maps a component to its check, the default succeeds at once. */
async function runInit(input: {
  behaviour?: Record<string, CheckBehaviour>;
  whileRunning?: (workflowId: string) => Promise<void>;
  disabledComponents?: string[];
}): Promise<{
  report?: BootReport;
  error?: unknown;
  timeline: Array<{ component: string; event: 'start' | 'end'; at: number }>;
  cancelRequested: string[];
  /** What the metrics interceptor reported for this run, through this run's own worker. */
  finishedOutcomes: WorkflowOutcome[];
}> {
  const taskQueue = `init-test-${randomBytes(4).toString('hex')}`;
  const timeline: Array<{ component: string; event: 'start' | 'end'; at: number }> = [];
  const attempts = new Map<string, number>();
  const check = async (checkInput: ComponentCheckInput): Promise<ComponentCheckResult> => {
    const attempt = (attempts.get(checkInput.component) ?? 0) + 1;
    attempts.set(checkInput.component, attempt);
    timeline.push({ component: checkInput.component, event: 'start', at: performance.now() });
    try {
      const detail = await (input.behaviour?.[checkInput.component]?.(checkInput, attempt) ?? Promise.resolve({}));
      return { attempt, durationMs: 1, detail };
    } finally {
      timeline.push({ component: checkInput.component, event: 'end', at: performance.now() });
    }
  };
  const recorded: unknown[] = [];
  const finishedOutcomes: WorkflowOutcome[] = [];
  const activities: ClusterInitActivities = {
    checkConfig: check,
    checkDataDir: check,
    checkResources: check,
    checkPostgres: check,
    checkTemporalNamespace: check,
    checkAuditLog: check,
    checkOnnxRuntime: check,
    checkControlTaskQueue: check,
    recordClusterBoot: async (record) => {
      recorded.push(record);
    },
  };
  const worker = await Worker.create({
    connection: nativeConnection,
    taskQueue,
    workflowBundle: bundle,
    activities,
    sinks: {
      workflowMetrics: {
        finished: { fn: (_info, input: { outcome: WorkflowOutcome }) => void finishedOutcomes.push(input.outcome) },
      },
    },
  });
  const workflowId = `init-test-${randomBytes(6).toString('hex')}`;
  return worker.runUntil(async () => {
    const handle = await client.workflow.start('initializeCluster', {
      workflowId,
      taskQueue,
      args: [{ ...INPUT, nodeId: 'test-node', disabledComponents: input.disabledComponents ?? [] }],
    });
    if (input.whileRunning) await input.whileRunning(workflowId);
    let outcome: { report?: BootReport; error?: unknown };
    try {
      outcome = { report: (await handle.result()) as BootReport };
    } catch (error) {
      outcome = { error };
    }
    // The boot is recorded when it starts ('running') and once more with its outcome.
    assert.deepEqual(
      recorded.map((r) => (r as { report: { status: string } }).report.status),
      ['running', outcome.report?.status ?? 'failed'],
    );
    // Which activities the workflow asked to cancel, read from its real history.
    const events = (await handle.fetchHistory()).events ?? [];
    const scheduled = new Map(
      events
        .filter((e) => e.activityTaskScheduledEventAttributes)
        .map((e) => [String(e.eventId), e.activityTaskScheduledEventAttributes!.activityType!.name!]),
    );
    const cancelRequested = events
      .filter((e) => e.activityTaskCancelRequestedEventAttributes)
      .map((e) => scheduled.get(String(e.activityTaskCancelRequestedEventAttributes!.scheduledEventId))!);
    return { ...outcome, timeline, cancelRequested, finishedOutcomes };
  });
}

describe('initializeCluster workflow', () => {
  test('runs each level in parallel and reports every component with its level', async () => {
    // Each level-0 check waits for the other to start. Run in parallel, both start whatever the load; run in
    // sequence, the first one times out alone and the boot fails.
    const started = new Set<string>();
    const slow: CheckBehaviour = async (input) => {
      started.add(input.component);
      await waitUntil('both level-0 checks to start', () => started.has('config') && started.has('data-dir'), {
        timeoutMs: 5_000,
      });
      return { slow: true };
    };
    const { report, error, timeline, finishedOutcomes } = await runInit({
      behaviour: { config: slow, 'data-dir': slow },
    });
    assert.ok(report, `the boot completed: ${String(error)}`);
    assert.equal(report.status, 'ready');
    assert.deepEqual(
      report.components.map((c) => [c.name, c.phase, c.level, c.status]),
      [
        ['config', 'pre-init', 0, 'ok'],
        ['data-dir', 'pre-init', 0, 'ok'],
        ['resources', 'pre-init', 1, 'ok'],
        ['postgres', 'core', 0, 'ok'],
        ['temporal-namespace', 'core', 0, 'ok'],
        ['audit-log', 'services', 0, 'ok'],
        ['onnx-runtime', 'services', 0, 'ok'],
        ['control-task-queue', 'post-init', 0, 'ok'],
      ],
    );
    const startOf = (name: string) => timeline.find((e) => e.component === name && e.event === 'start')!.at;
    const endOf = (name: string) => timeline.find((e) => e.component === name && e.event === 'end')!.at;
    // Both slow level-0 checks were in flight at the same time...
    assert.ok(
      startOf('data-dir') < endOf('config') && startOf('config') < endOf('data-dir'),
      'level 0 ran in parallel',
    );
    // ...and level 1 waited for both.
    assert.ok(startOf('resources') >= Math.max(endOf('config'), endOf('data-dir')), 'level 1 waited for level 0');
    assert.equal(report.phases.length, 4);
    assert.deepEqual(finishedOutcomes, ['completed'], 'the metrics interceptor reported the run');
  });

  test('retries a failing check with backoff and counts the attempts', async () => {
    const flaky: CheckBehaviour = async (_input, attempt) => {
      if (attempt < 3) throw ApplicationFailure.retryable(`not yet (attempt ${attempt})`, 'NotYet');
      return { attempt };
    };
    const { report, timeline } = await runInit({ behaviour: { postgres: flaky } });
    assert.equal(report?.status, 'ready');
    const postgres = report.components.find((c) => c.name === 'postgres')!;
    assert.equal(postgres.attempts, 3);
    const starts = timeline.filter((e) => e.component === 'postgres' && e.event === 'start').map((e) => e.at);
    assert.equal(starts.length, 3);
    // Load only ever lengthens a gap, so lower bounds are what can be asserted: the first retry waits the initial
    // 50 ms, the second at least 100 ms (coefficient 2). Without backoff the second gap would be ~50 ms.
    const gaps = [starts[1]! - starts[0]!, starts[2]! - starts[1]!];
    assert.ok(gaps[0]! >= 45 && gaps[1]! >= 95, `gaps ${gaps.map((g) => g.toFixed(0)).join(', ')} ms`);
  });

  test('an optional failure degrades the boot and skips nothing critical', async () => {
    const broken: CheckBehaviour = async () => {
      throw ApplicationFailure.nonRetryable('no CPU backend', 'OnnxRuntimeUnavailable');
    };
    const { report } = await runInit({ behaviour: { 'onnx-runtime': broken } });
    assert.equal(report?.status, 'degraded');
    const onnx = report.components.find((c) => c.name === 'onnx-runtime')!;
    assert.equal(onnx.status, 'failed');
    assert.equal(onnx.error, 'no CPU backend');
    assert.equal(onnx.attempts, 1, 'a non-retryable failure is not retried');
    assert.equal(report.components.find((c) => c.name === 'control-task-queue')!.status, 'ok');
  });

  test('a critical failure fails fast: siblings are cancelled, later phases never run, the report travels with the failure', async () => {
    // Postgres fails only once its sibling is in flight, and the sibling is held until the workflow has given up on
    // it: ordered by conditions, so a slow machine cannot let the sibling finish first.
    let namespaceStarted = false;
    let namespaceReleased = false;
    const { error, timeline, cancelRequested, finishedOutcomes } = await runInit({
      behaviour: {
        postgres: async () => {
          await waitUntil('the temporal-namespace check to start', () => namespaceStarted);
          throw ApplicationFailure.nonRetryable('connection refused', 'PostgresUnreachable');
        },
        'temporal-namespace': async () => {
          namespaceStarted = true;
          await waitUntil('the workflow to give up on temporal-namespace', () => namespaceReleased);
          return {};
        },
      },
      whileRunning: async (workflowId) => {
        const handle = client.workflow.getHandle(workflowId);
        try {
          // Released only once the workflow has closed: a completion that lands while the workflow is failing would
          // make the server reject that workflow task (UnhandledCommand) and the worker run it a second time.
          await waitUntil(
            'the workflow to fail without waiting for temporal-namespace',
            async () => (await handle.describe()).status.name !== 'RUNNING',
          );
        } finally {
          namespaceReleased = true;
        }
      },
    });
    assert.ok(error instanceof WorkflowFailedError, `expected a workflow failure, got ${String(error)}`);
    const cause = error.cause as ApplicationFailure;
    assert.equal(cause.type, 'CriticalComponentFailed');
    assert.match(cause.message, /critical component postgres failed: connection refused/);
    const report = cause.details?.[0] as BootReport;
    assert.equal(report.status, 'failed');
    const status = (name: string) => report.components.find((c) => c.name === name)!.status;
    assert.equal(status('postgres'), 'failed');
    assert.equal(status('temporal-namespace'), 'cancelled');
    assert.equal(status('audit-log'), 'skipped');
    assert.equal(status('control-task-queue'), 'skipped');
    assert.deepEqual(cancelRequested, ['checkTemporalNamespace'], 'the in-flight sibling was cancelled');
    assert.ok(!timeline.some((e) => e.component === 'audit-log'), 'no later-phase check ran');
    assert.deepEqual(finishedOutcomes, ['failed']);
  });

  test('answers the bootReport query while it runs', async () => {
    let seen: BootReport | undefined;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { report } = await runInit({
      behaviour: {
        'audit-log': async () => {
          await gate;
          return {};
        },
      },
      whileRunning: async (workflowId) => {
        const handle = client.workflow.getHandle(workflowId);
        try {
          seen = await waitUntil('audit-log to be running', async () => {
            const live = await handle.query<BootReport>('bootReport');
            return live.components.find((c) => c.name === 'audit-log')?.status === 'running' ? live : undefined;
          });
        } finally {
          release();
        }
      },
    });
    assert.equal(seen?.status, 'running');
    assert.equal(seen?.components.find((c) => c.name === 'postgres')?.status, 'ok');
    assert.equal(seen?.components.find((c) => c.name === 'audit-log')?.status, 'running');
    assert.equal(report?.status, 'ready');
  });

  test('disabled components are left out of the plan', async () => {
    const { report } = await runInit({ disabledComponents: ['onnx-runtime', 'resources'] });
    assert.equal(report?.status, 'ready');
    assert.deepEqual(report.components.map((c) => c.name).sort(), [
      'audit-log',
      'config',
      'control-task-queue',
      'data-dir',
      'postgres',
      'temporal-namespace',
    ]);
  });
});
