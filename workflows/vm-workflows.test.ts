/**
 * Workflow layer: the VM workflows and the fleet monitor on the real Temporal server with mocked activities, on a
 * control queue and a host queue of their own, so routing to `host-<id>`, failure handling and drift repair are
 * observed in real histories.
 */
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { Worker } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { test } from 'node:test';
import type { FailoverControlActivities } from '../activities/failover-control-activities';
import type { InventoryActivities } from '../activities/inventory-activities';
import type { LibvirtActivities } from '../activities/libvirt-activities';
import { workflowTestEnv } from '../test/support/workflow-test-env';
import { waitUntil } from '../test/support/wait';
import type { FleetStatus } from './host-fleet-monitor';
import type { vmCreate, VmCreateInput } from './vm-create';
import { vmSpecSchema, type VmRecord } from '../domain/vm-spec';

const env = workflowTestEnv();

type Calls = Array<[string, unknown]>;

/** Mocks that record every call; `overrides` replace single activities. */
function mocks(hostId: string, calls: Calls, overrides: { control?: object; host?: object } = {}) {
  const record =
    <T>(name: string, result: T) =>
    async (input: unknown): Promise<T> => {
      calls.push([name, input]);
      return result;
    };
  const vm = (input: unknown): VmRecord => ({
    id: (input as { vmId: string }).vmId,
    name: 'web',
    hostId,
    spec: vmSpecSchema.parse({ name: 'web', vcpus: 1, memoryMib: 64 }),
    state: 'starting',
    createdAt: '',
    updatedAt: '',
  });
  const control: Partial<InventoryActivities & FailoverControlActivities> = {
    claimVmPlacement: record('claimVmPlacement', { hostId, ownerToken: 7 }),
    beginVmOperation: async (input) => {
      calls.push(['beginVmOperation', input]);
      return vm(input);
    },
    finishVmOperation: record('finishVmOperation', undefined),
    deleteVmRecord: record('deleteVmRecord', undefined),
    markDriftRepairing: record('markDriftRepairing', undefined),
    // No host is ever suspect here: the failover path has its own tests (failover-host.test.ts).
    claimFailovers: async () => ({
      start: [],
      storm: { suspect: 0, total: 1, share: 0, threshold: 0.55, storm: false },
    }),
    ...overrides.control,
  };
  const host: Partial<LibvirtActivities> = {
    createVmDisks: record('createVmDisks', []),
    defineVmDomain: record('defineVmDomain', { uuid: 'x' }),
    startVmDomain: record('startVmDomain', { alreadyRunning: false }),
    ...overrides.host,
  };
  return { control, host };
}

async function withWorkers<T>(
  input: { calls: Calls; overrides?: { control?: object; host?: object } },
  run: (queues: { taskQueue: string; hostId: string }) => Promise<T>,
): Promise<T> {
  const suffix = randomBytes(4).toString('hex');
  const taskQueue = `vm-wf-test-${suffix}`;
  const hostId = `wt-${suffix}`;
  const { control, host } = mocks(hostId, input.calls, input.overrides);
  const controlWorker = await Worker.create({
    connection: env.nativeConnection,
    taskQueue,
    workflowBundle: env.bundle,
    activities: control,
  });
  const hostWorker = await Worker.create({
    connection: env.nativeConnection,
    taskQueue: `host-${hostId}`,
    activities: host,
  });
  return hostWorker.runUntil(controlWorker.runUntil(run({ taskQueue, hostId })));
}

const spec = vmSpecSchema.parse({ name: 'web', vcpus: 1, memoryMib: 64, disks: [{ name: 'root', sizeMib: 16 }] });

test('vmCreate runs the host steps on host-<id> in order and records the VM running', async () => {
  const calls: Calls = [];
  const result = await withWorkers({ calls }, async ({ taskQueue }) =>
    env.client.workflow.execute<typeof vmCreate>('vmCreate', {
      taskQueue,
      workflowId: `vm-create-${randomUUID()}`,
      args: [{ vmId: randomUUID(), spec } satisfies VmCreateInput],
    }),
  );
  assert.deepEqual(
    calls.map(([name]) => name),
    ['claimVmPlacement', 'createVmDisks', 'defineVmDomain', 'startVmDomain', 'finishVmOperation'],
  );
  assert.equal((calls[4]![1] as { state: string }).state, 'running');
  assert.equal(result.ownerToken, 7);
});

