/**
 * Activity option profiles of the migrateVm saga. Store work runs on the control queue; host work on
 * `host-<hostId>`, where only that host's agent polls. The migration job is one long activity on the source that
 * heartbeats; everything that steers or samples it is short, so the workflow stays in charge between samples.
 */
import { ActivityCancellationType, proxyActivities } from '@temporalio/workflow';
import type { ImageActivities } from '../activities/image-activities';
import type { ImageControlActivities } from '../activities/image-control-activities';
import type { MigrationActivities } from '../activities/migration-activities';
import type { MigrationControlActivities } from '../activities/migration-control-activities';

/** Failure types no retry can fix; every other failure is retried with backoff. */
export const PERMANENT_MIGRATION_FAILURES = [
  'VmNotFound',
  'VmBusy',
  'VmNotRunning',
  'OwnershipChanged',
  'InvalidMigrationTarget',
  'TargetHostUnavailable',
  'TargetLacksCapacity',
  'NoMigrationTarget',
  'LocalStorageNotMigratable',
  'TargetLacksStoragePool',
  'DomainNameConflict',
  'DomainNotFound',
  'DiskOutsideStoragePool',
  'DiskNotVisibleOnTarget',
  'TargetDomainActive',
  'SourceStillRunning',
  'MigrationJobFailed',
  'MigrationJobAborted',
];

export function migrationControl() {
  return proxyActivities<MigrationControlActivities & Pick<ImageControlActivities, 'recordLinkProbe'>>({
    startToCloseTimeout: '30 seconds',
    retry: {
      initialInterval: '200 milliseconds',
      maximumInterval: '5 seconds',
      nonRetryableErrorTypes: PERMANENT_MIGRATION_FAILURES,
    },
  });
}

/**
 * Short host work. No schedule-to-start limit: while an agent is away its work waits in its queue, which is what
 * a rollback needs (the VM must end on exactly one host, however long the agent takes to come back).
 */
export function migrationHost(hostId: string) {
  return proxyActivities<MigrationActivities>({
    taskQueue: `host-${hostId}`,
    startToCloseTimeout: '2 minutes',
    heartbeatTimeout: '30 seconds',
    retry: {
      initialInterval: '500 milliseconds',
      maximumInterval: '10 seconds',
      nonRetryableErrorTypes: PERMANENT_MIGRATION_FAILURES,
    },
  });
}

/**
 * Job samples are worth having only while fresh: a few seconds, one retry, and the loop goes on without the sample
 * when the source's agent is slow. The job itself does not depend on them.
 */
export function migrationSampler(hostId: string, input: { pollIntervalMs: number }) {
  return proxyActivities<MigrationActivities>({
    taskQueue: `host-${hostId}`,
    scheduleToCloseTimeout: Math.max(5000, 3 * input.pollIntervalMs),
    retry: { initialInterval: '200 milliseconds', maximumAttempts: 2 },
  });
}

/**
 * The migration job on the source: as long as the plan's deadline plus a margin, a heartbeat every few seconds (a
 * dead agent shows within 30 s and the retry re-attaches to the job), and a cancel that waits for the job to have
 * stopped, so whatever follows the cancel sees both hosts as the abort left them.
 */
export function migrationJob(hostId: string, input: { startToCloseMs: number }) {
  return proxyActivities<MigrationActivities>({
    taskQueue: `host-${hostId}`,
    startToCloseTimeout: input.startToCloseMs,
    heartbeatTimeout: '30 seconds',
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: {
      initialInterval: '1 second',
      maximumInterval: '10 seconds',
      maximumAttempts: 3,
      nonRetryableErrorTypes: PERMANENT_MIGRATION_FAILURES,
    },
  });
}

/** The link probe between source and target, the image activities' own. */
export function migrationProbe(hostId: string) {
  return proxyActivities<Pick<ImageActivities, 'probeLink'>>({
    taskQueue: `host-${hostId}`,
    startToCloseTimeout: '2 minutes',
    heartbeatTimeout: '30 seconds',
    retry: { initialInterval: '1 second', maximumInterval: '10 seconds', maximumAttempts: 3 },
  });
}
