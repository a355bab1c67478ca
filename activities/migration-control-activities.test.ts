/**
 * The control side of migrateVm against a real PostgreSQL: which targets are refused and with which failure type
 * (the API maps these), placement among the hosts that mount the VM's pool, and the lock, slot, commit and rollback
 * as the workflow calls them, with metrics counted once however often an activity is retried.
 */
import { ApplicationFailure } from '@temporalio/activity';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { migrationPolicySchema, type EscalationKind, type MigrationResult } from '../domain/migration';
import { acquireHostLease, registerHost, setHostDwcpEndpoint, setHostMaintenance } from '../store/hosts';
import { getMigration } from '../store/migration-records';
import { assignVmOwner, getVm } from '../store/vms';
import { createTestDatabase, testConfig, type TestDatabase } from '../test/support/services';
import { createMigrationControlActivities } from './migration-control-activities';

let db: TestDatabase;
const observed: MigrationResult[] = [];
const escalations: EscalationKind[] = [];

before(async () => {
  db = await createTestDatabase();
  await host('src', { nfs: '/mnt/nfs' });
  await host('dst', { nfs: '/mnt/nfs' });
  await host('plain', {});
  await host('resting', { nfs: '/mnt/nfs' });
  await setHostMaintenance(db.pool, { hostId: 'resting', enabled: true });
});

after(async () => {
  await db.drop();
});

function activities() {
  return createMigrationControlActivities({
    config: testConfig(),
    pool: db.pool,
    migrationMetrics: {
      observeResult: (result) => observed.push(result),
      countEscalation: (kind) => escalations.push(kind),
    },
  });
}

async function host(id: string, storagePools: Record<string, string>): Promise<void> {
  await registerHost(db.pool, {
    id,
    address: '127.0.0.1',
    libvirtUri: `qemu:///system?socket=/run/${id}/libvirt-sock`,
    cpus: 4,
    memoryMib: 8192,
    diskMib: 100_000,
    labels: {},
    imageRoot: `/var/lib/${id}`,
    storagePools,
  });
  await acquireHostLease(db.pool, { hostId: id, holder: `${id}-agent`, ttlMs: 600_000 });
  await setHostDwcpEndpoint(db.pool, { hostId: id, endpoint: '127.0.0.1:7480' });
}

async function runningVm(input: { storagePool: string; state?: string }): Promise<string> {
  const vmId = randomUUID();
  const spec = { name: `vm-${vmId.slice(0, 8)}`, vcpus: 1, memoryMib: 256, disks: [], storagePool: input.storagePool };
  await db.pool.query(`INSERT INTO vms (id, name, spec, state) VALUES ($1, $2, $3, $4)`, [
    vmId,
    spec.name,
    JSON.stringify(spec),
    input.state ?? 'running',
  ]);
  const token = await db.pool.query<{ fencing_token: string }>(
    `SELECT fencing_token FROM leases WHERE resource = 'host:src'`,
  );
  await assignVmOwner(db.pool, { vmId, hostId: 'src', token: Number(token.rows[0]!.fencing_token) });
  return vmId;
}

const policy = migrationPolicySchema.parse({});

