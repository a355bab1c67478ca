/**
 * Activity option profiles for the VM workflows. Host work goes to `host-<hostId>`, the queue only that host's
 * agent polls; store work stays on the control queue.
 */
import { proxyActivities } from '@temporalio/workflow';
import type { InventoryActivities } from '../activities/inventory-activities';
import type { LibvirtActivities } from '../activities/libvirt-activities';

/** Failure types no retry can fix; every other failure is retried with backoff. */
export const PERMANENT_VM_FAILURES = [
  'VmNotFound',
  'VmBusy',
  'VmNameTaken',
  'DomainSpecError',
  'DiskImageConflict',
  'DomainNameConflict',
  'DomainNotFound',
  'NotRunning',
];

export function controlActivities() {
  return proxyActivities<InventoryActivities>({
    startToCloseTimeout: '30 seconds',
    retry: {
      initialInterval: '200 milliseconds',
      maximumInterval: '5 seconds',
      nonRetryableErrorTypes: PERMANENT_VM_FAILURES,
    },
  });
}

/**
 * No schedule-to-start limit: while a host's agent is away its work waits in the queue, and runs once the agent is
 * back. The heartbeat timeout catches an agent that dies mid-activity.
 */
export function hostActivities(hostId: string) {
  return proxyActivities<LibvirtActivities>({
    taskQueue: `host-${hostId}`,
    startToCloseTimeout: '3 minutes',
    heartbeatTimeout: '30 seconds',
    retry: {
      initialInterval: '500 milliseconds',
      maximumInterval: '10 seconds',
      nonRetryableErrorTypes: PERMANENT_VM_FAILURES,
    },
  });
}
