/**
 * Workflow layer: registerImage and replicateImage on the real Temporal server with mocked activities, a control
 * queue and one queue per host, so the pairing of the receiving and the sending activity, fail-fast and
 * cancellation are observed through real activity cancellation.
 */
import type { Client, Connection } from '@temporalio/client';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { heartbeat, sleep } from '@temporalio/activity';
import { DefaultLogger, NativeConnection, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import type {
  ImageActivities,
  LinkProbeReport,
  ReceiveImageInput,
  TransferImageInput,
} from '../activities/image-activities';
import type { ImageControlActivities, ReplicationPlan } from '../activities/image-control-activities';
import { temporalClient, testTemporalAddress } from '../test/support/services';
import { waitUntil } from '../test/support/wait';
import { loadWorkflowBundle } from '../workers/workflow-bundle';
import type { ImageProgress, replicateImage, ReplicateImageInput } from './image-workflows';

let bundle: WorkflowBundleWithSourceMap;
let client: Client;
let connection: Connection;
let nativeConnection: NativeConnection;

before(async () => {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  bundle = await loadWorkflowBundle();
  ({ client, connection } = await temporalClient());
  nativeConnection = await NativeConnection.connect({ address: testTemporalAddress() });
});

after(async () => {
  await connection.close();
  await nativeConnection.close();
});

type Calls = Array<[string, unknown]>;

const SHA = 'a'.repeat(64);

/** Heartbeats until cancelled, as the real receiver does while it waits for the sender; records when it starts. */
async function waitUntilCancelled(calls: Calls, name: string): Promise<never> {
  calls.push([`${name}:started`, undefined]);
  try {
    for (;;) {
      heartbeat({ phase: 'waiting-for-sender' });
      await sleep(50);
    }
  } catch (err) {
    if (err instanceof CancelledFailure) calls.push([`${name}:cancelled`, undefined]);
    throw err;
  }
}

interface Overrides {
  control?: Partial<ImageControlActivities>;
  source?: Partial<ImageActivities>;
  target?: Partial<ImageActivities>;
}

async function withWorkers<T>(
  input: { calls: Calls; overrides?: Overrides; alreadyReady?: boolean },
  run: (env: { taskQueue: string; source: string; target: string }) => Promise<T>,
): Promise<T> {
  const suffix = randomBytes(4).toString('hex');
  const taskQueue = `image-wf-test-${suffix}`;
  const source = `src-${suffix}`;
  const target = `dst-${suffix}`;
  const { calls } = input;
  const record =
    <R>(name: string, result: R) =>
    async (arg: unknown): Promise<R> => {
      calls.push([name, arg]);
      return result;
    };
  const plan: ReplicationPlan = {
    image: { id: 'debian', format: 'raw', sizeBytes: 1024, sha256: SHA },
    sourceHostId: source,
    sourceEndpoint: '127.0.0.1:7001',
    targetHostId: target,
    targetEndpoint: '127.0.0.1:7002',
    targetPath: '/images/library/debian.raw',
    alreadyReady: input.alreadyReady ?? false,
  };
  const probe: LinkProbeReport = {
    sourceHostId: source,
    targetHostId: target,
    rttMs: 0.3,
    bandwidthMbps: 9000,
    probeBytes: 1e8,
    streams: 2,
    mode: 'datacenter',
  };
  const control: Partial<ImageControlActivities> = {
    planImageReplication: record('planImageReplication', plan),
    recordLinkProbe: record('recordLinkProbe', { id: 1 }),
    finishImageReplica: record('finishImageReplica', { recorded: true }),
    ...input.overrides?.control,
  };
  const sourceActivities: Partial<ImageActivities> = {
    probeLink: record('probeLink', probe),
    transferImage: record('transferImage', {
      mode: 'datacenter',
      parameters: {
        mode: 'datacenter',
        streams: 2,
        chunkAvgBytes: 131072,
        streamChunkBytes: 1048576,
        compressionLevel: 0,
        maxInFlightChunks: 32,
      },
      logicalBytes: 1024,
      wireBytes: 512,
      durationMs: 5,
      attempts: 1,
      chunks: { total: 1, data: 1, refs: 0, zero: 0, resumed: 0, resent: 0 },
    }),
    ...input.overrides?.source,
  };
  const targetActivities: Partial<ImageActivities> = {
    discardPartialImage: record('discardPartialImage', { removed: 2 }),
    receiveImage: record('receiveImage', {
      path: plan.targetPath,
      alreadyPresent: false,
      wireBytes: 512,
      durationMs: 5,
    }),
    ...input.overrides?.target,
  };
  const hostWorker = (hostId: string, activities: object) =>
    Worker.create({
      connection: nativeConnection,
      taskQueue: `host-${hostId}`,
      activities,
      maxHeartbeatThrottleInterval: '100 milliseconds',
    });
  const [controlWorker, sourceWorker, targetWorker] = await Promise.all([
    Worker.create({ connection: nativeConnection, taskQueue, workflowBundle: bundle, activities: control }),
    hostWorker(source, sourceActivities),
    hostWorker(target, targetActivities),
  ]);
  return targetWorker.runUntil(sourceWorker.runUntil(controlWorker.runUntil(run({ taskQueue, source, target }))));
}

function replicate(taskQueue: string, target: string) {
  return client.workflow.start<typeof replicateImage>('replicateImage', {
    taskQueue,
    workflowId: `image-replicate-test-${randomBytes(4).toString('hex')}`,
    args: [{ imageId: 'debian', targetHostId: target } satisfies ReplicateImageInput],
  });
}

/** Resolves once the named activities run, so a cancel finds them started rather than never scheduled. */
async function activitiesStarted(calls: Calls, ...names: string[]): Promise<void> {
  await waitUntil(`${names.join(' and ')} to start`, () =>
    names.every((name) => calls.some(([n]) => n === `${name}:started`)),
  );
}

function rootCause(err: unknown): unknown {
  let cause = err instanceof WorkflowFailedError ? err.cause : err;
  while (cause instanceof Error && cause.cause && !(cause instanceof ApplicationFailure)) cause = cause.cause;
  return cause;
}

test('replicateImage probes, stores the sample, runs receiver and sender with one transfer id, records ready', async () => {
  const calls: Calls = [];
  const result = await withWorkers({ calls }, async ({ taskQueue, target }) =>
    (await replicate(taskQueue, target)).result(),
  );
  const names = calls.map(([name]) => name);
  assert.deepEqual(names.slice(0, 3), ['planImageReplication', 'probeLink', 'recordLinkProbe']);
  assert.deepEqual(new Set(names.slice(3, 5)), new Set(['receiveImage', 'transferImage']));
  assert.deepEqual(names.slice(5), ['finishImageReplica'], 'nothing to discard after a success');
  const received = calls.find(([n]) => n === 'receiveImage')![1] as ReceiveImageInput;
  const sent = calls.find(([n]) => n === 'transferImage')![1] as TransferImageInput;
  assert.equal(received.transferId, sent.transferId);
  assert.match(sent.transferId, /^[0-9a-f-]{36}$/);
  assert.equal(sent.endpoint, '127.0.0.1:7002');
  assert.equal(sent.probe.bandwidthMbps, 9000);
  assert.equal((calls[5]![1] as { state: string }).state, 'ready');
  assert.equal(result.transfer?.wireBytes, 512);
  assert.equal(result.link?.mode, 'datacenter');
  assert.deepEqual(
    result.steps.map((s) => `${s.name}:${s.status}`),
    ['plan:ok', 'probe:ok', 'record-probe:ok', 'transfer:ok', 'record:ok'],
  );
});

test('a permanent sender failure cancels the waiting receiver and records the replica failed', async () => {
  const calls: Calls = [];
  const error = await withWorkers(
    {
      calls,
      overrides: {
        target: { receiveImage: () => waitUntilCancelled(calls, 'receiveImage') },
        source: {
          transferImage: async () => {
            await activitiesStarted(calls, 'receiveImage');
            throw ApplicationFailure.nonRetryable('no space left on the receiver', 'DwcpDiskFull');
          },
        },
      },
    },
    async ({ taskQueue, target }) =>
      (await replicate(taskQueue, target)).result().then(
        () => undefined,
        (err: unknown) => err,
      ),
  );
  const cause = rootCause(error);
  assert.ok(cause instanceof ApplicationFailure, `expected an ApplicationFailure, got ${String(cause)}`);
  assert.equal(cause.type, 'DwcpDiskFull');
  assert.ok(
    calls.some(([n]) => n === 'receiveImage:cancelled'),
    'the receiver was cancelled',
  );
  const finish = calls.find(([n]) => n === 'finishImageReplica')![1] as { state: string; error: string };
  assert.equal(finish.state, 'failed');
  assert.match(finish.error, /no space left/);
  const names = calls.map(([n]) => n);
  assert.ok(
    names.indexOf('receiveImage:cancelled') < names.indexOf('discardPartialImage'),
    `the partial file is discarded only after the receiver stopped: ${names.join(', ')}`,
  );
});

test('cancelling the workflow cancels both transfer activities and ends CANCELLED with the replica failed', async () => {
  const calls: Calls = [];
  const outcome = await withWorkers(
    {
      calls,
      overrides: {
        target: { receiveImage: () => waitUntilCancelled(calls, 'receiveImage') },
        source: { transferImage: () => waitUntilCancelled(calls, 'transferImage') },
      },
    },
    async ({ taskQueue, target }) => {
      const handle = await replicate(taskQueue, target);
      await activitiesStarted(calls, 'receiveImage', 'transferImage');
      const progress = await handle.query<ImageProgress>('imageProgress');
      assert.ok(
        progress.steps.some((s) => s.name === 'transfer'),
        JSON.stringify(progress.steps),
      );
      assert.equal(progress.link?.mode, 'datacenter');
      await handle.cancel();
      const err = await handle.result().then(
        () => undefined,
        (e: unknown) => e,
      );
      return { err, status: (await handle.describe()).status.name };
    },
  );
  assert.equal(outcome.status, 'CANCELLED');
  assert.ok(calls.some(([n]) => n === 'receiveImage:cancelled'));
  assert.ok(calls.some(([n]) => n === 'transferImage:cancelled'));
  const finish = calls.find(([n]) => n === 'finishImageReplica')![1] as { state: string; error: string };
  assert.deepEqual([finish.state, finish.error], ['failed', 'cancelled']);
  assert.equal(calls.at(-1)![0], 'discardPartialImage', 'a cancelled replication leaves no partial file');
});

test('a target that already holds the image is not copied again', async () => {
  const calls: Calls = [];
  const result = await withWorkers({ calls, alreadyReady: true }, async ({ taskQueue, target }) =>
    (await replicate(taskQueue, target)).result(),
  );
  assert.deepEqual(
    calls.map(([n]) => n),
    ['planImageReplication'],
  );
  assert.equal(result.alreadyPresent, true);
});
