/** Follow, list and cancel any NovaCron workflow; these are how long operations are watched from the API. */
import { WorkflowFailedError, type WorkflowExecutionDescription } from '@temporalio/client';
import { ApplicationFailure, defaultPayloadConverter, TemporalFailure } from '@temporalio/common';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { ConflictError } from '../errors';
import {
  errorBodySchema,
  WORKFLOW_PROGRESS_QUERIES,
  WORKFLOW_STATUSES,
  WORKFLOW_TYPES,
  workflowIdSchema,
  type WorkflowName,
} from '../schemas';

const failureSchema = z.object({
  message: z.string(),
  type: z.string().optional(),
  details: z.array(z.unknown()).optional(),
});

const pendingActivitySchema = z.object({
  activityId: z.string(),
  activityType: z.string(),
  state: z.string(),
  attempt: z.number(),
  maximumAttempts: z.number(),
  lastFailure: z.string().optional(),
  heartbeatDetails: z.unknown().optional(),
});

export const workflowSummarySchema = z.object({
  workflowId: z.string(),
  runId: z.string(),
  type: z.string(),
  status: z.string(),
  taskQueue: z.string(),
  startTime: z.string(),
  closeTime: z.string().optional(),
});

export const workflowDetailSchema = workflowSummarySchema.extend({
  historyLength: z.number(),
  result: z.unknown().optional(),
  failure: failureSchema.optional(),
  progress: z.unknown().optional(),
  pendingActivities: z.array(pendingActivitySchema),
});

/** The root cause is what an operator needs ("connection refused"), not the wrapper ("Activity task failed"). */
export function failureOf(err: unknown): z.infer<typeof failureSchema> {
  let cause: unknown = err instanceof WorkflowFailedError ? (err.cause ?? err) : err;
  const path: string[] = [];
  while (cause instanceof TemporalFailure && !(cause instanceof ApplicationFailure) && cause.cause) {
    path.push(cause.message);
    cause = cause.cause;
  }
  if (cause instanceof ApplicationFailure) {
    return { message: cause.message, type: cause.type ?? undefined, details: cause.details ?? [] };
  }
  if (cause instanceof TemporalFailure) return { message: cause.message, type: cause.name };
  return { message: cause instanceof Error ? cause.message : [...path, String(cause)].join(': ') };
}

function pendingActivities(description: WorkflowExecutionDescription): Array<z.infer<typeof pendingActivitySchema>> {
  return (description.raw.pendingActivities ?? []).map((a) => ({
    activityId: a.activityId ?? '',
    activityType: a.activityType?.name ?? '',
    state: String(a.state ?? ''),
    attempt: a.attempt ?? 0,
    maximumAttempts: a.maximumAttempts ?? 0,
    ...(a.lastFailure?.message ? { lastFailure: a.lastFailure.message } : {}),
    ...heartbeatOf(a.heartbeatDetails?.payloads),
  }));
}

/** The newest heartbeat of a long activity is its live progress (a transfer's bytes, a hash's position). */
function heartbeatOf(payloads: Parameters<typeof defaultPayloadConverter.fromPayload>[0][] | null | undefined) {
  const first = payloads?.[0];
  if (!first) return {};
  try {
    return { heartbeatDetails: defaultPayloadConverter.fromPayload(first) };
  } catch {
    return {};
  }
}

export const workflowListSchema = z.object({ workflows: z.array(workflowSummarySchema) });

export const cancelRequestedSchema = z.object({
  workflowId: z.string(),
  runId: z.string(),
  status: z.literal('CANCEL_REQUESTED'),
});

