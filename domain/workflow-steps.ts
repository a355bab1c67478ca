/**
 * Steps of a workflow's progress report, shared by the VM and image workflows. Deterministic inside a workflow:
 * Temporal's sandbox makes Date.now() the workflow clock.
 */
/** One step of a workflow's progress report; the VM and image workflows share it. */
export interface StepReport {
  name: string;
  status: 'running' | 'ok' | 'failed';
  /** Workflow time from scheduling the step to its outcome, retries included. */
  durationMs?: number;
  error?: string;
}

function messageOf(err: unknown): string {
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof Error) return cause.message;
  return err instanceof Error ? err.message : String(err);
}

/** Runs one step and records it in the progress report. */
export async function step<T>(progress: { steps: StepReport[] }, name: string, work: () => Promise<T>): Promise<T> {
  const entry: StepReport = { name, status: 'running' };
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
