/**
 * Control-side activities of live migration, over the store: open the migration's record, choose and check the
 * target, hold the VM and a migration slot on both hosts, record the plan, progress and escalations, and end with
 * the fenced ownership commit or the release back to the source. They run on the control task queue; each is keyed
 * by the workflow id, so a retry changes nothing twice.
 */
import { ApplicationFailure } from '@temporalio/activity';
import type { Pool } from 'pg';
import type { NovacronConfig } from '../config/schema';
import type {
  EscalationKind,
  MigrationEscalation,
  MigrationOutcome,
  MigrationPlan,
  MigrationPolicy,
  MigrationProgress,
  MigrationResult,
} from '../domain/migration';
import { placeVm, rejectReason } from '../domain/vm-placement';
import { LOCAL_STORAGE_POOL, type VmRecord } from '../domain/vm-spec';
import { placementHost } from '../store/host-records';
import { getHost, listHosts, liveHostToken, type HostRecord } from '../store/hosts';
import * as records from '../store/migration-records';
import { getVm } from '../store/vms';
import { permanent } from './store-failures';

/** What observability/metrics.ts's createMigrationMetrics gives; optional, so tests and tools can leave it out. */
export interface MigrationMetricsRecorder {
  observeResult(result: MigrationResult): void;
  countEscalation(kind: EscalationKind): void;
}

export interface MigrationControlDeps {
  config: NovacronConfig;
  pool: Pool;
  migrationMetrics?: MigrationMetricsRecorder;
}

export interface MigrationVm {
  id: string;
  name: string;
  memoryMib: number;
  storagePool: string;
}

export interface MigrationOpening {
  vm: MigrationVm;
  sourceHostId: string;
  /** config.migration, read once: the workflow cannot read config itself. */
  settings: { pollIntervalMs: number; dirtyRateSeconds: number };
}

export interface MigrationTargetHost {
  id: string;
  libvirtUri: string;
  migrationAddress: string;
  peerLibvirtUri?: string;
  /** The target's DWCP receiver, which the link probe measures against. */
  dwcpEndpoint: string;
}

export interface MigrationHosts {
  target: MigrationTargetHost;
  /** Source CPUs not committed to guests, for the plan's multifd channels. */
  sourceSpareCpus?: number;
}

export interface FinishMigrationInput {
  workflowId: string;
  outcome: MigrationOutcome;
  finalHostId: string;
  result?: MigrationResult;
  error?: string;
}

/** Rows written before VM specs named a pool hold their disks in the host's own image root. */
function storagePoolOf(vm: VmRecord): string {
  return vm.spec.storagePool ?? LOCAL_STORAGE_POOL;
}

function targetHost(host: HostRecord): MigrationTargetHost {
  if (!host.dwcpEndpoint) {
    throw ApplicationFailure.nonRetryable(
      `target host ${host.id} has no DWCP receiver registered, so the link to it cannot be probed`,
      'TargetHostUnavailable',
    );
  }
  return {
    id: host.id,
    libvirtUri: host.libvirtUri,
    migrationAddress: host.migrationAddress,
    ...(host.peerLibvirtUri ? { peerLibvirtUri: host.peerLibvirtUri } : {}),
    dwcpEndpoint: host.dwcpEndpoint,
  };
}

