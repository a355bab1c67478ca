/**
 * Control-side activities for hosts, VMs and inventory (ASS): placement and the fenced ownership write, the
 * per-VM operation hold, lease expiry and drift scans. They run on the control task queue.
 */
import type { Pool } from 'pg';
import { inventoryStalenessBoundMs, type NovacronConfig } from '../config/schema';
import { markDriftRepairing, scanDrift, type DriftKind } from '../store/drift';
import { recordEvent } from '../store/events';
import { markExpiredHostsDown } from '../store/hosts';
import { beginVmOperation, claimVm, deleteVmRecord, finishVmOperation } from '../store/vms';
import type { VmRecord, VmSpec, VmState } from '../domain/vm-spec';
import { permanent } from './store-failures';

export interface InventoryDeps {
  config: NovacronConfig;
  pool: Pool;
}

export interface ClaimVmPlacementInput {
  vmId: string;
  spec: VmSpec;
  workflowId: string;
}

export interface VmOperationInput {
  vmId: string;
  workflowId: string;
  state: VmState;
}

export interface FinishVmOperationInput extends VmOperationInput {
  /** The event recorded with the outcome, e.g. `vm.started`. */
  event: string;
  message: string;
  error?: string;
}

export interface DriftRepair {
  driftId: number;
  vmId: string;
  kind: DriftKind;
  action: 'start' | 'stop';
}

export interface FleetCheckResult {
  markedDown: string[];
  checkedHosts: string[];
  staleHosts: string[];
  opened: Array<{ id: number; kind: DriftKind; hostId: string; domainName: string }>;
  resolved: number;
  /** Filled only under the `repair` policy. */
  repairs: DriftRepair[];
}

export function createInventoryActivities(deps: InventoryDeps) {
  const { config, pool } = deps;
  const policy = { cpuOvercommit: config.fleet.cpuOvercommit, memoryReserveMib: config.fleet.memoryReserveMib };

  return {
    /** Retryable when no host fits or the lease moved: capacity frees up and hosts come back. */
    async claimVmPlacement(input: ClaimVmPlacementInput): Promise<{ hostId: string; ownerToken: number }> {
      const claim = await permanent(
        () => claimVm(pool, { vmId: input.vmId, spec: input.spec, workflowId: input.workflowId, policy }),
        ['NoHostAvailable', 'StaleFencingToken'],
      );
      return { hostId: claim.hostId, ownerToken: claim.ownerToken };
    },

    async beginVmOperation(input: VmOperationInput): Promise<VmRecord> {
      return permanent(() => beginVmOperation(pool, input));
    },

    async finishVmOperation(input: FinishVmOperationInput): Promise<void> {
      const released = await finishVmOperation(pool, {
        vmId: input.vmId,
        workflowId: input.workflowId,
        state: input.state,
        ...(input.error ? { error: input.error } : {}),
      });
      if (!released) return;
      const vm = await pool.query<{ host_id: string | null }>('SELECT host_id FROM vms WHERE id = $1', [input.vmId]);
      await recordEvent(pool, {
        kind: input.event,
        vmId: input.vmId,
        ...(vm.rows[0]?.host_id ? { hostId: vm.rows[0].host_id } : {}),
        workflowId: input.workflowId,
        message: input.message,
        idempotencyKey: `${input.workflowId}:${input.event}`,
      });
    },

    async deleteVmRecord(input: { vmId: string; workflowId: string; hostId?: string; name: string }): Promise<void> {
      const deleted = await deleteVmRecord(pool, input);
      if (!deleted) return;
      await recordEvent(pool, {
        kind: 'vm.deleted',
        vmId: input.vmId,
        ...(input.hostId ? { hostId: input.hostId } : {}),
        workflowId: input.workflowId,
        message: `${input.name} deleted`,
        idempotencyKey: `${input.workflowId}:vm.deleted`,
      });
    },

    /** One fleet monitor tick: expire leases, then compare inventory. Both steps are idempotent. */
    async checkFleet(_input: { tick: number }): Promise<FleetCheckResult> {
      const markedDown = await markExpiredHostsDown(pool);
      const scan = await scanDrift(pool, { stalenessBoundMs: inventoryStalenessBoundMs(config) });
      const repairs: DriftRepair[] = [];
      if (config.fleet.driftPolicy === 'repair') {
        for (const drift of scan.opened) {
          // Only state can be repaired safely: an unknown guest is never destroyed, a vanished one never invented.
          if (drift.kind !== 'state-mismatch' || !drift.vmId) continue;
          repairs.push({
            driftId: drift.id,
            vmId: drift.vmId,
            kind: drift.kind,
            action: drift.expected === 'running' ? 'start' : 'stop',
          });
        }
      }
      return {
        markedDown,
        checkedHosts: scan.checkedHosts,
        staleHosts: scan.staleHosts,
        opened: scan.opened.map((d) => ({ id: d.id, kind: d.kind, hostId: d.hostId, domainName: d.domainName })),
        resolved: scan.resolved,
        repairs,
      };
    },

    async markDriftRepairing(input: { driftId: number; workflowId: string }): Promise<void> {
      await markDriftRepairing(pool, input);
    },
  };
}

export type InventoryActivities = ReturnType<typeof createInventoryActivities>;
