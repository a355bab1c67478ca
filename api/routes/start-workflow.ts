/**
 * Starting a workflow from a route, idempotently: the workflow id names the request, so a repeated request finds
 * the workflow the first one started (200, `existing: true`) instead of starting a second (202).
 *
 * Starts are typed by the workflow functions themselves, imported as types only: the name must be a workflow the
 * control worker registers and the arguments must be that workflow's input, while the API process never loads
 * workflow code.
 */
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import type { WorkflowIdReusePolicy } from '@temporalio/common';
import type { FastifyInstance } from 'fastify';
import type { z } from 'zod';
import { ConflictError } from '../errors';
import { errorBodySchema, type WorkflowFunctions, type WorkflowName } from '../schemas';

export interface StartedWorkflow {
  status: 200 | 202;
  workflowId: string;
  runId: string;
  existing: boolean;
}

export async function startOrFindWorkflow<N extends WorkflowName>(
  app: Pick<FastifyInstance, 'temporal' | 'metrics' | 'config'>,
  input: {
    type: N;
    workflowId: string;
    args: Parameters<WorkflowFunctions[N]>;
    reusePolicy: WorkflowIdReusePolicy;
    /**
     * `find`: any earlier workflow with this id answers the request (a create with a request id). `conflict`: only a
     * running one does; one that already ended is a 409 (the reuse policy kept it from starting again).
     */
    whenEnded: 'find' | 'conflict';
  },
): Promise<StartedWorkflow> {
  try {
    const handle = await app.temporal.workflow.start<WorkflowFunctions[N]>(input.type, {
      workflowId: input.workflowId,
      taskQueue: app.config.temporal.taskQueue,
      args: input.args,
      workflowIdReusePolicy: input.reusePolicy,
    });
    app.metrics.workflowStarts.inc({ workflow_type: input.type });
    return { status: 202, workflowId: input.workflowId, runId: handle.firstExecutionRunId, existing: false };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    const existing = await app.temporal.workflow.getHandle(input.workflowId).describe();
    if (input.whenEnded === 'conflict' && existing.status.name !== 'RUNNING') {
      throw new ConflictError(`workflow ${input.workflowId} already ${existing.status.name.toLowerCase()}`);
    }
    return { status: 200, workflowId: input.workflowId, runId: existing.runId, existing: true };
  }
}

/** The responses of a route that starts a workflow: 202 started, 200 found, 404/409 refused before starting. */
export function workflowStartResponses<S extends z.ZodType>(started: S) {
  return { 200: started, 202: started, 404: errorBodySchema, 409: errorBodySchema };
}
