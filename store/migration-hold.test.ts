/**
 * The VM's side of a migration against a real PostgreSQL: the lock with its reservation on the target, the fenced
 * commit (between hosts whose tokens are 57 and 3) and the rollback, each retried as an activity would be.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { migrationPolicySchema } from '../domain/migration';
import type { VmSpecInput } from '../domain/vm-spec';
import { vmSpecSchema } from '../domain/vm-spec';
import { createTestDatabase, type TestDatabase } from '../test/support/services';
import { listEvents } from './events';
import { acquireHostLease, getHost, registerHost } from './hosts';
import {
  acquireMigrationSlot,
  commitMigration,
  createMigrationRecord,
  getMigration,
  lockVmForMigration,
  releaseMigration,
} from './migration-records';
import { getVm, VmStoreError } from './vms';

let db: TestDatabase;
const SOURCE = 'hold-src';
const TARGET = 'hold-dst';
const tokens = { [SOURCE]: 57, [TARGET]: 3 };

before(async () => {
  db = await createTestDatabase();
  for (const [hostId, token] of Object.entries(tokens)) {
    await registerHost(db.pool, {
      id: hostId,
      address: '127.0.0.1',
      libvirtUri: 'qemu:///system',
      cpus: 8,
      memoryMib: 8192,
      diskMib: 100_000,
      labels: {},
      imageRoot: `/tmp/${hostId}`,
      storagePools: { nfs: '/mnt/nfs' },
    });
    await acquireHostLease(db.pool, { hostId, holder: `${hostId}-agent`, ttlMs: 60_000 });
    await db.pool.query(`UPDATE leases SET fencing_token = $2 WHERE resource = 'host:' || $1`, [hostId, token]);
  }
});

after(async () => {
  await db.drop();
});

const refusedWith = (code: VmStoreError['code']) => (err: unknown) => err instanceof VmStoreError && err.code === code;

/** A VM running on the source (ownership written at generation 1), with its migration record opened. */
async function runningVm(
  name: string,
  over: Partial<VmSpecInput> & { state?: string } = {},
): Promise<{ vmId: string; workflowId: string }> {
  const vmId = randomUUID();
  const { state = 'running', ...specOver } = over;
  const spec = vmSpecSchema.parse({
    name,
    vcpus: 2,
    memoryMib: 512,
    disks: [{ name: 'root', sizeMib: 1000 }],
    storagePool: 'nfs',
    ...specOver,
  });
  await db.pool.query(
    `INSERT INTO vms (id, name, spec, state, host_id, owner_token, owner_generation) VALUES ($1, $2, $3, $4, $5, 57, 1)`,
    [vmId, name, JSON.stringify(spec), state, SOURCE],
  );
  const workflowId = `migrate-${vmId}-1`;
  await createMigrationRecord(db.pool, {
    workflowId,
    vmId,
    sourceHostId: SOURCE,
    policy: migrationPolicySchema.parse({}),
  });
  return { vmId, workflowId };
}

const lock = (vmId: string, workflowId: string) =>
  lockVmForMigration(db.pool, { vmId, workflowId, targetHostId: TARGET });
const targetAllocated = async () => (await getHost(db.pool, TARGET))!.allocated;
const lease = async (vmId: string) =>
  (
    await db.pool.query<{ holder: string; fencing_token: string; live: boolean }>(
      `SELECT holder, fencing_token, expires_at > now() AS live FROM leases WHERE resource = 'vm:' || $1`,
      [vmId],
    )
  ).rows[0];

test('the lock takes a running VM, reserves it on the target, and a retry gets the same answer', async () => {
  const before = await targetAllocated();
  const { vmId, workflowId } = await runningVm('lock-shared');
  const locked = await lock(vmId, workflowId);
  assert.equal(locked.generation, 1);
  assert.equal(locked.vm.hostId, SOURCE);
  assert.equal(locked.vm.state, 'migrating');
  assert.equal(locked.vm.operationWorkflowId, workflowId);
  assert.deepEqual(await lock(vmId, workflowId), locked);
  assert.deepEqual(await lease(vmId), { holder: workflowId, fencing_token: '1', live: true });
  // Shared-pool disks do not move: only vCPUs and memory are reserved.
  assert.deepEqual(await targetAllocated(), {
    vms: before.vms + 1,
    vcpus: before.vcpus + 2,
    memoryMib: before.memoryMib + 512,
    diskMib: before.diskMib,
  });

  const local = await runningVm('lock-local', { storagePool: 'local' });
  await lock(local.vmId, local.workflowId);
  assert.equal((await targetAllocated()).diskMib, before.diskMib + 1000, 'local disks are copied: reserved');
  await releaseMigration(db.pool, { ...local, hostId: SOURCE, state: 'running' });
  await releaseMigration(db.pool, { vmId, workflowId, hostId: SOURCE, state: 'running' });
  assert.deepEqual(await targetAllocated(), before);
});

test('the lock refuses a VM that is busy, not running or missing', async () => {
  const busy = await runningVm('lock-busy');
  await lock(busy.vmId, busy.workflowId);
  await assert.rejects(lock(busy.vmId, 'migrate-other'), refusedWith('VmBusy'));
  const stopped = await runningVm('lock-stopped', { state: 'stopped' });
  await assert.rejects(lock(stopped.vmId, stopped.workflowId), refusedWith('VmNotRunning'));
  assert.equal((await getVm(db.pool, stopped.vmId))?.state, 'stopped');
  await assert.rejects(lock(randomUUID(), 'migrate-missing'), refusedWith('VmNotFound'));
  await releaseMigration(db.pool, { ...busy, hostId: SOURCE, state: 'running' });
});

