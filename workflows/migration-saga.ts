/**
 * The state a migrateVm run carries, and its two endings: the commit that makes the target the VM's owner, and the
 * settlement after a cancel, an abort or a failure, which looks at both hosts and leaves the VM running on exactly
 * one of them. Both run in non-cancellable scopes, so a second cancel cannot stop them half-way.
 */
import { ApplicationFailure, isCancellation, log, sleep } from '@temporalio/workflow';
import type { MigrateDomainResult, MigrationDomainPresence } from '../activities/migration-activities';
import type { MigrationHosts, MigrationOpening } from '../activities/migration-control-activities';
import type {
  MigrationOutcome,
  MigrationPhase,
  MigrationPlan,
  MigrationPolicy,
  MigrationProgress,
  MigrationResult,
} from '../domain/migration';
import { failureText } from '../domain/workflow-steps';
import { migrationControl, migrationHost } from './migration-activities-proxy';

export interface MigrationRun {
  workflowId: string;
  vmId: string;
  startedAtMs: number;
  policy: MigrationPolicy;
  progress: MigrationProgress;
  opening?: MigrationOpening;
  hosts?: MigrationHosts;
  plan?: MigrationPlan;
  /** The ownership generation the lock saw; the commit must match it. */
  generation?: number;
  /** Set before the activity that may take it is scheduled, so a cancel during that activity still releases. */
  lockRequested: boolean;
  jobStarted: boolean;
  /** The record has its outcome already (a refusal): nothing is left to settle. */
  finished: boolean;
  /** A `cancel` signal, with its reason; Temporal cancellation leaves this unset. */
  cancelRequest?: { reason: string };
}

/** How long the settlement waits for a job it aborted to end before it judges the hosts anyway. */
const ABORT_WAIT_ROUNDS = 30;
const ABORT_WAIT_MS = 1000;

export function progressSnapshot(run: MigrationRun): MigrationProgress {
  return { ...run.progress, escalations: [...run.progress.escalations], elapsedMs: Date.now() - run.startedAtMs };
}

export async function persistProgress(run: MigrationRun): Promise<void> {
  await migrationControl().updateMigrationProgress({ workflowId: run.workflowId, progress: progressSnapshot(run) });
}

/** Changes the phase and stores it in the migrations row: phases change a handful of times per migration. */
export async function enterPhase(run: MigrationRun, phase: MigrationPhase): Promise<void> {
  if (run.progress.phase === phase) return;
  run.progress.phase = phase;
  await persistProgress(run);
}

export function resultOf(
  run: MigrationRun,
  outcome: MigrationOutcome,
  finalHostId: string,
  extra: Pick<MigrationResult, 'measured' | 'reason'> = {},
): MigrationResult {
  return {
    workflowId: run.workflowId,
    vmId: run.vmId,
    outcome,
    finalHostId,
    sourceHostId: run.progress.sourceHostId,
    ...(run.hosts ? { targetHostId: run.hosts.target.id } : {}),
    ...(run.plan ? { plan: run.plan } : {}),
    escalations: [...run.progress.escalations],
    ...(extra.measured ? { measured: extra.measured } : {}),
    workflowMs: Date.now() - run.startedAtMs,
    ...(extra.reason ? { reason: extra.reason } : {}),
  };
}

function domainRef(run: MigrationRun) {
  return { vmId: run.vmId, name: run.opening!.vm.name };
}

/** Where the VM is, on both hosts at once; the target's answer carries libvirt's completed-job figures. */
export async function inspectBoth(
  run: MigrationRun,
): Promise<{ source: MigrationDomainPresence; target: MigrationDomainPresence }> {
  const ref = domainRef(run);
  const [source, target] = await Promise.all([
    migrationHost(run.opening!.sourceHostId).inspectMigrationDomain(ref),
    migrationHost(run.hosts!.target.id).inspectMigrationDomain({ ...ref, completedJob: true }),
  ]);
  return { source, target };
}

/** The target holds the running VM and the source no longer does: the migration happened, whatever else did. */
export function runsOnTargetOnly(hosts: { source: MigrationDomainPresence; target: MigrationDomainPresence }): boolean {
  return hosts.target.active && !hosts.source.active;
}

function measuredFigures(completed: MigrationDomainPresence['completedJob'], job: MigrateDomainResult | undefined) {
  if (!completed) return undefined;
  return {
    totalMs: completed.timeElapsedMs,
    downtimeMs: completed.downtimeMs ?? 0,
    bytes: completed.dataProcessedBytes,
    passes: completed.pass,
    jobMs: job?.jobMs ?? completed.timeElapsedMs,
  };
}

/**
 * Makes the target the VM's owner under its live fencing token, over the generation the lock saw, then removes
 * what the source still defines (never the disks: they are the shared pool's) and records the outcome.
 */
