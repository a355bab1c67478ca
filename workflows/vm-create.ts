import { ApplicationFailure, CancellationScope, setHandler, workflowInfo } from '@temporalio/workflow';
import type { VmDisk } from '../activities/libvirt-activities';
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
  steps: VmProgress['steps'];
}

/**
 * Creates a VM: place it and write its row under the host's fencing token, create its disks, define and start the
 * domain on that host, then record it running. Every step is idempotent, so worker crashes and retries converge on
 * one VM row and one libvirt domain.
 */
export async function vmCreate(input: VmCreateInput): Promise<VmCreateResult> {
  const parsed = vmSpecSchema.safeParse(input.spec);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw ApplicationFailure.nonRetryable(`spec.${issue?.path.join('.')}: ${issue?.message}`, 'InvalidVmSpec');
  }
  const spec = parsed.data;
  const { workflowId } = workflowInfo();
  const progress: VmProgress = { vmId: input.vmId, operation: 'create', status: 'running', steps: [] };
  setHandler(vmProgressQuery, () => progress);
  const control = controlActivities();

  const claim = await step(progress, 'place', () => control.claimVmPlacement({ vmId: input.vmId, spec, workflowId }));
  progress.hostId = claim.hostId;
  const host = hostActivities(claim.hostId);
  try {
    const disks = await step(progress, 'create-disks', () =>
      host.createVmDisks({ vmId: input.vmId, disks: spec.disks }),
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