test('the commit moves ownership to the lower-token target once, and frees the lock but not the slot', async () => {
  const { vmId, workflowId } = await runningVm('commit-ok');
  const { generation } = await lock(vmId, workflowId);
  const slot = { workflowId, sourceHostId: SOURCE, targetHostId: TARGET, maxOutgoing: 1, maxIncoming: 1 };
  assert.equal((await acquireMigrationSlot(db.pool, slot)).acquired, true);
  const before = await targetAllocated();
  const commit = { vmId, workflowId, targetHostId: TARGET, targetToken: 3, expectedGeneration: generation };

  await assert.rejects(commitMigration(db.pool, { ...commit, targetToken: 2 }), refusedWith('StaleFencingToken'));
  const committed = await commitMigration(db.pool, commit);
  assert.equal(committed.generation, generation + 1);
  assert.deepEqual(await commitMigration(db.pool, commit), committed, 'a retry returns the same generation');

  const vm = await getVm(db.pool, vmId);
  assert.equal(vm?.hostId, TARGET);
  assert.equal(vm?.ownerToken, 3);
  assert.equal(vm?.ownerGeneration, committed.generation);
  assert.equal(vm?.state, 'running');
  assert.equal(vm?.operationWorkflowId, undefined);
  assert.equal((await lease(vmId))?.live, false);
  // The reservation became the VM itself: the target's totals do not change.
  assert.deepEqual(await targetAllocated(), before);
  const record = await getMigration(db.pool, workflowId);
  assert.equal(record?.state, 'running', 'the slot is held until the record is finished');
  assert.equal(record?.finalHostId, TARGET);
  const migrated = (await listEvents(db.pool, { vmId, limit: 10 })).filter((e) => e.kind === 'vm.migrated');
  assert.equal(migrated.length, 1);

  // Nothing to roll back once committed: the source no longer owns the VM.
  await assert.rejects(
    releaseMigration(db.pool, { vmId, workflowId, hostId: SOURCE, state: 'failed' }),
    refusedWith('OwnershipChanged'),
  );
});

test('a commit over a stale generation is refused and leaves the VM migrating on its source', async () => {
  const { vmId, workflowId } = await runningVm('commit-stale');
  const { generation } = await lock(vmId, workflowId);
  // Someone else wrote ownership meanwhile (the generation moved on).
  await db.pool.query('UPDATE vms SET owner_generation = owner_generation + 1 WHERE id = $1', [vmId]);
  await assert.rejects(
    commitMigration(db.pool, {
      vmId,
      workflowId,
      targetHostId: TARGET,
      targetToken: 3,
      expectedGeneration: generation,
    }),
    refusedWith('OwnershipChanged'),
  );
  const vm = await getVm(db.pool, vmId);
  assert.equal(vm?.hostId, SOURCE);
  assert.equal(vm?.state, 'migrating');
  assert.equal(vm?.operationWorkflowId, workflowId);
  assert.equal((await lease(vmId))?.live, true, 'the refused commit released nothing');
  await releaseMigration(db.pool, { vmId, workflowId, hostId: SOURCE, state: 'running' });
});

test('a commit without the lock is refused', async () => {
  const { vmId, workflowId } = await runningVm('commit-unlocked');
  await assert.rejects(
    commitMigration(db.pool, { vmId, workflowId, targetHostId: TARGET, targetToken: 3, expectedGeneration: 1 }),
    refusedWith('VmBusy'),
  );
  assert.equal((await getVm(db.pool, vmId))?.hostId, SOURCE);
});

test('the rollback leaves the VM with its source, releases everything, and can be retried', async () => {
  const before = await targetAllocated();
  const { vmId, workflowId } = await runningVm('rollback');
  await lock(vmId, workflowId);
  await assert.rejects(
    releaseMigration(db.pool, { vmId, workflowId, hostId: TARGET, state: 'running' }),
    refusedWith('OwnershipChanged'),
  );
  const release = { vmId, workflowId, hostId: SOURCE, state: 'failed' as const, error: 'target died' };
  assert.equal(await releaseMigration(db.pool, release), true);
  assert.equal(await releaseMigration(db.pool, release), false);
  const vm = await getVm(db.pool, vmId);
  assert.equal(vm?.hostId, SOURCE);
  assert.equal(vm?.ownerGeneration, 1);
  assert.equal(vm?.state, 'failed');
  assert.equal(vm?.lastError, 'target died');
  assert.equal(vm?.operationWorkflowId, undefined);
  assert.deepEqual(await targetAllocated(), before);
  assert.equal((await lease(vmId))?.live, false);

  // The next migration takes the lock again, under a larger token.
  await db.pool.query(`UPDATE vms SET state = 'running' WHERE id = $1`, [vmId]);
  await lock(vmId, 'migrate-second');
  assert.deepEqual(await lease(vmId), { holder: 'migrate-second', fencing_token: '2', live: true });
  await releaseMigration(db.pool, { vmId, workflowId: 'migrate-second', hostId: SOURCE, state: 'running' });
});
