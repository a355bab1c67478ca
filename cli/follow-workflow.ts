/** Polls a workflow through the API until it ends: the `--wait` of every CLI command that starts one. */
import type { z } from 'zod';
import type { workflowDetailSchema } from '../api/routes/workflows';
import type { ApiClient } from './api-client';

/** GET /v1/workflows/:id, as its route's schema defines it. */
export type WorkflowDetail = z.infer<typeof workflowDetailSchema>;

/**
 * Prints each new progress line while the workflow runs and its outcome at the end; exit code 0 only for
 * COMPLETED.
 */
export async function followWorkflow(input: {
  api: ApiClient;
  workflowId: string;
  out: (line: string) => void;
  intervalMs: number;
  progressLine?: (detail: WorkflowDetail) => string | undefined;
}): Promise<number> {
  let last: string | undefined;
  for (;;) {
    const detail = await input.api.get<WorkflowDetail>(`/v1/workflows/${encodeURIComponent(input.workflowId)}`);
    if (detail.status !== 'RUNNING') {
      input.out(`${detail.status}${detail.failure ? `: ${detail.failure.message}` : ''}`);
      return detail.status === 'COMPLETED' ? 0 : 1;
    }
    const line = input.progressLine?.(detail);
    if (line && line !== last) input.out(line);
    last = line;
    await new Promise((r) => setTimeout(r, input.intervalMs));
  }
}