export function createMigrationControlActivities(deps: MigrationControlDeps) {
  const { config, pool } = deps;
  const placementPolicy = {
    cpuOvercommit: config.fleet.cpuOvercommit,
    memoryReserveMib: config.fleet.memoryReserveMib,
  };

  const runningVm = async (vmId: string) => {
    const vm = await getVm(pool, vmId);
    if (!vm) throw ApplicationFailure.nonRetryable(`VM ${vmId} does not exist`, 'VmNotFound');
    return vm;
  };

  return {
    /** The VM must run on a host; its migration record is opened before anything else happens. */
    async openMigration(input: {
      workflowId: string;
      vmId: string;
      targetHostId?: string;
      policy: MigrationPolicy;
    }): Promise<MigrationOpening> {
      const vm = await runningVm(input.vmId);
      const ours = vm.operationWorkflowId === input.workflowId;
      if (!vm.hostId || (vm.state !== 'running' && !(ours && vm.state === 'migrating'))) {
        throw ApplicationFailure.nonRetryable(
          `VM ${vm.name} is ${vm.state}${vm.hostId ? ` on ${vm.hostId}` : ' and on no host'}; only a running VM migrates`,
          'VmNotRunning',
        );
      }
      const sourceHostId = vm.hostId;
      await permanent(() =>
        records.createMigrationRecord(pool, {
          workflowId: input.workflowId,
          vmId: vm.id,
          sourceHostId,
          ...(input.targetHostId ? { targetHostId: input.targetHostId } : {}),
          policy: input.policy,
        }),
      );
      return {
        vm: { id: vm.id, name: vm.name, memoryMib: vm.spec.memoryMib, storagePool: storagePoolOf(vm) },
        sourceHostId,
        settings: {
          pollIntervalMs: config.migration.pollIntervalMs,
          dirtyRateSeconds: config.migration.dirtyRateSeconds,
        },
      };
    },

    /**
     * The requested target, checked, or placement's choice among the other hosts that mount the VM's pool. Only a
     * VM on a shared pool migrates today: local-disk migration follows in a later issue.
     */
    async chooseMigrationTarget(input: {
      workflowId: string;
      vmId: string;
      sourceHostId: string;
      targetHostId?: string;
    }): Promise<MigrationHosts> {
      const vm = await runningVm(input.vmId);
      if (input.targetHostId === input.sourceHostId) {
        throw ApplicationFailure.nonRetryable(
          `VM ${vm.name} already runs on ${input.sourceHostId}: the target must be another host`,
          'InvalidMigrationTarget',
        );
      }
      const storagePool = storagePoolOf(vm);
      if (storagePool === LOCAL_STORAGE_POOL) {
        throw ApplicationFailure.nonRetryable(
          `VM ${vm.name} has its disks on ${input.sourceHostId}'s local storage; only VMs on a shared storage pool ` +
            'migrate live (local-disk migration follows in a later issue)',
          'LocalStorageNotMigratable',
        );
      }
      const hosts = await listHosts(pool);
      const source = hosts.find((h) => h.id === input.sourceHostId);
      const sourceSpareCpus = source ? Math.max(0, source.cpus - source.allocated.vcpus) : undefined;
      const request = {
        vcpus: vm.spec.vcpus,
        memoryMib: vm.spec.memoryMib,
        // Shared-pool disks stay where they are: the target's own disk does not fill.
        diskMib: 0,
        storagePool,
        excludeHostIds: [input.sourceHostId],
      };
      const spare = sourceSpareCpus !== undefined ? { sourceSpareCpus } : {};
      if (input.targetHostId === undefined) {
        const placement = placeVm(hosts.map(placementHost), request, placementPolicy);
        if (!placement.ok) {
          const reasons = Object.entries(placement.reasons)
            .filter(([id]) => id !== input.sourceHostId)
            .map(([id, why]) => `${id}: ${why}`);
          throw ApplicationFailure.nonRetryable(
            `no host can take ${vm.name} (${reasons.join('; ') || 'no other hosts'})`,
            'NoMigrationTarget',
          );
        }
        return { target: targetHost(hosts.find((h) => h.id === placement.hostId)!), ...spare };
      }
      const target = await getHost(pool, input.targetHostId);
      if (!target || target.state !== 'up' || !target.lease?.alive) {
        const why = !target ? 'does not exist' : target.state !== 'up' ? `is ${target.state}` : 'has no live lease';
        throw ApplicationFailure.nonRetryable(`target host ${input.targetHostId} ${why}`, 'TargetHostUnavailable');
      }
      if (!Object.hasOwn(target.storagePools, storagePool)) {
        throw ApplicationFailure.nonRetryable(
          `target host ${target.id} does not mount storage pool ${storagePool}, where ${vm.name}'s disks are`,
          'TargetLacksStoragePool',
        );
      }
      const reason = rejectReason(placementHost(target), request, placementPolicy);
      if (reason) {
        throw ApplicationFailure.nonRetryable(
          `target host ${target.id} cannot take ${vm.name}: ${reason}`,
          'TargetLacksCapacity',
        );
      }
      return { target: targetHost(target), ...spare };
    },

    async recordMigrationPlan(input: { workflowId: string; targetHostId: string; plan: MigrationPlan }): Promise<void> {
      await permanent(() => records.recordMigrationPlan(pool, input));
    },

    /** The VM moves to `migrating`, held by this workflow, over the ownership generation the commit must match. */
    async lockVmForMigration(input: {
      vmId: string;
      workflowId: string;
      targetHostId: string;
    }): Promise<{ generation: number }> {
      const locked = await permanent(() => records.lockVmForMigration(pool, input));
      return { generation: locked.generation };
    },

    /** A slot under both hosts' limits, or the number of migrations ahead of this one. */
    async acquireMigrationSlot(input: {
      workflowId: string;
      sourceHostId: string;
      targetHostId: string;
    }): Promise<{ acquired: boolean; waitingBehind: number }> {
      return permanent(() =>
        records.acquireMigrationSlot(pool, {
          ...input,
          maxOutgoing: config.migration.maxOutgoingPerHost,
          maxIncoming: config.migration.maxIncomingPerHost,
        }),
      );
    },

    async updateMigrationProgress(input: { workflowId: string; progress: MigrationProgress }): Promise<void> {
      await permanent(() => records.updateMigrationProgress(pool, input));
    },

    async recordMigrationEscalation(input: { workflowId: string; escalation: MigrationEscalation }): Promise<void> {
      const recorded = await permanent(() => records.recordMigrationEscalation(pool, input));
      if (recorded) deps.migrationMetrics?.countEscalation(input.escalation.kind);
    },

    /**
     * The fenced ownership write: the target's live lease token, over the generation the lock saw. A target whose
     * lease lapsed is retried (its agent renews it); a VM whose ownership moved meanwhile is not.
     */
    async commitMigration(input: {
      vmId: string;
      workflowId: string;
      targetHostId: string;
      expectedGeneration: number;
    }): Promise<{ generation: number; ownerToken: number }> {
      const targetToken = await liveHostToken(pool, input.targetHostId);
      if (targetToken === undefined) {
        throw ApplicationFailure.retryable(
          `target host ${input.targetHostId} has no live lease; the commit waits for its agent`,
          'StaleFencingToken',
        );
      }
      const committed = await permanent(
        () => records.commitMigration(pool, { ...input, targetToken }),
        ['StaleFencingToken'],
      );
      return { generation: committed.generation, ownerToken: targetToken };
    },

    /** Back to the source: the VM leaves `migrating` and its slot is freed. */
    async releaseMigration(input: {
      vmId: string;
      workflowId: string;
      hostId: string;
      state: 'running' | 'failed';
      error?: string;
    }): Promise<void> {
      await permanent(() => records.releaseMigration(pool, input));
    },

    async finishMigration(input: FinishMigrationInput): Promise<void> {
      const finished = await permanent(() => records.finishMigrationRecord(pool, input));
      if (finished && input.result) deps.migrationMetrics?.observeResult(input.result);
    },
  };
}

export type MigrationControlActivities = ReturnType<typeof createMigrationControlActivities>;
