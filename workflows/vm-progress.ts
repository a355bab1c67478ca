/** The progress every VM lifecycle workflow reports through the `vmProgress` query. */
import { defineQuery } from '@temporalio/workflow';

export type VmOperation = 'create' | 'start' | 'stop' | 'reboot' | 'delete';

export interface VmStepReport {
  name: string;
  status: 'running' | 'ok' | 'failed';
  /** Workflow time from scheduling the step to its outcome, retries included. */
  durationMs?: number;
  error?: string;
}

export interface VmProgress {
  vmId: string;
  operation: VmOperation;
  hostId?: string;
  status: 'running' | 'completed' | 'failed';
  steps: VmStepReport[];
}

export const vmProgressQuery = defineQuery<VmProgress>('vmProgress');

function messageOf(err: unknown): string {
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof Error) return cause.message;
  return err instanceof Error ? err.message : String(err);
}

/** Runs one step and records it in the progress report. */
export async function step<T>(progress: VmProgress, name: string, work: () => Promise<T>): Promise<T> {
  const entry: VmStepReport = { name, status: 'running' };
  progress.steps.push(entry);
  const began = Date.now();
  try {
    const result = await work();
    entry.status = 'ok';
    return result;
  } catch (err) {
    entry.status = 'failed';
    entry.error = messageOf(err);
    throw err;
  } finally {
    entry.durationMs = Date.now() - began;
  }
}

export function failureText(err: unknown): string {
  return messageOf(err);
}
