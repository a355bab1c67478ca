import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import {
  ApplicationFailure,
  CancellationScope,
  executeChild,
  ParentClosePolicy,
  proxyActivities,
  setHandler,
  sleep,
  WorkflowIdReusePolicy,
  workflowInfo,
} from '@temporalio/workflow';
import type { ImageBaseActivities } from '../activities/image-base-activities';
import type { ImageControlActivities } from '../activities/image-control-activities';
import type { VmDisk } from '../activities/libvirt-activities';
import type { ImageFormat } from '../domain/image';
import { replicateImage } from './image-workflows';
import { controlActivities, hostActivities } from './vm-activities';
import { failureText, step } from '../domain/workflow-steps';
import { vmProgressQuery, type VmProgress } from './vm-progress';
import { vmSpecSchema, type VmSpec } from '../domain/vm-spec';

export interface VmCreateInput {
  /** Chosen by the API; also the libvirt domain UUID, so a retried define updates instead of duplicating. */
  vmId: string;
  spec: VmSpec;
}

export interface VmCreateResult {
  vmId: string;
  name: string;
  hostId: string;
  ownerToken: number;
  disks: VmDisk[];
  /** The image base the first disk overlays, when the VM was made from an image. */
  base?: { path: string; format: ImageFormat };
  steps: VmProgress['steps'];
}

const MiB = 1024 * 1024;
/** How long to wait before asking again while another workflow replicates the image to the host. */
const REPLICATION_WAIT_MS = { first: 1000, max: 30_000 };

const imageControl = proxyActivities<ImageControlActivities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '200 milliseconds', maximumInterval: '5 seconds' },
});

/** Copying a base into a shared pool runs as long as the image is large; the heartbeat catches a dead agent. */
function hostImageBase(hostId: string) {
  return proxyActivities<ImageBaseActivities>({
    taskQueue: `host-${hostId}`,
    startToCloseTimeout: '6 hours',
    heartbeatTimeout: '30 seconds',
    retry: { initialInterval: '1 second', maximumInterval: '30 seconds' },
  });
}

/**
 * The image onto the host, by the replication workflow an operator would start (its id names image and target),
 * so two VMs made from one image on one host share a transfer instead of racing two into one file. While another
 * run of it is under way, this waits and asks again: a later run finds the replica ready at once.
 */
async function replicateToHost(imageId: string, hostId: string): Promise<void> {
  let waitMs = REPLICATION_WAIT_MS.first;
  for (;;) {
    try {
      await executeChild(replicateImage, {
        workflowId: `image-replicate-${imageId}-to-${hostId}`,
        args: [{ imageId, targetHostId: hostId }],
        workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
        // A create that ends mid-transfer lets the replication clean up its partial file rather than kill it.
        parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
      });
      return;
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
      await sleep(waitMs);
      waitMs = Math.min(waitMs * 2, REPLICATION_WAIT_MS.max);
    }
  }
}

/** The image's base in the VM's pool on its host: there already, or made there after replicating the image in. */
async function prepareImageBase(
  progress: VmProgress,
  input: { imageId: string; hostId: string; storagePool: string },
): Promise<{ path: string; format: ImageFormat; sizeBytes: number }> {
  const image = await step(progress, 'image', () => imageControl.lookupImage({ imageId: input.imageId }));
  const host = hostImageBase(input.hostId);
  const ask = () =>
    host.ensureImageBase({
      imageId: image.id,
      format: image.format,
      sha256: image.sha256,
      sizeBytes: image.sizeBytes,
      storagePool: input.storagePool,
    });
  let base = await step(progress, 'image-base', ask);
  if (base.state === 'needs-replica') {
    base = await step(progress, 'replicate-image', async () => {
      await replicateToHost(image.id, input.hostId);
      return ask();
    });
  }
  if (base.state !== 'ready') {
    throw ApplicationFailure.nonRetryable(
      `image ${image.id} replicated to ${input.hostId}, but the host still finds no copy of it`,
      'ImageFileMissing',
    );
  }
  return { path: base.path, format: base.format, sizeBytes: image.sizeBytes };
}

/**
 * Creates a VM: place it and write its row under the host's fencing token, make the image's base ready in the VM's
 * storage pool when it is made from an image, create its disks (the first an overlay on that base), define and
 * start the domain on that host, then record it running. Every step is idempotent, so worker crashes and retries
 * converge on one VM row and one libvirt domain.
 */
export async function vmCreate(input: VmCreateInput): Promise<VmCreateResult> {
  const parsed = vmSpecSchema.safeParse(input.spec);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw ApplicationFailure.nonRetryable(`spec.${issue?.path.join('.')}: ${issue?.message}`, 'InvalidVmSpec');
  }
  const spec = parsed.data;
  if (spec.image !== undefined && spec.disks[0] !== undefined && spec.disks[0].format !== 'qcow2') {
    throw ApplicationFailure.nonRetryable(
      'spec.disks.0.format: the first disk of a VM made from an image is a qcow2 overlay',
      'InvalidVmSpec',
    );
  }
  const { workflowId } = workflowInfo();
  const progress: VmProgress = { vmId: input.vmId, operation: 'create', status: 'running', steps: [] };
  setHandler(vmProgressQuery, () => progress);
  const control = controlActivities();

  const claim = await step(progress, 'place', () => control.claimVmPlacement({ vmId: input.vmId, spec, workflowId }));
  progress.hostId = claim.hostId;
  const host = hostActivities(claim.hostId);
  try {
    const image =
      spec.image === undefined
        ? undefined
        : await prepareImageBase(progress, {
            imageId: spec.image,
            hostId: claim.hostId,
            storagePool: spec.storagePool,
          });
    // A VM from an image needs no disk list: its root disk is the overlay, the image's size.
    const diskSpecs =
      image && spec.disks.length === 0
        ? [{ name: 'root', sizeMib: Math.ceil(image.sizeBytes / MiB), format: 'qcow2' as const }]
        : spec.disks;
    const base = image && { path: image.path, format: image.format };
    const disks = await step(progress, 'create-disks', () =>
      host.createVmDisks({
        vmId: input.vmId,
        disks: diskSpecs,
        storagePool: spec.storagePool,
        ...(base ? { base } : {}),
      }),
    );
    await step(progress, 'define', () => host.defineVmDomain({ vmId: input.vmId, spec, disks }));
    await step(progress, 'start', () => host.startVmDomain({ vmId: input.vmId, name: spec.name }));
    await step(progress, 'record', () =>
      control.finishVmOperation({
        vmId: input.vmId,
        workflowId,
        state: 'running',
        event: 'vm.created',
        message: `${spec.name} created and running on ${claim.hostId}`,
      }),
    );
    progress.status = 'completed';
    return {
      vmId: input.vmId,
      name: spec.name,
      hostId: claim.hostId,
      ownerToken: claim.ownerToken,
      disks,
      ...(base ? { base } : {}),
      steps: progress.steps,
    };
  } catch (err) {
    progress.status = 'failed';
    // Left in place for the operator (delete cleans up), but released and marked, even when cancelled.
    await CancellationScope.nonCancellable(() =>
      control.finishVmOperation({
        vmId: input.vmId,
        workflowId,
        state: 'failed',
        event: 'vm.create.failed',
        message: `${spec.name} failed to create on ${claim.hostId}: ${failureText(err)}`,
        error: failureText(err),
      }),
    );
    throw err;
  }
}
