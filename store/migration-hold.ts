/**
 * The VM's side of a live migration, each step one transaction: the migration lock with capacity reserved on the
 * target, then either the fenced commit to the target or the rollback that leaves the VM with its source. Used
 * through store/migration-records, which re-exports these.
 */
import type { Pool, PoolClient } from 'pg';
import { LOCAL_STORAGE_POOL, type VmRecord } from '../domain/vm-spec';
import { recordEvent } from './events';
import { inTransaction } from './transaction';
import { assignVmOwner, getVm, PLACEMENT_LOCK_KEY, VmStoreError } from './vms';

/** The VM row, locked until the transaction ends; undefined when there is none. */
async function lockedVm(client: PoolClient, vmId: string): Promise<VmRecord | undefined> {
  await client.query('SELECT 1 FROM vms WHERE id = $1 FOR UPDATE', [vmId]);
  return getVm(client, vmId);
}

/**
 * Takes a running VM for the migration, in one transaction: the VM becomes 'migrating', held by the workflow, its
 * lease `vm:<id>` names the workflow, and the VM's vCPUs and memory (and disks, when they are local and must be
 * copied) are reserved on the target. The lease never expires by itself: a migration holds the VM for as long as
 * its durable workflow runs, across worker restarts, and a lapse mid-copy would let a second migration start; the
 * commit or the rollback ends it. A retry by the same workflow returns the first answer.
 */
export async function lockVmForMigration(
  pool: Pool,
  input: { vmId: string; workflowId: string; targetHostId: string },
): Promise<{ vm: VmRecord & { hostId: string }; generation: number }> {
  return inTransaction(pool, async (client) => {
    // Placement reads reservations under this lock: a claim cannot give away what is reserved here.
    await client.query('SELECT pg_advisory_xact_lock($1)', [PLACEMENT_LOCK_KEY]);
    const current = await lockedVm(client, input.vmId);
    if (!current) throw new VmStoreError(`VM ${input.vmId} does not exist`, 'VmNotFound');
    if (current.operationWorkflowId === input.workflowId && current.state === 'migrating' && current.hostId) {
      return { vm: { ...current, hostId: current.hostId }, generation: current.ownerGeneration ?? 0 };
    }
    if (current.operationWorkflowId) {
      throw new VmStoreError(`VM ${current.name} is busy with workflow ${current.operationWorkflowId}`, 'VmBusy');
    }
    if (current.state !== 'running' || !current.hostId) {
      throw new VmStoreError(`VM ${current.name} is ${current.state}; only a running VM migrates`, 'VmNotRunning');
    }
    if (current.hostId === input.targetHostId) {
      throw new VmStoreError(`VM ${current.name} already runs on ${input.targetHostId}`, 'NoHostAvailable');
    }
    const target = await client.query('SELECT 1 FROM hosts WHERE id = $1', [input.targetHostId]);
    if (target.rowCount !== 1) {
      throw new VmStoreError(`target host ${input.targetHostId} does not exist`, 'NoHostAvailable');
    }
    // The row lock above and operation_workflow_id keep other workflows out; the lease condition is the backstop
    // against a lock some earlier workflow never released.
    const lease = await client.query(
      `INSERT INTO leases (resource, holder, fencing_token, expires_at) VALUES ('vm:' || $1, $2, 1, 'infinity')
       ON CONFLICT (resource) DO UPDATE SET holder = EXCLUDED.holder, fencing_token = leases.fencing_token + 1,
         expires_at = EXCLUDED.expires_at, acquired_at = now(), renewed_at = now()
       WHERE leases.holder = EXCLUDED.holder OR leases.expires_at <= now()`,
      [input.vmId, input.workflowId],
    );
    if (lease.rowCount !== 1) {
      throw new VmStoreError(`VM ${current.name}'s migration lock is held by another workflow`, 'VmBusy');
    }
    const { spec } = current;
    // Specs stored before pools existed have no storagePool: their disks are local.
    const local = (spec.storagePool ?? LOCAL_STORAGE_POOL) === LOCAL_STORAGE_POOL;
    const diskMib = local ? spec.disks.reduce((sum, d) => sum + d.sizeMib, 0) : 0;
    await client.query(
      `INSERT INTO capacity_reservations (workflow_id, host_id, vm_id, vcpus, memory_mib, disk_mib)
       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workflow_id) DO NOTHING`,
      [input.workflowId, input.targetHostId, input.vmId, spec.vcpus, spec.memoryMib, diskMib],
    );
    await client.query(
      `UPDATE vms SET state = 'migrating', operation_workflow_id = $2, version = version + 1, updated_at = now()
       WHERE id = $1`,
      [input.vmId, input.workflowId],
    );
    const vm = (await getVm(client, input.vmId))!;
    return { vm: { ...vm, hostId: current.hostId }, generation: vm.ownerGeneration ?? 0 };
  });
}

