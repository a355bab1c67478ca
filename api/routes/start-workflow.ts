/**
 * Starting a workflow from a route, idempotently: the workflow id names the request, so a repeated request finds
 * the workflow the first one started (200, `existing: true`) instead of starting a second (202).
 */
import { WorkflowExecutionAlreadyStartedError, type Client } from '@temporalio/client';
import type { WorkflowIdReusePolicy } from '@temporalio/common';
import type { z } from 'zod';
import type { NovacronMetrics } from '../../observability/metrics';
import { ConflictError } from '../errors';
import { errorBodySchema } from '../schemas';

export interface StartedWorkflow {
  status: 200 | 202;
  workflowId: string;
  runId: string;
  existing: boolean;
}

export async function startOrFindWorkflow(input: {
  temporal: Client;
  metrics: NovacronMetrics;
  taskQueue: string;
  type: string;
  workflowId: string;
  args: unknown[];
  reusePolicy: WorkflowIdReusePolicy;
  /**
   * `find`: any earlier workflow with this id answers the request (a create with a request id). `conflict`: only a
   * running one does; one that already ended is a 409 (the reuse policy kept it from starting again).
   */
  whenEnded: 'find' | 'conflict';
}): Promise<StartedWorkflow> {
  try {
    const handle = await input.temporal.workflow.start(input.type, {
      workflowId: input.workflowId,
      taskQueue: input.taskQueue,
      args: input.args,
      workflowIdReusePolicy: input.reusePolicy,
    });
    input.metrics.workflowStarts.inc({ workflow_type: input.type });
    return { status: 202, workflowId: input.workflowId, runId: handle.firstExecutionRunId, existing: false };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    const existing = await input.temporal.workflow.getHandle(input.workflowId).describe();
    if (input.whenEnded === 'conflict' && existing.status.name !== 'RUNNING') {
      throw new ConflictError(`workflow ${input.workflowId} already ${existing.status.name.toLowerCase()}`);
    }
    return { status: 200, workflowId: input.workflowId, runId: existing.runId, existing: true };
  }
}

/** The responses of a route that starts a workflow: 202 started, 200 found, 400/404/409 refused before starting. */
export function workflowStartResponses<S extends z.ZodType>(started: S) {
  return { 200: started, 202: started, 400: errorBodySchema, 404: errorBodySchema, 409: errorBodySchema };
}