async function failureType(work: Promise<unknown>): Promise<string> {
  const err = await work.then(
    () => assert.fail('expected a failure'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ApplicationFailure, String(err));
  assert.equal(err.nonRetryable, true, `${err.type} must not be retried`);
  return err.type ?? '';
}

test('placement picks the other host that mounts the pool; refused targets say why by type', async () => {
  const control = activities();
  const vmId = await runningVm({ storagePool: 'nfs' });
  const workflowId = `migrate-${vmId}-a`;
  const opening = await control.openMigration({ workflowId, vmId, policy });
  assert.equal(opening.sourceHostId, 'src');
  assert.equal(opening.vm.storagePool, 'nfs');
  assert.equal(opening.settings.pollIntervalMs, testConfig().migration.pollIntervalMs);
  const base = { workflowId, vmId, sourceHostId: 'src' };

  const chosen = await control.chooseMigrationTarget(base);
  assert.equal(chosen.target.id, 'dst', 'plain lacks the pool, resting is in maintenance');
  assert.equal(chosen.target.migrationAddress, '127.0.0.1');
  assert.match(chosen.target.dwcpEndpoint, /^127\.0\.0\.1:/);
  assert.equal(chosen.sourceSpareCpus, 3);

  assert.equal(
    await failureType(control.chooseMigrationTarget({ ...base, targetHostId: 'src' })),
    'InvalidMigrationTarget',
  );
  assert.equal(
    await failureType(control.chooseMigrationTarget({ ...base, targetHostId: 'plain' })),
    'TargetLacksStoragePool',
  );
  assert.equal(
    await failureType(control.chooseMigrationTarget({ ...base, targetHostId: 'resting' })),
    'TargetHostUnavailable',
  );
  assert.equal(
    await failureType(control.chooseMigrationTarget({ ...base, targetHostId: 'gone' })),
    'TargetHostUnavailable',
  );

  const local = await runningVm({ storagePool: 'local' });
  await control.openMigration({ workflowId: `migrate-${local}-a`, vmId: local, policy });
  assert.equal(
    await failureType(
      control.chooseMigrationTarget({ workflowId: `migrate-${local}-a`, vmId: local, sourceHostId: 'src' }),
    ),
    'LocalStorageNotMigratable',
  );
  const stopped = await runningVm({ storagePool: 'nfs', state: 'stopped' });
  assert.equal(
    await failureType(control.openMigration({ workflowId: `migrate-${stopped}-a`, vmId: stopped, policy })),
    'VmNotRunning',
  );
});

test('lock, slot, escalation and commit move the VM to the target; retries count metrics once', async () => {
  const control = activities();
  const vmId = await runningVm({ storagePool: 'nfs' });
  const workflowId = `migrate-${vmId}-b`;
  await control.openMigration({ workflowId, vmId, policy, targetHostId: 'dst' });
  const { generation } = await control.lockVmForMigration({ vmId, workflowId, targetHostId: 'dst' });
  assert.equal((await getVm(db.pool, vmId))?.state, 'migrating');
  const other = `migrate-${vmId}-other`;
  await control.openMigration({ workflowId: other, vmId, policy, targetHostId: 'dst' }).catch(() => undefined);
  assert.equal(
    await failureType(control.lockVmForMigration({ vmId, workflowId: other, targetHostId: 'dst' })),
    'VmBusy',
  );

  assert.deepEqual(await control.acquireMigrationSlot({ workflowId, sourceHostId: 'src', targetHostId: 'dst' }), {
    acquired: true,
    waitingBehind: 0,
  });
  const escalation = {
    seq: 1,
    kind: 'raise-downtime' as const,
    pass: 3,
    dataRemainingBytes: 1,
    reason: 'stall',
    atMs: 1,
  };
  await control.recordMigrationEscalation({ workflowId, escalation });
  await control.recordMigrationEscalation({ workflowId, escalation });
  assert.equal(escalations.filter((k) => k === 'raise-downtime').length, 1);

  const committed = await control.commitMigration({
    vmId,
    workflowId,
    targetHostId: 'dst',
    expectedGeneration: generation,
  });
  assert.equal(committed.generation, generation + 1);
  const vm = await getVm(db.pool, vmId);
  assert.deepEqual([vm?.hostId, vm?.state, vm?.operationWorkflowId], ['dst', 'running', undefined]);

  const result: MigrationResult = {
    workflowId,
    vmId,
    outcome: 'completed',
    finalHostId: 'dst',
    sourceHostId: 'src',
    targetHostId: 'dst',
    escalations: [escalation],
    measured: { totalMs: 480, downtimeMs: 21, bytes: 1000, passes: 3, jobMs: 450 },
    workflowMs: 2000,
  };
  const before = observed.length;
  await control.finishMigration({ workflowId, outcome: 'completed', finalHostId: 'dst', result });
  await control.finishMigration({ workflowId, outcome: 'completed', finalHostId: 'dst', result });
  assert.equal(observed.length, before + 1, 'a retried finish observes the result once');
  const record = await getMigration(db.pool, workflowId);
  assert.deepEqual([record?.state, record?.finalHostId], ['completed', 'dst']);
});

test('a rollback leaves the VM running on its source and frees the slot for the next migration', async () => {
  const control = activities();
  const vmId = await runningVm({ storagePool: 'nfs' });
  const first = `migrate-${vmId}-c`;
  await control.openMigration({ workflowId: first, vmId, policy, targetHostId: 'dst' });
  await control.lockVmForMigration({ vmId, workflowId: first, targetHostId: 'dst' });
  await control.acquireMigrationSlot({ workflowId: first, sourceHostId: 'src', targetHostId: 'dst' });
  await control.releaseMigration({ vmId, workflowId: first, hostId: 'src', state: 'running', error: 'cancelled' });
  await control.finishMigration({ workflowId: first, outcome: 'cancelled', finalHostId: 'src', error: 'cancelled' });
  const vm = await getVm(db.pool, vmId);
  assert.deepEqual([vm?.hostId, vm?.state, vm?.operationWorkflowId], ['src', 'running', undefined]);

  const second = `migrate-${vmId}-d`;
  await control.openMigration({ workflowId: second, vmId, policy, targetHostId: 'dst' });
  await control.lockVmForMigration({ vmId, workflowId: second, targetHostId: 'dst' });
  const slot = await control.acquireMigrationSlot({ workflowId: second, sourceHostId: 'src', targetHostId: 'dst' });
  assert.equal(slot.acquired, true);
});