/**
 * The fenced move, in one transaction: ownership goes to the target under its live lease token, over the
 * generation the lock saw; the VM runs again, released with its lock and reservation; the record remembers the
 * generation, so a retry after success returns it instead of moving the VM twice.
 */
export async function commitMigration(
  pool: Pool,
  input: { vmId: string; workflowId: string; targetHostId: string; targetToken: number; expectedGeneration: number },
): Promise<{ generation: number }> {
  return inTransaction(pool, async (client) => {
    const records = await client.query<{ committed_generation: string | null; source_host_id: string }>(
      'SELECT committed_generation, source_host_id FROM migrations WHERE id = $1 FOR UPDATE',
      [input.workflowId],
    );
    const record = records.rows[0];
    if (!record) throw new VmStoreError(`no migration ${input.workflowId} is recorded`, 'MigrationNotFound');
    if (record.committed_generation !== null) return { generation: Number(record.committed_generation) };
    const vm = await lockedVm(client, input.vmId);
    if (!vm) throw new VmStoreError(`VM ${input.vmId} does not exist`, 'VmNotFound');
    const held = await client.query(
      `SELECT 1 FROM leases WHERE resource = 'vm:' || $1 AND holder = $2 AND expires_at > now()`,
      [input.vmId, input.workflowId],
    );
    if (vm.operationWorkflowId !== input.workflowId || held.rowCount !== 1) {
      throw new VmStoreError(
        `VM ${vm.name} is not held by migration ${input.workflowId} (held by ${vm.operationWorkflowId ?? 'none'})`,
        'VmBusy',
      );
    }
    const sourceHostId = vm.hostId ?? record.source_host_id;
    const { generation } = await assignVmOwner(client, {
      vmId: input.vmId,
      hostId: input.targetHostId,
      token: input.targetToken,
      expectedGeneration: input.expectedGeneration,
    });
    await releaseHold(client, input);
    await client.query(
      `UPDATE vms SET state = 'running', operation_workflow_id = NULL, last_error = NULL, version = version + 1,
         updated_at = now() WHERE id = $1`,
      [input.vmId],
    );
    await client.query(
      `UPDATE migrations SET committed_generation = $2, target_host_id = $3, final_host_id = $3 WHERE id = $1`,
      [input.workflowId, generation, input.targetHostId],
    );
    await recordEvent(client, {
      kind: 'vm.migrated',
      vmId: input.vmId,
      hostId: input.targetHostId,
      workflowId: input.workflowId,
      message:
        `${vm.name} migrated from ${sourceHostId} to ${input.targetHostId} ` +
        `(ownership generation ${generation}, lease token ${input.targetToken})`,
      idempotencyKey: `${input.workflowId}:migrated`,
    });
    return { generation };
  });
}

/** The reservation goes and the lock lease lapses; the lease row stays, so its fencing token keeps growing. */
async function releaseHold(client: PoolClient, input: { vmId: string; workflowId: string }): Promise<void> {
  await client.query('DELETE FROM capacity_reservations WHERE workflow_id = $1', [input.workflowId]);
  await client.query(
    `UPDATE leases SET expires_at = now() WHERE resource = 'vm:' || $1 AND holder = $2 AND expires_at > now()`,
    [input.vmId, input.workflowId],
  );
}

/**
 * The rollback: the VM stays with `hostId`, its owner, and leaves 'migrating' for `state`; the lock and the
 * reservation go. Refused with 'OwnershipChanged' when the VM is no longer `hostId`'s (the commit happened: there is
 * nothing to roll back). Returns whether this call released the VM; a retry after success returns false.
 */
export async function releaseMigration(
  pool: Pool,
  input: { vmId: string; workflowId: string; hostId: string; state: 'running' | 'failed'; error?: string },
): Promise<boolean> {
  return inTransaction(pool, async (client) => {
    const vm = await lockedVm(client, input.vmId);
    const ours = vm?.operationWorkflowId === input.workflowId;
    const committed = await client.query(
      'SELECT 1 FROM migrations WHERE id = $1 AND committed_generation IS NOT NULL',
      [input.workflowId],
    );
    if (vm && (ours || committed.rowCount === 1) && vm.hostId !== input.hostId) {
      throw new VmStoreError(
        `VM ${vm.name} is owned by ${vm.hostId ?? 'no host'}, not ${input.hostId}; nothing rolled back`,
        'OwnershipChanged',
      );
    }
    await releaseHold(client, input);
    if (!vm || !ours) return false;
    await client.query(
      `UPDATE vms SET state = $2, operation_workflow_id = NULL, last_error = $3, version = version + 1,
         updated_at = now() WHERE id = $1`,
      [input.vmId, input.state, input.error ?? null],
    );
    await recordEvent(client, {
      kind: 'vm.migration.rolled-back',
      vmId: input.vmId,
      hostId: input.hostId,
      workflowId: input.workflowId,
      message: `${vm.name} stays on ${input.hostId} (${input.state})${input.error ? `: ${input.error}` : ''}`,
      idempotencyKey: `${input.workflowId}:released`,
    });
    return true;
  });
}
