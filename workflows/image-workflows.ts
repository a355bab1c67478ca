/**
 * The image library's workflows: register an image a user placed on a host, and replicate an image to another
 * host over DWCP. Progress is the `imageProgress` query; the transfer's byte counts are the heartbeats of its
 * activities, which GET /v1/workflows/:id shows beside it.
 */
import {
  ActivityCancellationType,
  CancellationScope,
  CancelledFailure,
  defineQuery,
  isCancellation,
  log,
  proxyActivities,
  setHandler,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { ImageActivities, TransferImageResult } from '../activities/image-activities';
import type { ImageControlActivities } from '../activities/image-control-activities';
import type { ImageFormat, ImageRecord } from '../domain/image';
import { failureText, step, type StepReport } from '../domain/workflow-steps';

/** The image activities' permanent failures and the DWCP errors that are not retryable. */
const PERMANENT_FAILURES = [
  'ImageNotFound',
  'HostNotFound',
  'HostNotUp',
  'NoDwcpEndpoint',
  'NoSourceReplica',
  'ImageFileMissing',
  'ImageFormatMismatch',
  'ImageContentMismatch',
  'InvalidEndpoint',
  'DwcpChecksum',
  'DwcpAuth',
  'DwcpDiskFull',
  'DwcpTimeout',
  'DwcpIo',
];

export interface ImageProgress {
  operation: 'register' | 'replicate';
  imageId: string;
  status: 'running' | 'completed' | 'failed' | 'cancelled';
  sourceHostId?: string;
  targetHostId?: string;
  link?: { rttMs: number; bandwidthMbps: number; mode: string };
  steps: StepReport[];
}

export const imageProgressQuery = defineQuery<ImageProgress>('imageProgress');

export interface RegisterImageInput {
  imageId: string;
  hostId: string;
  format: ImageFormat;
  description: string;
}

export interface ReplicateImageInput {
  imageId: string;
  targetHostId: string;
  sourceHostId?: string;
}

export interface ReplicateImageResult {
  imageId: string;
  sourceHostId: string;
  targetHostId: string;
  path: string;
  alreadyPresent: boolean;
  link?: ImageProgress['link'];
  transfer?: TransferImageResult;
  steps: StepReport[];
}

const control = proxyActivities<ImageControlActivities>({
  startToCloseTimeout: '30 seconds',
  retry: {
    initialInterval: '200 milliseconds',
    maximumInterval: '5 seconds',
    nonRetryableErrorTypes: PERMANENT_FAILURES,
  },
});

/**
 * Host work waits in the host's queue while its agent is away (no schedule-to-start limit); the heartbeat timeout
 * catches an agent that dies mid-transfer, and the retry resumes from the receiver's journal.
 */
function hostImageActivities(hostId: string, input: { attempts: number }) {
  return proxyActivities<ImageActivities>({
    taskQueue: `host-${hostId}`,
    startToCloseTimeout: '24 hours',
    heartbeatTimeout: '30 seconds',
    // The receiver removes its partial file on cancel; waiting for that keeps a cancelled workflow's end honest.
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: {
      initialInterval: '1 second',
      maximumInterval: '30 seconds',
      maximumAttempts: input.attempts,
      nonRetryableErrorTypes: PERMANENT_FAILURES,
    },
  });
}

/** Hashes the image file on its host and records the image with that host's copy as its first ready replica. */
export async function registerImage(input: RegisterImageInput): Promise<ImageRecord> {
  const { workflowId } = workflowInfo();
  const progress: ImageProgress = {
    operation: 'register',
    imageId: input.imageId,
    status: 'running',
    targetHostId: input.hostId,
    steps: [],
  };
  setHandler(imageProgressQuery, () => progress);
  const host = hostImageActivities(input.hostId, { attempts: 5 });
  try {
    const inspected = await step(progress, 'inspect', () =>
      host.inspectImage({ imageId: input.imageId, format: input.format }),
    );
    const image = await step(progress, 'record', () => control.recordImage({ ...input, ...inspected, workflowId }));
    progress.status = 'completed';
    return image;
  } catch (err) {
    progress.status = isCancellation(err) ? 'cancelled' : 'failed';
    throw err;
  }
}

/**
 * Copies an image to a host: plan (source, endpoints), probe the link and store the sample, then run the receiving
 * and the sending activity side by side. Either failing cancels the other; cancelling the workflow cancels both.
 * The target's replica row ends 'ready' only after the target verified the image's sha256.
 */
export async function replicateImage(input: ReplicateImageInput): Promise<ReplicateImageResult> {
  const { workflowId } = workflowInfo();
  const progress: ImageProgress = {
    operation: 'replicate',
    imageId: input.imageId,
    status: 'running',
    targetHostId: input.targetHostId,
    steps: [],
  };
  setHandler(imageProgressQuery, () => progress);

  const plan = await step(progress, 'plan', () =>
    control.planImageReplication({
      imageId: input.imageId,
      targetHostId: input.targetHostId,
      workflowId,
      ...(input.sourceHostId !== undefined ? { sourceHostId: input.sourceHostId } : {}),
    }),
  );
  progress.sourceHostId = plan.sourceHostId;
  const base = { imageId: plan.image.id, sourceHostId: plan.sourceHostId, targetHostId: plan.targetHostId };
  if (plan.alreadyReady) {
    progress.status = 'completed';
    return { ...base, path: plan.targetPath, alreadyPresent: true, steps: progress.steps };
  }

  const source = hostImageActivities(plan.sourceHostId, { attempts: 5 });
  const target = hostImageActivities(plan.targetHostId, { attempts: 5 });
  // Best effort, and bounded: a target that is down must not hold the workflow open.
  const cleanup = proxyActivities<ImageActivities>({
    taskQueue: `host-${plan.targetHostId}`,
    scheduleToCloseTimeout: '2 minutes',
    retry: { maximumAttempts: 3 },
  });
  try {
    const probe = await step(progress, 'probe', () =>
      source.probeLink({ targetHostId: plan.targetHostId, endpoint: plan.targetEndpoint }),
    );
    progress.link = { rttMs: probe.rttMs, bandwidthMbps: probe.bandwidthMbps, mode: probe.mode };
    await step(progress, 'record-probe', () => control.recordLinkProbe({ report: probe, workflowId, step: 'probe' }));

    const transferId = uuid4();
    const image = { imageId: plan.image.id, format: plan.image.format, sha256: plan.image.sha256, transferId };
    const [received, sent] = await step(progress, 'transfer', async () => {
      const pair = new CancellationScope();
      const [receiving, sending] = await pair.run(async () => [
        target.receiveImage({ ...image, sourceHostId: plan.sourceHostId }),
        source.transferImage({
          ...image,
          targetHostId: plan.targetHostId,
          endpoint: plan.targetEndpoint,
          probe: { rttMs: probe.rttMs, bandwidthMbps: probe.bandwidthMbps },
        }),
      ]);
      try {
        return await Promise.all([receiving, sending]);
      } catch (err) {
        // Both must have stopped before the caller cleans up the target, or the receiver could still be writing.
        pair.cancel();
        await Promise.allSettled([receiving, sending]);
        throw err;
      }
    });

    await step(progress, 'record', () =>
      control.finishImageReplica({
        imageId: plan.image.id,
        hostId: plan.targetHostId,
        workflowId,
        state: 'ready',
        message: `image ${plan.image.id} replicated ${plan.sourceHostId} → ${plan.targetHostId} (${sent.mode}, ${sent.wireBytes} wire bytes for ${sent.logicalBytes})`,
      }),
    );
    progress.status = 'completed';
    return {
      ...base,
      path: received.path,
      alreadyPresent: false,
      link: progress.link,
      transfer: sent,
      steps: progress.steps,
    };
  } catch (err) {
    // Cancelled means cancelled, whichever way the two cancelled activities happened to end.
    const cancelled = isCancellation(err) || CancellationScope.current().consideredCancelled;
    progress.status = cancelled ? 'cancelled' : 'failed';
    await CancellationScope.nonCancellable(() =>
      control.finishImageReplica({
        imageId: plan.image.id,
        hostId: plan.targetHostId,
        workflowId,
        state: 'failed',
        message: `image ${plan.image.id} replication to ${plan.targetHostId} ${progress.status}: ${failureText(err)}`,
        error: cancelled ? 'cancelled' : failureText(err),
      }),
    );
    // Whichever side stopped first, no half-written file stays on the target (a new replication starts afresh).
    await CancellationScope.nonCancellable(() =>
      cleanup.discardPartialImage({ imageId: plan.image.id, format: plan.image.format }).catch((cleanupErr: unknown) =>
        log.warn('could not remove the partial image on the target', {
          hostId: plan.targetHostId,
          error: failureText(cleanupErr),
        }),
      ),
    );
    if (cancelled && !isCancellation(err)) throw new CancelledFailure('image replication cancelled');
    throw err;
  }
}