export const workflowRoutes: FastifyPluginAsyncZod = async (app) => {
  const { temporal } = app;
  app.get(
    '/v1/workflows/:id',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'Status, result or failure, live progress and pending activities of a workflow',
        tags: ['workflows'],
        params: z.strictObject({ id: workflowIdSchema }),
        response: { 200: workflowDetailSchema, 404: errorBodySchema },
      },
    },
    async (request) => {
      const handle = temporal.workflow.getHandle(request.params.id);
      const description = await handle.describe();
      const status = description.status.name;
      const detail: z.infer<typeof workflowDetailSchema> = {
        workflowId: description.workflowId,
        runId: description.runId,
        type: description.type,
        status,
        taskQueue: description.taskQueue,
        startTime: description.startTime.toISOString(),
        ...(description.closeTime ? { closeTime: description.closeTime.toISOString() } : {}),
        historyLength: description.historyLength,
        pendingActivities: pendingActivities(description),
      };
      if (status === 'COMPLETED') {
        detail.result = await handle.result();
      } else if (status !== 'RUNNING') {
        detail.failure = await handle.result().then(
          () => ({ message: status }),
          (err: unknown) => failureOf(err),
        );
      }
      const query = Object.hasOwn(WORKFLOW_PROGRESS_QUERIES, description.type)
        ? WORKFLOW_PROGRESS_QUERIES[description.type as WorkflowName]
        : undefined;
      if (query && status === 'RUNNING') {
        detail.progress = await handle.query(query).catch(() => undefined);
      }
      return detail;
    },
  );

  app.get(
    '/v1/workflows',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'List workflows from Temporal visibility, newest first',
        tags: ['workflows'],
        querystring: z.strictObject({
          type: z.enum(WORKFLOW_TYPES).optional(),
          status: z.enum(WORKFLOW_STATUSES).optional(),
          limit: z.coerce.number().int().min(1).max(1000).default(50),
        }),
        response: { 200: workflowListSchema },
      },
    },
    async (request) => {
      const { type, status, limit } = request.query;
      // Both values come from closed enums, so the visibility query cannot be injected into.
      const clauses = [
        type ? `WorkflowType = '${type}'` : undefined,
        status ? `ExecutionStatus = '${VISIBILITY_STATUS[status]}'` : undefined,
      ].filter(Boolean);
      const workflows: Array<z.infer<typeof workflowSummarySchema>> = [];
      for await (const execution of temporal.workflow.list({
        query: clauses.join(' AND ') || undefined,
        pageSize: limit,
      })) {
        workflows.push({
          workflowId: execution.workflowId,
          runId: execution.runId,
          type: execution.type,
          status: execution.status.name,
          taskQueue: execution.taskQueue,
          startTime: execution.startTime.toISOString(),
          ...(execution.closeTime ? { closeTime: execution.closeTime.toISOString() } : {}),
        });
        if (workflows.length >= limit) break;
      }
      return { workflows };
    },
  );

  app.post(
    '/v1/workflows/:id/cancel',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Request cancellation; the workflow runs its compensations and ends CANCELLED',
        tags: ['workflows'],
        params: z.strictObject({ id: workflowIdSchema }),
        response: {
          202: cancelRequestedSchema,
          404: errorBodySchema,
          409: errorBodySchema,
        },
      },
    },
    async (request, reply) => {
      const handle = temporal.workflow.getHandle(request.params.id);
      const description = await handle.describe();
      if (description.status.name !== 'RUNNING') {
        throw new ConflictError(`workflow ${request.params.id} is ${description.status.name}, not RUNNING`);
      }
      await handle.cancel();
      request.auditWorkflowId = description.workflowId;
      return reply
        .status(202)
        .send({ workflowId: description.workflowId, runId: description.runId, status: 'CANCEL_REQUESTED' as const });
    },
  );
};

const VISIBILITY_STATUS: Record<(typeof WORKFLOW_STATUSES)[number], string> = {
  RUNNING: 'Running',
  COMPLETED: 'Completed',
  FAILED: 'Failed',
  CANCELLED: 'Canceled',
  TERMINATED: 'Terminated',
  CONTINUED_AS_NEW: 'ContinuedAsNew',
  TIMED_OUT: 'TimedOut',
};
