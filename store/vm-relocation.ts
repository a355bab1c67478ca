/**
 * A failover's move of one guest off a fenced host: a new owner chosen by placement, the VM taken by the failover
 * workflow ('starting', for it to boot there), and the fenced ownership write, all in one transaction.
 */
import type { Pool, PoolClient } from 'pg';
import { placeVm, type PlacementPolicy } from '../domain/vm-placement';
import { LOCAL_STORAGE_POOL, type VmRecord } from '../domain/vm-spec';
import { recordEvent } from './events';
import { placementHost } from './host-records';
import { listHosts, liveHostToken } from './hosts';
import { inTransaction } from './transaction';
import { assignVmOwner, getVm, PLACEMENT_LOCK_KEY, VmStoreError } from './vms';

export interface RelocationResult {
  hostId: string;
  ownerToken: number;
  generation: number;
}

async function lockedVm(client: PoolClient, vmId: string): Promise<VmRecord | undefined> {
  await client.query('SELECT 1 FROM vms WHERE id = $1 FOR UPDATE', [vmId]);
  return getVm(client, vmId);
}

/**
 * Gives the VM on `fromHostId` a new host: an up host with a live lease, other than `fromHostId`, that mounts the
 * VM's pool and has room for it (placement is serialized with claims and migration reservations). The VM is held
 * by `workflowId` in 'starting' and owned by the new host under its live token, over the generation read here, so
 * a racing move is refused. A retry by the same workflow returns the placement it made. Refuses with VmBusy when
 * another workflow holds the VM, OwnershipChanged when the VM is no longer on `fromHostId`, and NoHostAvailable,
 * with each host's reason, when none can take it. A pin (spec.hostId) names the failed host, so it is not applied
 * here: whether a pinned guest restarts at all is the caller's decision.
 */
export async function relocateVm(
  pool: Pool,
  input: { vmId: string; fromHostId: string; workflowId: string; policy: PlacementPolicy },
): Promise<RelocationResult> {
  return inTransaction(pool, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1)', [PLACEMENT_LOCK_KEY]);
    const vm = await lockedVm(client, input.vmId);
    if (!vm) throw new VmStoreError(`VM ${input.vmId} does not exist`, 'VmNotFound');
    if (
      vm.operationWorkflowId === input.workflowId &&
      vm.hostId &&
      vm.hostId !== input.fromHostId &&
      vm.ownerToken !== undefined
    ) {
      return { hostId: vm.hostId, ownerToken: vm.ownerToken, generation: vm.ownerGeneration ?? 0 };
    }
    if (vm.operationWorkflowId && vm.operationWorkflowId !== input.workflowId) {
      throw new VmStoreError(
        `VM ${vm.name} is busy with workflow ${vm.operationWorkflowId}; not relocated by ${input.workflowId}`,
        'VmBusy',
      );
    }
    if (vm.hostId !== input.fromHostId) {
      throw new VmStoreError(
        `VM ${vm.name} is on ${vm.hostId ?? 'no host'}, not ${input.fromHostId}; not relocated`,
        'OwnershipChanged',
      );
    }
    // The VM's own allocation is counted only on its dead host, which is excluded: the others see it as new.
    const hosts = await listHosts(client);
    const storagePool = vm.spec.storagePool ?? LOCAL_STORAGE_POOL;
    const placement = placeVm(
      hosts.map(placementHost),
      {
        vcpus: vm.spec.vcpus,
        memoryMib: vm.spec.memoryMib,
        // A local disk is recreated on the new host; a shared pool's is already there and fills no host's disk.
        diskMib: storagePool === LOCAL_STORAGE_POOL ? vm.spec.disks.reduce((sum, d) => sum + d.sizeMib, 0) : 0,
        storagePool: storagePool,
        ...(vm.spec.placement?.region ? { region: vm.spec.placement.region } : {}),
        ...(vm.spec.placement?.zone ? { zone: vm.spec.placement.zone } : {}),
        excludeHostIds: [input.fromHostId],
      },
      input.policy,
    );
    if (!placement.ok) {
      const reasons = Object.entries(placement.reasons).map(([id, why]) => `${id}: ${why}`);
      throw new VmStoreError(
        `no host can take ${vm.name} from ${input.fromHostId} (${reasons.join('; ') || 'no hosts'})`,
        'NoHostAvailable',
      );
    }
    const token = await liveHostToken(client, placement.hostId);
    if (token === undefined) {
      throw new VmStoreError(`host ${placement.hostId} lost its lease during placement`, 'StaleFencingToken');
    }
    await client.query(
      `UPDATE vms SET state = 'starting', operation_workflow_id = $2, version = version + 1, updated_at = now()
       WHERE id = $1`,
      [input.vmId, input.workflowId],
    );
    const { generation } = await assignVmOwner(client, {
      vmId: input.vmId,
      hostId: placement.hostId,
      token,
      expectedGeneration: vm.ownerGeneration ?? 0,
    });
    await recordEvent(client, {
      kind: 'vm.relocated',
      vmId: input.vmId,
      hostId: placement.hostId,
      workflowId: input.workflowId,
      message:
        `${vm.name} relocated from ${input.fromHostId} to ${placement.hostId} by ${input.workflowId} ` +
        `(ownership generation ${generation}, lease token ${token})`,
      idempotencyKey: `${input.workflowId}:relocated:${input.vmId}`,
    });
    return { hostId: placement.hostId, ownerToken: token, generation };
  });
}
