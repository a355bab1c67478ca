/**
 * VM records. A VM is owned by exactly one host, written together with that host's fencing token; a lifecycle
 * workflow holds the VM (operation_workflow_id) from its first step to its last, so operations never interleave.
 */
import type { Pool, PoolClient } from 'pg';
import { placeVm, type PlacementPolicy, type PlacementResult } from '../domain/vm-placement';
import { LOCAL_STORAGE_POOL, type VmRecord, type VmSpec, type VmState } from '../domain/vm-spec';
import { recordEvent } from './events';
import { placementHost } from './host-records';
import { listHosts, liveHostToken } from './hosts';

// Serializes placement and capacity reservations, so that each sees the capacity the previous ones took.
export const PLACEMENT_LOCK_KEY = 746_927_004;

export type VmStoreErrorCode =
  | 'VmNotFound'
  | 'VmBusy'
  | 'VmNameTaken'
  | 'VmNotRunning'
  | 'NoHostAvailable'
  | 'StaleFencingToken'
  | 'OwnershipChanged'
  | 'MigrationNotFound'
  | 'MigrationFinished';

export class VmStoreError extends Error {
  constructor(
    message: string,
    readonly code: VmStoreErrorCode,
  ) {
    super(message);
    this.name = code;
  }
}

interface VmRow {
  id: string;
  name: string;
  host_id: string | null;
  spec: VmSpec;
  state: VmState;
  owner_token: string | null;
  owner_generation: string;
  operation_workflow_id: string | null;
  last_error: string | null;
  created_at: Date;
  updated_at: Date;
}