test('a permanent host failure releases the VM as failed and fails the workflow with the cause', async () => {
  const calls: Calls = [];
  const error = await withWorkers(
    {
      calls,
      overrides: {
        host: {
          defineVmDomain: async () => {
            throw ApplicationFailure.nonRetryable('domain web has another UUID', 'DomainNameConflict');
          },
        },
      },
    },
    async ({ taskQueue }) =>
      env.client.workflow
        .execute('vmCreate', {
          taskQueue,
          workflowId: `vm-create-${randomUUID()}`,
          args: [{ vmId: randomUUID(), spec } satisfies VmCreateInput],
        })
        .then(
          () => undefined,
          (err: unknown) => err,
        ),
  );
  assert.ok(error instanceof WorkflowFailedError);
  const finish = calls.find(([name]) => name === 'finishVmOperation')![1] as { state: string; error: string };
  assert.equal(finish.state, 'failed');
  assert.match(finish.error, /another UUID/);
  assert.ok(!calls.some(([name]) => name === 'startVmDomain'), 'nothing runs after the failed step');
});

test('an invalid spec fails vmCreate before any activity runs', async () => {
  const calls: Calls = [];
  const error = await withWorkers({ calls }, async ({ taskQueue }) =>
    env.client.workflow
      .execute('vmCreate', {
        taskQueue,
        workflowId: `vm-create-${randomUUID()}`,
        args: [{ vmId: randomUUID(), spec: { ...spec, vcpus: 0 } }],
      })
      .then(
        () => undefined,
        (err: unknown) => err,
      ),
  );
  assert.ok(error instanceof WorkflowFailedError);
  assert.ok(error.cause instanceof ApplicationFailure);
  assert.equal(error.cause.type, 'InvalidVmSpec');
  assert.match(error.cause.message, /^spec\.vcpus: /);
  assert.deepEqual(calls, []);
});

test('under the repair policy the fleet monitor starts a vmStart for a state mismatch, once', async () => {
  const calls: Calls = [];
  const vmId = randomUUID();
  const driftId = Number.parseInt(randomBytes(3).toString('hex'), 16);
  let tick = 0;
  const checkFleet = async () => {
    tick++;
    const repairs = tick === 1 ? [{ driftId, vmId, kind: 'state-mismatch' as const, action: 'start' as const }] : [];
    return { markedDown: [], checkedHosts: [], staleHosts: [], opened: [], resolved: 0, repairs };
  };
  await withWorkers({ calls, overrides: { control: { checkFleet } } }, async ({ taskQueue }) => {
    const monitor = await env.client.workflow.start('fleetMonitor', {
      taskQueue,
      workflowId: `fleet-monitor-${taskQueue}`,
      args: [{ intervalMs: 50, ticksPerRun: 3 }],
    });
    const repairHandle = env.client.workflow.getHandle(`drift-repair-${driftId}`);
    // The monitor starts the repair on its first tick; until then the id is unknown to the server (NotFound).
    await waitUntil('the monitor to start the repair', () =>
      repairHandle.describe().then(Boolean, (err: unknown) => {
        if (err instanceof WorkflowNotFoundError) return false;
        throw err;
      }),
    );
    const repair = await repairHandle.result();
    assert.equal((repair as { state: string }).state, 'running');
    // Three ticks per run, then continueAsNew carries the totals into the next run.
    await waitUntil('a fifth fleet check, in the second run', () => tick >= 5);
    const status = await monitor.query<FleetStatus>('fleetStatus');
    assert.ok(status.totals.ticks >= 4, JSON.stringify(status));
    assert.equal(status.totals.repairsStarted, 1);
    await monitor.terminate('test over');
  });
  // The child's steps and the monitor's bookkeeping run concurrently; each happens exactly once.
  assert.deepEqual(
    calls
      .filter(([name]) => name !== 'finishVmOperation')
      .map(([name]) => name)
      .sort(),
    ['beginVmOperation', 'markDriftRepairing', 'startVmDomain'],
  );
  assert.deepEqual(calls.find(([name]) => name === 'markDriftRepairing')![1], {
    driftId,
    workflowId: `drift-repair-${driftId}`,
  });
});
