/**
 * vmCreate for a VM made from an image, on the real Temporal server with mocked activities: the base is asked for
 * in the VM's pool on its host, replicated there first by the replicateImage workflow when the host has no copy,
 * and a replication already under way is waited for rather than raced; the first disk then overlays the base.
 */
import type { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import type { EnsureImageBaseResult } from '../activities/image-base-activities';
import type { ReplicationPlan } from '../activities/image-control-activities';
import { temporalClient, testTemporalAddress } from '../test/support/services';
import { waitUntil } from '../test/support/wait';
import { loadWorkflowBundle } from '../workers/workflow-bundle';
import type { vmCreate, VmCreateInput } from './vm-create';
import { vmSpecSchema } from '../domain/vm-spec';

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
const IMAGE = { id: 'guest', format: 'raw' as const, sizeBytes: 16 * 1024 * 1024 + 1, sha256: 'a'.repeat(64) };
const BASE = '/srv/pools/shared/bases/guest.raw';

interface Mocks {
  /** What ensureImageBase answers, call by call (the last answer repeats). */
  bases: EnsureImageBaseResult[];
  /** Held until the test releases it: the first replication's plan, standing for a long transfer. */
  firstPlan?: Promise<void>;
}

async function withWorkers<T>(
  calls: Calls,
  mocks: Mocks,
  run: (queues: { taskQueue: string; hostId: string }) => Promise<T>,
): Promise<T> {
  const suffix = randomBytes(4).toString('hex');
  const taskQueue = `vm-image-test-${suffix}`;
  const hostId = `wi-${suffix}`;
  const record =
    <R>(name: string, result: (input: unknown) => R | Promise<R>) =>
    async (input: unknown): Promise<R> => {
      calls.push([name, input]);
      return result(input);
    };
  let plans = 0;
  const plan = (): ReplicationPlan => ({
    image: IMAGE,
    sourceHostId: 'src',
    sourceEndpoint: '127.0.0.1:1',
    targetHostId: hostId,
    targetEndpoint: '127.0.0.1:2',
    targetPath: '/srv/x',
    alreadyReady: true,
  });
  let baseCalls = 0;
  const controlWorker = await Worker.create({
    connection: nativeConnection,
    taskQueue,
    workflowBundle: bundle,
    activities: {
      claimVmPlacement: record('claimVmPlacement', () => ({ hostId, ownerToken: 3 })),
      finishVmOperation: record('finishVmOperation', () => undefined),
      lookupImage: record('lookupImage', () => IMAGE),
      planImageReplication: record('planImageReplication', async () => {
        if (plans++ === 0 && mocks.firstPlan) await mocks.firstPlan;
        return plan();
      }),
    },
  });
  const hostWorker = await Worker.create({
    connection: nativeConnection,
    taskQueue: `host-${hostId}`,
    activities: {
      ensureImageBase: record('ensureImageBase', () => mocks.bases[Math.min(baseCalls++, mocks.bases.length - 1)]),
      createVmDisks: record('createVmDisks', () => []),
      defineVmDomain: record('defineVmDomain', () => ({ uuid: 'x' })),
      startVmDomain: record('startVmDomain', () => ({ alreadyRunning: false })),
    },
  });
  return hostWorker.runUntil(controlWorker.runUntil(run({ taskQueue, hostId })));
}

const spec = vmSpecSchema.parse({
  name: 'from-image',
  vcpus: 1,
  memoryMib: 128,
  image: 'guest',
  storagePool: 'shared',
});
const ready: EnsureImageBaseResult = { state: 'ready', path: BASE, format: 'raw', copied: false };

function create(taskQueue: string) {
  return client.workflow.execute<typeof vmCreate>('vmCreate', {
    taskQueue,
    workflowId: `vm-create-${randomUUID()}`,
    args: [{ vmId: randomUUID(), spec } satisfies VmCreateInput],
  });
}

test('a base already in the pool is used as it is: the root disk overlays it at the image size', async () => {
  const calls: Calls = [];
  const result = await withWorkers(calls, { bases: [ready] }, async ({ taskQueue }) => create(taskQueue));
  assert.deepEqual(
    calls.map(([name]) => name),
    [
      'claimVmPlacement',
      'lookupImage',
      'ensureImageBase',
      'createVmDisks',
      'defineVmDomain',
      'startVmDomain',
      'finishVmOperation',
    ],
  );
  assert.deepEqual(calls[2]![1], {
    imageId: 'guest',
    format: 'raw',
    sha256: IMAGE.sha256,
    sizeBytes: IMAGE.sizeBytes,
    storagePool: 'shared',
  });
  const disks = calls[3]![1] as { storagePool: string; base: unknown; disks: unknown };
  assert.equal(disks.storagePool, 'shared');
  assert.deepEqual(disks.base, { path: BASE, format: 'raw' });
  // No disks in the spec: one root overlay, the image's size rounded up to whole MiB.
  assert.deepEqual(disks.disks, [{ name: 'root', sizeMib: 17, format: 'qcow2' }]);
  assert.deepEqual(result.base, { path: BASE, format: 'raw' });
  assert.deepEqual(
    result.steps.map((s) => s.name),
    ['place', 'image', 'image-base', 'create-disks', 'define', 'start', 'record'],
  );
});

test('a host with no copy gets the image by replicateImage, named for image and host, then the base', async () => {
  const calls: Calls = [];
  const result = await withWorkers(calls, { bases: [{ state: 'needs-replica' }, ready] }, async (queues) => {
    const created = await create(queues.taskQueue);
    const child = await client.workflow.getHandle(`image-replicate-guest-to-${queues.hostId}`).describe();
    assert.equal(child.type, 'replicateImage');
    assert.equal(child.status.name, 'COMPLETED');
    return created;
  });
  assert.deepEqual(calls.map(([name]) => name).slice(1, 5), [
    'lookupImage',
    'ensureImageBase',
    'planImageReplication',
    'ensureImageBase',
  ]);
  assert.ok(result.steps.some((s) => s.name === 'replicate-image' && s.status === 'ok'));
});

test('a replication of the image to the host already under way is waited for, not raced', async () => {
  const calls: Calls = [];
  let release!: () => void;
  const firstPlan = new Promise<void>((resolve) => (release = resolve));
  await withWorkers(calls, { bases: [{ state: 'needs-replica' }, ready], firstPlan }, async ({ taskQueue, hostId }) => {
    // An operator's replication, started before the create and held mid-plan.
    const operator = await client.workflow.start('replicateImage', {
      taskQueue,
      workflowId: `image-replicate-guest-to-${hostId}`,
      args: [{ imageId: 'guest', targetHostId: hostId }],
    });
    await waitUntil('the operator replication to plan', () => calls.some(([name]) => name === 'planImageReplication'));
    const creating = create(taskQueue);
    await waitUntil(
      'the create to ask for the base',
      () => calls.filter(([n]) => n === 'ensureImageBase').length === 1,
    );
    // Long enough for the create's first retry after finding the replication running (one second).
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.ok(!calls.some(([name]) => name === 'createVmDisks'), 'no disks before the image is here');
    assert.equal(calls.filter(([name]) => name === 'planImageReplication').length, 1, 'no second transfer raced in');
    release();
    await operator.result();
    await creating;
  });
  // The create's own run of the replication came after the operator's ended, and found the replica ready.
  assert.equal(calls.filter(([name]) => name === 'planImageReplication').length, 2);
  assert.ok(calls.some(([name]) => name === 'createVmDisks'));
});
