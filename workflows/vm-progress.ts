/** The progress every VM lifecycle workflow reports through the `vmProgress` query. */
import { defineQuery } from '@temporalio/workflow';
import type { StepReport } from '../domain/workflow-steps';

export type VmOperation = 'create' | 'start' | 'stop' | 'reboot' | 'delete';

export interface VmProgress {
  vmId: string;
  operation: VmOperation;
  hostId?: string;
  status: 'running' | 'completed' | 'failed';
  steps: StepReport[];
}

export const vmProgressQuery = defineQuery<VmProgress>('vmProgress');
