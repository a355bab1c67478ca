/** Shared zod schemas: one schema gives validation, the TypeScript type and the OpenAPI document. */
import type { Workflow } from '@temporalio/common';
import { z } from 'zod';
import type * as workflows from '../workflows';

export const workflowIdSchema = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, 'must be letters, digits and . _ : - (at most 200)');

export const requestIdSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'must be letters, digits and . _ - (at most 64)');

/** The OpenAPI component every error answer refers to, so generated clients have one error type. */
export const ERROR_BODY_ID = 'ErrorBody';

export const errorBodySchema = z
  .object({
    error: z.string(),
    message: z.string(),
    requestId: z.string(),
    issues: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
  })
  .meta({ id: ERROR_BODY_ID });

export const WORKFLOW_STATUSES = [
  'RUNNING',
  'COMPLETED',
  'FAILED',
  'CANCELLED',
  'TERMINATED',
  'CONTINUED_AS_NEW',
  'TIMED_OUT',
] as const;

type Exported = typeof workflows;
/** The workflow functions the control worker registers, by name (the queries it also exports are left out). */
export type WorkflowFunctions = {
  [K in keyof Exported as Exported[K] extends Workflow ? K : never]: Exported[K];
};
export type WorkflowName = keyof WorkflowFunctions;

/** Every workflow type, with the query it answers with its live progress: the type makes the list complete. */
export const WORKFLOW_PROGRESS_QUERIES: Readonly<Record<WorkflowName, string>> = {
  initializeCluster: 'bootReport',
  vmCreate: 'vmProgress',
  vmStart: 'vmProgress',
  vmStop: 'vmProgress',
  vmReboot: 'vmProgress',
  vmDelete: 'vmProgress',
  fleetMonitor: 'fleetStatus',
  registerImage: 'imageProgress',
  replicateImage: 'imageProgress',
  migrateVm: 'migrationProgress',
  failoverHost: 'failoverProgress',
};

/** The workflow types GET /v1/workflows filters by. */
export const WORKFLOW_TYPES = Object.keys(WORKFLOW_PROGRESS_QUERIES) as [WorkflowName, ...WorkflowName[]];

export const workflowStartedSchema = z.object({
  workflowId: z.string(),
  runId: z.string(),
  existing: z.boolean(),
});
