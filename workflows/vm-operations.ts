/**
 * start, stop, reboot and delete: each takes the VM for its workflow, does the host's part on `host-<hostId>`,
 * and releases the VM with its new state. A failure releases it as `failed` with the reason.
 */
import { ApplicationFailure, CancellationScope, setHandler, workflowInfo } from '@temporalio/workflow';
import { controlActivities, hostActivities } from './vm-activities';
import { failureText, step } from '../domain/workflow-steps';
import type { VmRecord, VmState } from '../domain/vm-spec';
import { vmProgressQuery, type VmOperation, type VmProgress } from './vm-progress';

export interface VmStartInput {
  vmId: string;
}

export interface VmStopInput {
  vmId: string;
  /** Destroy at once instead of asking the guest to shut down. */
  force?: boolean;
  /** How long ACPI shutdown may take before the domain is destroyed. */
  timeoutMs?: number;
}

export interface VmRebootInput {
  vmId: string;
  /** Reset the guest instead of an ACPI reboot (which needs a guest OS that listens). */
  hard?: boolean;
}

export interface VmDeleteInput {
  vmId: string;
}

export interface VmOperationResult {
  vmId: string;
  name: string;
  hostId: string;
  state: VmState | 'deleted';
  steps: VmProgress['steps'];
}

const DEFAULT_STOP_TIMEOUT_MS = 30_000;

async function operate(
  operation: VmOperation,
  input: { vmId: string },
  transitional: VmState,
  hostPart: (vm: VmRecord & { hostId: string }) => Promise<unknown>,
  finish: (vm: VmRecord & { hostId: string }, workflowId: string) => Promise<VmState | 'deleted'>,
): Promise<VmOperationResult> {
  const { workflowId } = workflowInfo();
  const progress: VmProgress = { vmId: input.vmId, operation, status: 'running', steps: [] };
  setHandler(vmProgressQuery, () => progress);
  const control = controlActivities();
  const vm = await step(progress, 'hold', () =>
    control.beginVmOperation({ vmId: input.vmId, workflowId, state: transitional }),
  );
  const { hostId } = vm;
  if (!hostId) {
    throw ApplicationFailure.nonRetryable(`VM ${vm.name} has no host; nothing to ${operation}`, 'VmNotPlaced');
  }
  progress.hostId = hostId;
  const placed = { ...vm, hostId };
  try {
    await step(progress, operation, () => hostPart(placed));
    const state = await step(progress, 'record', () => finish(placed, workflowId));
    progress.status = 'completed';
    return { vmId: vm.id, name: vm.name, hostId, state, steps: progress.steps };
  } catch (err) {
    progress.status = 'failed';
    await CancellationScope.nonCancellable(() =>
      control.finishVmOperation({
        vmId: vm.id,
        workflowId,
        state: 'failed',
        event: `vm.${operation}.failed`,
        message: `${vm.name} ${operation} failed on ${hostId}: ${failureText(err)}`,
        error: failureText(err),
      }),
    );
    throw err;
  }
}

function recordState(state: VmState, event: string, verb: string) {
  return async (vm: VmRecord & { hostId: string }, workflowId: string): Promise<VmState> => {
    await controlActivities().finishVmOperation({
      vmId: vm.id,
      workflowId,
      state,
      event,
      message: `${vm.name} ${verb} on ${vm.hostId}`,
    });
    return state;
  };
}

export async function vmStart(input: VmStartInput): Promise<VmOperationResult> {
  return operate(
    'start',
    input,
    'starting',
    (vm) => hostActivities(vm.hostId).startVmDomain({ vmId: vm.id, name: vm.name }),
    recordState('running', 'vm.started', 'started'),
  );
}

export async function vmStop(input: VmStopInput): Promise<VmOperationResult> {
  return operate(
    'stop',
    input,
    'stopping',
    (vm) =>
      hostActivities(vm.hostId).stopVmDomain({
        vmId: vm.id,
        name: vm.name,
        timeoutMs: input.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS,
        ...(input.force ? { force: true } : {}),
      }),
    recordState('stopped', 'vm.stopped', 'stopped'),
  );
}

export async function vmReboot(input: VmRebootInput): Promise<VmOperationResult> {
  return operate(
    'reboot',
    input,
    'rebooting',
    (vm) =>
      hostActivities(vm.hostId).rebootVmDomain({ vmId: vm.id, name: vm.name, ...(input.hard ? { hard: true } : {}) }),
    recordState('running', 'vm.rebooted', 'rebooted'),
  );
}

/** Destroys and undefines the domain, removes its disks, then the VM row. */
export async function vmDelete(input: VmDeleteInput): Promise<VmOperationResult> {
  return operate(
    'delete',
    input,
    'deleting',
    (vm) => hostActivities(vm.hostId).deleteVmDomain({ vmId: vm.id, name: vm.name }),
    async (vm, workflowId) => {
      await controlActivities().deleteVmRecord({ vmId: vm.id, workflowId, hostId: vm.hostId, name: vm.name });
      return 'deleted';
    },
  );
}
