/**
 * The control side of host liveness and inventory sync (hostMonitor): one long-running workflow that, every tick,
 * marks hosts whose lease expired as down, starts a failoverHost for each suspect unless a storm withholds them,
 * and compares the agents' inventory reports with the store, opening drift rows and, under the `repair` policy,
 * starting a vmStart or vmStop to converge a state mismatch.
 *
 * A loop workflow rather than a Temporal Schedule: the tick is about a second, and a Schedule would start a new
 * workflow execution for each one (tens of thousands a day in visibility, each paying a workflow start). One
 * execution with a fixed id is started idempotently by every control worker, its status is a query away, and
 * continueAsNew keeps its history short.
 */
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import {
  continueAsNew,
  defineQuery,
  ParentClosePolicy,
  proxyActivities,
  setHandler,
  sleep,
  startChild,
  WorkflowIdReusePolicy,
} from '@temporalio/workflow';
import type { FailoverControlActivities } from '../activities/failover-control-activities';
import type { FleetCheckResult, InventoryActivities } from '../activities/inventory-activities';
import { failoverWorkflowId, type FailoverHostInput } from '../domain/failover';

export interface FleetMonitorInput {
  intervalMs: number;
  /** Ticks per run before continueAsNew. */
  ticksPerRun?: number;
  /** Carried across continueAsNew. */
  totals?: FleetMonitorTotals;
}

export interface FleetMonitorTotals {
  ticks: number;
  hostsMarkedDown: number;
  driftOpened: number;
  repairsStarted: number;
  failoversStarted: number;
  /** Ticks on which suspects existed but failover was withheld: a storm, or failover.enabled false. */
  failoverWithheldTicks: number;
}

export interface FleetStatus {
  totals: FleetMonitorTotals;
  last?: FleetCheckResult & { at: string };
}

export const fleetStatusQuery = defineQuery<FleetStatus>('fleetStatus');

const DEFAULT_TICKS_PER_RUN = 500;

export async function fleetMonitor(input: FleetMonitorInput): Promise<void> {
  const status: FleetStatus = {
    totals: {
      ticks: 0,
      hostsMarkedDown: 0,
      driftOpened: 0,
      repairsStarted: 0,
      failoversStarted: 0,
      failoverWithheldTicks: 0,
      ...input.totals,
    },
  };
  setHandler(fleetStatusQuery, () => status);
  const { checkFleet, markDriftRepairing } = proxyActivities<InventoryActivities>({
    startToCloseTimeout: '30 seconds',
    retry: { initialInterval: '200 milliseconds', maximumInterval: '5 seconds' },
  });
  const { claimFailovers } = proxyActivities<FailoverControlActivities>({
    startToCloseTimeout: '30 seconds',
    retry: { initialInterval: '200 milliseconds', maximumInterval: '5 seconds' },
  });
  // Started in this run; a failover started before a continueAsNew is refused by its id, which is harmless.
  const failoversStarted = new Set<string>();
  const startFailover = async (failover: FailoverHostInput) => {
    const workflowId = failoverWorkflowId(failover);
    if (failoversStarted.has(workflowId)) return;
    failoversStarted.add(workflowId);
    try {
      await startChild('failoverHost', {
        workflowId,
        args: [failover],
        parentClosePolicy: ParentClosePolicy.ABANDON,
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
      });
      status.totals.failoversStarted++;
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    }
  };

  for (let i = 0; i < (input.ticksPerRun ?? DEFAULT_TICKS_PER_RUN); i++) {
    const result = await checkFleet({ tick: status.totals.ticks });
    status.totals.ticks++;
    status.totals.hostsMarkedDown += result.markedDown.length;
    status.totals.driftOpened += result.opened.length;
    status.last = { ...result, at: new Date().toISOString() };
    const claims = await claimFailovers({ tick: status.totals.ticks });
    if (claims.withheld) status.totals.failoverWithheldTicks++;
    for (const failover of claims.start) await startFailover(failover);
    for (const repair of result.repairs) {
      const workflowId = `drift-repair-${repair.driftId}`;
      await startChild(repair.action === 'start' ? 'vmStart' : 'vmStop', {
        workflowId,
        args: [repair.action === 'start' ? { vmId: repair.vmId } : { vmId: repair.vmId, force: true }],
        parentClosePolicy: ParentClosePolicy.ABANDON,
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
      });
      await markDriftRepairing({ driftId: repair.driftId, workflowId });
      status.totals.repairsStarted++;
    }
    await sleep(input.intervalMs);
  }
  await continueAsNew<typeof fleetMonitor>({ ...input, totals: status.totals });
}
