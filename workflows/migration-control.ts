/**
 * The migration job and the convergence loop beside it. The job is one long activity on the source; meanwhile the
 * workflow samples libvirt's job statistics every poll interval, keeps the progress query current (and the
 * migrations row every few seconds), feeds each sample to convergence control and applies what it decides through
 * short activities on the source: raise the max downtime, switch to post-copy, abort. Each escalation is recorded.
 */
import { ApplicationFailure, CancellationScope, condition, log } from '@temporalio/workflow';
import type { MigrateDomainInput, MigrateDomainResult } from '../activities/migration-activities';
import type { MigrationEscalation, MigrationJobSample } from '../domain/migration';
import {
  createConvergenceState,
  observeJobSample,
  progressFromSample,
  type ConvergenceAction,
} from '../domain/migration-convergence';
import { failureText } from '../domain/workflow-steps';
import { migrationControl, migrationHost, migrationJob, migrationSampler } from './migration-activities-proxy';
import { enterPhase, persistProgress, type MigrationRun } from './migration-saga';

/** The migrations row follows the query at this pace, not at every sample. */
export const PROGRESS_PERSIST_MS = 5000;
/** The activity outlives the plan's deadline by this much: convergence control aborts at the deadline first. */
const JOB_MARGIN_MS = 120_000;
/** libvirt's own timeout on the call sits between the two. */
const CALL_MARGIN_MS = 60_000;
/**
 * Samples a job may take up to its deadline. Each costs the workflow's history about eight events, and a history
 * holds at most 50,000: a long deadline (a large guest) samples less often than the configured interval.
 */
export const MAX_JOB_SAMPLES = 3000;

/** Where the job goes: the target's URIs and its own console log for the guest. */
export type MigrationDestination = Pick<
  MigrateDomainInput,
  'destUri' | 'p2p' | 'migrateUri' | 'targetHostId' | 'targetConsoleLogPath'
>;

type Settled = { ok: true; value: MigrateDomainResult } | { ok: false; error: unknown };

/** Throughput between two samples of the same job, from what was sent and libvirt's elapsed time. */
function recentThroughput(previous: MigrationJobSample | undefined, sample: MigrationJobSample): number | undefined {
  if (!previous || previous.state !== 'running') return undefined;
  const ms = sample.timeElapsedMs - previous.timeElapsedMs;
  const bytes = sample.dataProcessedBytes - previous.dataProcessedBytes;
  return ms > 0 && bytes >= 0 ? (bytes * 1000) / ms : undefined;
}

async function recordEscalation(run: MigrationRun, escalation: MigrationEscalation): Promise<void> {
  run.progress.escalations.push(escalation);
  await migrationControl().recordMigrationEscalation({ workflowId: run.workflowId, escalation });
}

/**
 * Runs the job to its end and returns what the source reported. Fails with `MigrationAborted` when convergence
 * control aborted it and the job did stop; a job that completed despite the abort is a completed migration.
 */
export async function runMigrationJob(
  run: MigrationRun,
  destination: MigrationDestination,
): Promise<MigrateDomainResult> {
  const plan = run.plan!;
  const { vm, sourceHostId, settings } = run.opening!;
  const ref = { vmId: vm.id, name: vm.name };
  const pollIntervalMs = Math.max(settings.pollIntervalMs, Math.ceil(plan.deadlineMs / MAX_JOB_SAMPLES));
  const sampler = migrationSampler(sourceHostId, { pollIntervalMs });
  // Steering must happen: it waits for a slow or restarting agent instead of failing the migration.
  const steer = migrationHost(sourceHostId);
  let convergence = createConvergenceState({ plan, policy: run.policy, startedAtMs: Date.now() });
  let abortReason: string | undefined;
  let previous: MigrationJobSample | undefined;
  let persistedAtMs = Date.now();

  const apply = async (action: ConvergenceAction): Promise<void> => {
    if (action.kind === 'set-downtime') await steer.setMigrationDowntime({ ...ref, downtimeMs: action.downtimeMs });
    if (action.kind === 'start-post-copy') {
      await steer.startMigrationPostCopy(ref);
      await enterPhase(run, 'postcopy');
    }
    if (action.kind === 'abort') {
      abortReason = action.escalation.reason;
      await steer.abortMigrationJob(ref);
    }
    await recordEscalation(run, action.escalation);
  };

  await enterPhase(run, 'precopy');
  const jobScope = new CancellationScope();
  const ended: { outcome?: Settled } = {};
  const job = jobScope.run(() =>
    migrationJob(sourceHostId, { startToCloseMs: plan.deadlineMs + JOB_MARGIN_MS }).migrateDomain({
      ...ref,
      workflowId: run.workflowId,
      ...destination,
      parameters: plan.parameters,
      timeoutMs: plan.deadlineMs + CALL_MARGIN_MS,
    }),
  );
  const done = job.then(
    (value) => (ended.outcome = { ok: true, value }),
    (error: unknown) => (ended.outcome = { ok: false, error }),
  );
  try {
    while (!(await condition(() => ended.outcome !== undefined, pollIntervalMs))) {
      const sample = await sampler.sampleMigrationJob(ref).catch((err: unknown) => {
        log.warn('migration job sample failed; the loop goes on without it', { error: failureText(err) });
        return undefined;
      });
      if (ended.outcome || sample?.state !== 'running') continue;
      const recent = recentThroughput(previous, sample);
      previous = sample;
      Object.assign(
        run.progress,
        progressFromSample({ sample, ...(recent !== undefined ? { recentThroughputBytesPerSecond: recent } : {}) }),
      );
      if (sample.phase === 'postcopy') await enterPhase(run, 'postcopy');
      const step = observeJobSample(convergence, { sample, nowMs: Date.now() });
      convergence = step.state;
      for (const action of step.actions) await apply(action);
      if (Date.now() - persistedAtMs >= PROGRESS_PERSIST_MS) {
        persistedAtMs = Date.now();
        await persistProgress(run);
      }
    }
  } catch (err) {
    // Whatever stopped the loop, the job must have stopped too before the saga settles on a host.
    jobScope.cancel();
    await done;
    throw err;
  }
  const outcome = ended.outcome!;
  if (outcome.ok) return outcome.value;
  if (abortReason !== undefined) {
    throw ApplicationFailure.nonRetryable(
      `convergence control aborted the migration: ${abortReason}`,
      'MigrationAborted',
    );
  }
  throw outcome.error;
}
