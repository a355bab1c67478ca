import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  defineQuery,
  isCancellation,
  proxyActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { ClusterInitActivities, ComponentCheckResult } from '../activities/cluster-init-activities';
import {
  BOOT_PHASES,
  ComponentGraphError,
  planBoot,
  type BootPhase,
  type ComponentRetryPolicy,
} from '../domain/component-graph';
import type { InitializeClusterInput } from '../domain/cluster-init';
import { CLUSTER_COMPONENTS, type ComponentCheckName } from './cluster-components';

export const COMPONENT_STATUSES = ['pending', 'running', 'ok', 'failed', 'skipped', 'cancelled'] as const;
export type ComponentStatus = (typeof COMPONENT_STATUSES)[number];

export interface ComponentReport {
  name: string;
  phase: BootPhase;
  level: number;
  critical: boolean;
  status: ComponentStatus;
  attempts: number;
  /** Workflow time from the first attempt to the outcome, retries included. */
  durationMs: number;
  /** Time spent in the successful check itself. */
  checkMs?: number;
  detail?: ComponentCheckResult['detail'];
  error?: string;
}

export type BootStatus = 'running' | 'ready' | 'degraded' | 'failed';

export interface BootReport {
  workflowId: string;
  nodeId: string;
  status: BootStatus;
  startedAt: string;
  completedAt?: string;
  totalMs?: number;
  phases: Array<{ phase: BootPhase; levels: number; durationMs?: number }>;
  components: ComponentReport[];
}

export const bootReportQuery = defineQuery<BootReport>('bootReport');

function failureMessage(err: unknown): string {
  if (err instanceof ActivityFailure && err.cause) return err.cause.message;
  return err instanceof Error ? err.message : String(err);
}

function attemptsFromFailure(err: unknown, maximumAttempts: number): number {
  // A non-retryable failure stops early; otherwise the activity ran every attempt the policy allowed.
  if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure && err.cause.nonRetryable) return 1;
  return maximumAttempts;
}

/**
 * Boots the cluster: four phases, each a sequence of topological levels whose components are checked in parallel.
 * A critical failure cancels the rest and fails the workflow with the report; an optional failure degrades it.
 */
export async function initializeCluster(input: InitializeClusterInput): Promise<BootReport> {
  const info = workflowInfo();
  const disabled = new Set(input.disabledComponents ?? []);
  let plan;
  try {
    plan = planBoot(CLUSTER_COMPONENTS.filter((c) => !disabled.has(c.name)));
  } catch (err) {
    if (err instanceof ComponentGraphError) throw ApplicationFailure.nonRetryable(err.message, 'ComponentGraphError');
    throw err;
  }

  const startedMs = Date.now();
  const report: BootReport = {
    workflowId: info.workflowId,
    nodeId: input.nodeId,
    status: 'running',
    startedAt: new Date(startedMs).toISOString(),
    phases: plan.phases.map((p) => ({ phase: p.phase, levels: p.levels.length })),
    components: plan.components.map((c) => ({
      name: c.name,
      phase: c.phase,
      level: c.level,
      critical: c.critical,
      status: 'pending',
      attempts: 0,
      durationMs: 0,
    })),
  };
  setHandler(bootReportQuery, () => report);
  const { recordClusterBoot } = proxyActivities<ClusterInitActivities>({
    startToCloseTimeout: input.componentTimeoutMs,
    retry: { maximumAttempts: 10, initialInterval: 200, backoffCoefficient: 2, maximumInterval: 5000 },
  });
  // Recorded first, so that /ready reports a boot in progress rather than an older boot's outcome.
  await recordClusterBoot({ workflowId: info.workflowId, nodeId: input.nodeId, report });
  const entry = (name: string): ComponentReport => report.components.find((c) => c.name === name)!;

  const checkWith = (retry: ComponentRetryPolicy) =>
    proxyActivities<ClusterInitActivities>({
      startToCloseTimeout: input.componentTimeoutMs,
      heartbeatTimeout: Math.min(input.componentTimeoutMs, 10_000),
      retry: {
        maximumAttempts: retry.maximumAttempts,
        initialInterval: retry.initialIntervalMs,
        backoffCoefficient: retry.backoffCoefficient,
        maximumInterval: retry.maximumIntervalMs,
      },
    });

  let criticalFailure: { component: string; message: string } | undefined;

  const runComponent = async (name: string, check: ComponentCheckName, retry: ComponentRetryPolicy) => {
    const component = entry(name);
    const deps = plan.components.find((c) => c.name === name)!.dependsOn;
    const unmet = deps.find((dep) => entry(dep).status !== 'ok');
    if (unmet) {
      component.status = 'skipped';
      component.error = `dependency ${unmet} is ${entry(unmet).status}`;
      if (component.critical) criticalFailure ??= { component: name, message: component.error };
      return;
    }
    const began = Date.now();
    component.status = 'running';
    try {
      const result = await checkWith(retry)[check]({ workflowId: info.workflowId, component: name });
      component.status = 'ok';
      component.attempts = result.attempt;
      component.checkMs = result.durationMs;
      component.detail = result.detail;
    } catch (err) {
      if (isCancellation(err)) {
        component.status = 'cancelled';
      } else {
        component.status = 'failed';
        component.error = failureMessage(err);
        component.attempts = attemptsFromFailure(err, retry.maximumAttempts);
        if (component.critical) criticalFailure ??= { component: name, message: component.error };
      }
    } finally {
      component.durationMs = Date.now() - began;
    }
  };

  for (const phase of plan.phases) {
    const phaseStarted = Date.now();
    for (const level of phase.levels) {
      try {
        await CancellationScope.cancellable(async () => {
          const scope = CancellationScope.current();
          const run = async (c: (typeof level)[number]) => {
            await runComponent(c.name, c.check, { ...input.retry, ...c.retry });
            // Fail fast: siblings still running in this level are cancelled as soon as a critical one fails.
            if (criticalFailure) scope.cancel();
          };
          if (input.execution === 'sequential') {
            for (const c of level) if (!criticalFailure) await run(c);
          } else {
            await Promise.all(level.map(run));
          }
        });
      } catch (err) {
        // Only our own fail-fast cancellation is expected here; anything else (a cancel of the workflow) propagates.
        if (!(isCancellation(err) && criticalFailure)) throw err;
      }
      if (criticalFailure) break;
    }
    report.phases.find((p) => p.phase === phase.phase)!.durationMs = Date.now() - phaseStarted;
    if (criticalFailure) break;
  }

  const finishedMs = Date.now();
  report.completedAt = new Date(finishedMs).toISOString();
  report.totalMs = finishedMs - startedMs;
  if (criticalFailure) {
    report.status = 'failed';
    for (const c of report.components) if (c.status === 'pending') c.status = 'skipped';
  } else {
    report.status = report.components.every((c) => c.status === 'ok') ? 'ready' : 'degraded';
  }

  await recordClusterBoot({ workflowId: info.workflowId, nodeId: input.nodeId, report });

  if (criticalFailure) {
    throw ApplicationFailure.nonRetryable(
      `critical component ${criticalFailure.component} failed: ${criticalFailure.message}`,
      'CriticalComponentFailed',
      report,
    );
  }
  return report;
}

export { BOOT_PHASES };