function toVm(row: VmRow): VmRecord {
  return {
    id: row.id,
    name: row.name,
    ...(row.host_id ? { hostId: row.host_id } : {}),
    spec: row.spec,
    state: row.state,
    ...(row.owner_token ? { ownerToken: Number(row.owner_token) } : {}),
    ownerGeneration: Number(row.owner_generation),
    ...(row.operation_workflow_id ? { operationWorkflowId: row.operation_workflow_id } : {}),
    ...(row.last_error ? { lastError: row.last_error } : {}),
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

export async function getVm(client: Pool | PoolClient, vmId: string): Promise<VmRecord | undefined> {
  const result = await client.query<VmRow>('SELECT * FROM vms WHERE id = $1', [vmId]);
  const row = result.rows[0];
  return row ? toVm(row) : undefined;
}

export async function getVmByName(pool: Pool, name: string): Promise<VmRecord | undefined> {
  const result = await pool.query<VmRow>('SELECT * FROM vms WHERE name = $1', [name]);
  const row = result.rows[0];
  return row ? toVm(row) : undefined;
}

export async function listVms(pool: Pool, input: { hostId?: string; state?: string } = {}): Promise<VmRecord[]> {
  const result = await pool.query<VmRow>(
    `SELECT * FROM vms WHERE ($1::text IS NULL OR host_id = $1) AND ($2::text IS NULL OR state = $2)
     ORDER BY created_at, name`,
    [input.hostId ?? null, input.state ?? null],
  );
  return result.rows.map(toVm);
}

export interface ClaimVmInput {
  vmId: string;
  spec: VmSpec;
  workflowId: string;
  policy: PlacementPolicy;
}

export interface ClaimVmResult {
  hostId: string;
  ownerToken: number;
  /** False when a retry found the row its first attempt wrote. */
  created: boolean;
  placement?: PlacementResult;
}

/**
 * Places the VM and writes its row, owned by the chosen host under that host's live fencing token. Idempotent by
 * VM id: a retried claim returns the row the first attempt wrote.
 */
export async function claimVm(pool: Pool, input: ClaimVmInput): Promise<ClaimVmResult> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT pg_advisory_xact_lock($1)', [PLACEMENT_LOCK_KEY]);
    const existing = await getVm(client, input.vmId);
    if (existing?.hostId && existing.ownerToken !== undefined) {
      await client.query('COMMIT');
      return { hostId: existing.hostId, ownerToken: existing.ownerToken, created: false };
    }
    const sameName = await client.query<{ id: string }>('SELECT id FROM vms WHERE name = $1', [input.spec.name]);
    if (sameName.rows[0] && sameName.rows[0].id !== input.vmId) {
      throw new VmStoreError(`a VM named ${input.spec.name} already exists (${sameName.rows[0].id})`, 'VmNameTaken');
    }
    const hosts = await listHosts(client);
    const placement = placeVm(
      hosts.map(placementHost),
      {
        vcpus: input.spec.vcpus,
        memoryMib: input.spec.memoryMib,
        // A shared pool's disks do not fill the host's own disk (listHosts counts them the same way).
        diskMib:
          input.spec.storagePool === LOCAL_STORAGE_POOL ? input.spec.disks.reduce((sum, d) => sum + d.sizeMib, 0) : 0,
        storagePool: input.spec.storagePool,
        ...(input.spec.hostId ? { hostId: input.spec.hostId } : {}),
        ...(input.spec.placement?.region ? { region: input.spec.placement.region } : {}),
        ...(input.spec.placement?.zone ? { zone: input.spec.placement.zone } : {}),
      },
      input.policy,
    );
    if (!placement.ok) {
      const reasons = Object.entries(placement.reasons).map(([id, why]) => `${id}: ${why}`);
      throw new VmStoreError(
        `no host can take ${input.spec.name} (${reasons.join('; ') || 'no hosts'})`,
        'NoHostAvailable',
      );
    }
    const token = await liveHostToken(client, placement.hostId);
    if (token === undefined) {
      throw new VmStoreError(`host ${placement.hostId} lost its lease during placement`, 'StaleFencingToken');
    }
    await client.query(
      `INSERT INTO vms (id, name, spec, state, operation_workflow_id) VALUES ($1, $2, $3, 'creating', $4)
       ON CONFLICT (id) DO NOTHING`,
      [input.vmId, input.spec.name, JSON.stringify(input.spec), input.workflowId],
    );
    await assignVmOwner(client, { vmId: input.vmId, hostId: placement.hostId, token });
    await recordEvent(client, {
      kind: 'vm.placed',
      vmId: input.vmId,
      hostId: placement.hostId,
      workflowId: input.workflowId,
      message: `${input.spec.name} placed on ${placement.hostId} (lease token ${token})`,
      idempotencyKey: `${input.workflowId}:placed`,
    });
    await client.query('COMMIT');
    return { hostId: placement.hostId, ownerToken: token, created: true, placement };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/**
 * The fenced ownership write. `token` must be the host's live lease token: a host that lost its lease, or a zombie
 * incarnation of it, cannot take or keep the VM. Tokens of different hosts are not compared (each host's only
 * grows on its own); a racing writer is caught by `expectedGeneration`, the generation it read, which every write
 * moves on by one. The lease row is share-locked so that no new incarnation takes it before this write commits.
 */
export async function assignVmOwner(
  client: Pool | PoolClient,
  input: { vmId: string; hostId: string; token: number; expectedGeneration?: number },
): Promise<{ generation: number }> {
  const result = await client.query<{ owner_generation: string }>(
    `UPDATE vms SET host_id = $2, owner_token = $3, owner_generation = owner_generation + 1, version = version + 1,
       updated_at = now()
     WHERE id = $1 AND ($4::bigint IS NULL OR owner_generation = $4)
       AND EXISTS (SELECT 1 FROM leases WHERE resource = 'host:' || $2 AND fencing_token = $3 AND expires_at > now()
                   FOR SHARE)
     RETURNING owner_generation`,
    [input.vmId, input.hostId, input.token, input.expectedGeneration ?? null],
  );
  const row = result.rows[0];
  if (row) return { generation: Number(row.owner_generation) };
  const current = await getVm(client, input.vmId);
  if (!current) throw new VmStoreError(`VM ${input.vmId} does not exist`, 'VmNotFound');
  if ((await liveHostToken(client, input.hostId)) !== input.token) {
    throw new VmStoreError(
      `fencing token ${input.token} of host ${input.hostId} is stale or its lease expired; ownership not written`,
      'StaleFencingToken',
    );
  }
  throw new VmStoreError(
    `VM ${current.name} changed owner (generation ${current.ownerGeneration ?? 0}, expected ` +
      `${input.expectedGeneration ?? 'any'}; now on ${current.hostId ?? 'no host'}); ownership not written`,
    'OwnershipChanged',
  );
}

/** Takes the VM for one lifecycle workflow and moves it into `state`; a retry of the same workflow passes. */
export async function beginVmOperation(
  pool: Pool,
  input: { vmId: string; workflowId: string; state: VmState },
): Promise<VmRecord> {
  const result = await pool.query<VmRow>(
    `UPDATE vms SET state = $3, operation_workflow_id = $2, version = version + 1, updated_at = now()
     WHERE id = $1 AND (operation_workflow_id IS NULL OR operation_workflow_id = $2) RETURNING *`,
    [input.vmId, input.workflowId, input.state],
  );
  const row = result.rows[0];
  if (row) return toVm(row);
  const current = await getVm(pool, input.vmId);
  if (!current) throw new VmStoreError(`VM ${input.vmId} does not exist`, 'VmNotFound');
  throw new VmStoreError(
    `VM ${current.name} is busy with workflow ${current.operationWorkflowId ?? 'unknown'}`,
    'VmBusy',
  );
}

/** Releases the VM with its outcome. Only the holding workflow can, so a retry after success changes nothing. */
export async function finishVmOperation(
  pool: Pool,
  input: { vmId: string; workflowId: string; state: VmState; error?: string },
): Promise<boolean> {
  const result = await pool.query(
    `UPDATE vms SET state = $3, operation_workflow_id = NULL, last_error = $4, version = version + 1,
       updated_at = now()
     WHERE id = $1 AND operation_workflow_id = $2`,
    [input.vmId, input.workflowId, input.state, input.error ?? null],
  );
  return result.rowCount === 1;
}

export async function deleteVmRecord(pool: Pool, input: { vmId: string; workflowId: string }): Promise<boolean> {
  const result = await pool.query('DELETE FROM vms WHERE id = $1 AND operation_workflow_id = $2', [
    input.vmId,
    input.workflowId,
  ]);
  return result.rowCount === 1;
}