export async function commitToTarget(
  run: MigrationRun,
  input: { target: MigrationDomainPresence; job?: MigrateDomainResult; reason?: string },
): Promise<MigrationResult> {
  const control = migrationControl();
  const targetHostId = run.hosts!.target.id;
  await enterPhase(run, 'committing');
  await control.commitMigration({
    vmId: run.vmId,
    workflowId: run.workflowId,
    targetHostId,
    expectedGeneration: run.generation!,
  });
  await migrationHost(run.opening!.sourceHostId)
    .cleanupMigrationSource(domainRef(run))
    .catch((err: unknown) => log.warn('could not remove the source definition', { error: failureText(err) }));
  run.progress.phase = 'completed';
  const measured = measuredFigures(input.target.completedJob, input.job);
  const result = resultOf(run, 'completed', targetHostId, {
    ...(measured ? { measured } : {}),
    ...(input.reason ? { reason: input.reason } : {}),
  });
  await control.finishMigration({
    workflowId: run.workflowId,
    outcome: 'completed',
    finalHostId: targetHostId,
    result,
  });
  return result;
}

function failureType(err: unknown): string {
  for (let cause: unknown = err; cause instanceof Error; cause = cause.cause) {
    if (cause instanceof ApplicationFailure && cause.type) return cause.type;
  }
  return 'MigrationFailed';
}

/** Aborts a job still running on the source, waits for it to end, and returns how both hosts were left. */
async function stopJob(run: MigrationRun) {
  const source = migrationHost(run.opening!.sourceHostId);
  let hosts = await inspectBoth(run);
  for (let round = 0; hosts.source.jobActive && round < ABORT_WAIT_ROUNDS; round++) {
    await source.abortMigrationJob(domainRef(run));
    await sleep(ABORT_WAIT_MS);
    hosts = await inspectBoth(run);
  }
  return hosts;
}

/**
 * After a cancel, an abort or a failure: if the VM runs on the target only (the job finished despite the abort),
 * commit there; otherwise keep it on the source (resumed if the abort left it paused), remove any copy on the
 * target and release the VM. Returns the result for a `cancel` signal; otherwise fails with it in the details.
 */
export async function settle(run: MigrationRun, err: unknown): Promise<MigrationResult> {
  if (run.finished || !run.opening) throw err;
  const cancelled = run.cancelRequest !== undefined || isCancellation(err);
  const reason = run.cancelRequest ? `cancelled: ${run.cancelRequest.reason}` : failureText(err);
  const control = migrationControl();
  const { sourceHostId } = run.opening;
  const name = run.opening.vm.name;
  let outcome: MigrationOutcome = cancelled ? 'cancelled' : 'failed';

  if (run.jobStarted) {
    await enterPhase(run, 'rolling-back');
    const hosts = await stopJob(run);
    if (runsOnTargetOnly(hosts)) {
      return commitToTarget(run, {
        target: hosts.target,
        reason: `${reason}; the migration had already completed, so ${name} stays on ${hosts.target.hostId}`,
      });
    }
    if (hosts.source.state === 'absent') {
      outcome = 'failed';
      const lost = `${reason}; ${name} is defined on neither host's libvirt any more`;
      await control.releaseMigration({
        vmId: run.vmId,
        workflowId: run.workflowId,
        hostId: sourceHostId,
        state: 'failed',
        error: lost,
      });
      run.progress.phase = 'failed';
      const result = resultOf(run, outcome, sourceHostId, { reason: lost });
      await control.finishMigration({
        workflowId: run.workflowId,
        outcome,
        finalHostId: sourceHostId,
        result,
        error: lost,
      });
      throw ApplicationFailure.create({
        type: 'MigrationRollbackFailed',
        message: lost,
        nonRetryable: true,
        details: [result],
      });
    }
    await migrationHost(sourceHostId).resumeMigrationSource(domainRef(run));
    if (hosts.target.state !== 'absent')
      await migrationHost(run.hosts!.target.id).discardMigrationTarget(domainRef(run));
  }
  if (run.lockRequested) {
    await control.releaseMigration({
      vmId: run.vmId,
      workflowId: run.workflowId,
      hostId: sourceHostId,
      state: 'running',
      error: reason,
    });
  }
  run.progress.phase = outcome;
  const result = resultOf(run, outcome, sourceHostId, { reason: `${reason}; ${name} runs on ${sourceHostId}` });
  await control.finishMigration({
    workflowId: run.workflowId,
    outcome,
    finalHostId: sourceHostId,
    result,
    error: reason,
  });
  if (run.cancelRequest) return result;
  if (isCancellation(err)) throw err;
  throw ApplicationFailure.create({
    type: failureType(err),
    message: result.reason,
    nonRetryable: true,
    details: [result],
    ...(err instanceof Error ? { cause: err } : {}),
  });
}
