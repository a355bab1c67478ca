/**
 * The control worker killed with SIGKILL in the middle of vmCreate: after a restart the same workflow completes,
 * and there is exactly one VM row, one libvirt domain and one set of disks. The agent is held away while the kill
 * happens, so the create is parked on its disk step every time rather than by luck of timing; its lease is long
 * enough that the host stays up meanwhile.
 */
import type { Client, Connection } from '@temporalio/client';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { LibvirtConnection } from '../../native/libvirt';
import { assertHypervisorBinaries, startLocalHypervisors, type LocalHypervisors } from '../../native/libvirt/harness';
import type { VmCreateInput, VmCreateResult } from '../../workflows/vm-create';
import { vmSpecSchema } from '../../domain/vm-spec';
import { startAgentProcess, TEST_FLEET_ENV, waitForHostsUp } from '../support/fleet';
import { isolatedEnv, startEntry, type ChildHandle } from '../support/processes';
import {
  createTestDatabase,
  scratchDir,
  temporalClient,
  testTemporalAddress,
  type TestDatabase,
} from '../support/services';

let db: TestDatabase;
let hypervisors: LocalHypervisors;
let client: Client;
let connection: Connection;
const children: ChildHandle[] = [];

before(async () => {
  assertHypervisorBinaries();
  db = await createTestDatabase();
  hypervisors = await startLocalHypervisors({ count: 1, baseDir: scratchDir('hv') });
  ({ client, connection } = await temporalClient());
});

after(async () => {
  for (const child of children) {
    if (child.child.exitCode === null && child.child.signalCode === null) child.child.kill('SIGTERM');
    await child.exited;
  }
  await connection?.close();
  await hypervisors?.stop();
  await db?.drop();
});

async function pendingActivity(workflowId: string, type: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const description = await client.workflow.getHandle(workflowId).describe();
    if (description.raw.pendingActivities?.some((a) => a.activityType?.name === type)) return;
    assert.ok(Date.now() < deadline, `${type} never became pending`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('vmCreate survives SIGKILL of the control worker and creates the VM exactly once', async () => {
  const hypervisor = hypervisors.hosts[0]!;
  const imageRoot = path.join(scratchDir('images'), hypervisor.hostId);
  const taskQueue = `vm-crash-${Date.now()}`;
  const workerEnv = isolatedEnv({
    ...TEST_FLEET_ENV,
    DATABASE_URL: db.url,
    TEMPORAL_ADDRESS: testTemporalAddress(),
    NOVACRON_DATA_DIR: scratchDir('worker-data'),
    NOVACRON_TEMPORAL_TASK_QUEUE: taskQueue,
    NOVACRON_MONITORING_WORKER_METRICS_PORT: '0',
    NOVACRON_LOG_LEVEL: 'warn',
    NOVACRON_DWCP_CONSENSUS_LEASE_TTL_SECONDS: '60',
  });
  const agentEnv = { NOVACRON_DWCP_CONSENSUS_LEASE_TTL_SECONDS: '60' };
  const spawnAgent = () => {
    const agent = startAgentProcess({ hypervisor, databaseUrl: db.url, imageRoot, env: agentEnv });
    children.push(agent);
    return agent;
  };
  const spawnWorker = () => {
    const worker = startEntry('workers/control-worker.ts', workerEnv);
    children.push(worker);
    return worker;
  };

  const firstAgent = spawnAgent();
  await waitForHostsUp(db.pool, [hypervisor.hostId], 60_000);
  firstAgent.child.kill('SIGKILL');
  await firstAgent.exited;

  const first = spawnWorker();
  const input: VmCreateInput = {
    vmId: randomUUID(),
    spec: vmSpecSchema.parse({ name: 'crash-vm', vcpus: 1, memoryMib: 64, disks: [{ name: 'root', sizeMib: 16 }] }),
  };
  const handle = await client.workflow.start('vmCreate', {
    workflowId: `vm-create-${input.vmId}`,
    taskQueue,
    args: [input],
  });
  // Placement and the VM row are done; the disk step waits on the host queue, where no agent polls yet.
  await pendingActivity(handle.workflowId, 'createVmDisks', 90_000);
  first.child.kill('SIGKILL');
  assert.equal((await first.exited).signal, 'SIGKILL');
  assert.equal((await handle.describe()).status.name, 'RUNNING', 'the workflow outlives its worker');

  spawnAgent();
  const second = spawnWorker();
  const result = (await handle.result()) as VmCreateResult;
  assert.equal(result.hostId, hypervisor.hostId);

  const domains = await new LibvirtConnection({ uri: hypervisor.uri }).listAllDomains();
  assert.deepEqual(domains, [{ name: 'crash-vm', uuid: input.vmId, state: 'running' }]);
  const rows = await db.pool.query<{ id: string; state: string; operation_workflow_id: string | null }>(
    'SELECT id, state, operation_workflow_id FROM vms',
  );
  assert.deepEqual(rows.rows, [{ id: input.vmId, state: 'running', operation_workflow_id: null }]);
  assert.deepEqual(readdirSync(path.join(imageRoot, input.vmId)), ['root.qcow2']);
  const events = await db.pool.query<{ kind: string }>('SELECT kind FROM events WHERE vm_id = $1 ORDER BY id', [
    input.vmId,
  ]);
  assert.deepEqual(
    events.rows.map((e) => e.kind),
    ['vm.placed', 'vm.created'],
  );

  const history = (await handle.fetchHistory()).events ?? [];
  const identities = new Set(
    history.map((e) => e.workflowTaskCompletedEventAttributes?.identity).filter((id): id is string => Boolean(id)),
  );
  assert.ok(identities.has(`control-worker@novacron-1:${first.child.pid}`), [...identities].join(', '));
  assert.ok(identities.has(`control-worker@novacron-1:${second.child.pid}`), [...identities].join(', '));
});
