/** Shared zod schemas: one schema gives validation, the TypeScript type and the OpenAPI document. */
import { z } from 'zod';

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

export const errorBodySchema = z.object({
  error: z.string(),
  message: z.string(),
  requestId: z.string(),
  issues: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
});

export const WORKFLOW_STATUSES = [
  'RUNNING',
  'COMPLETED',
  'FAILED',
  'CANCELLED',
  'TERMINATED',
  'CONTINUED_AS_NEW',
  'TIMED_OUT',
] as const;

export const WORKFLOW_TYPES = [
  'initializeCluster',
  'vmCreate',
  'vmStart',
  'vmStop',
  'vmReboot',
  'vmDelete',
  'fleetMonitor',
  'registerImage',
  'replicateImage',
] as const;

export const workflowStartedSchema = z.object({
  workflowId: z.string(),
  runId: z.string(),
  existing: z.boolean(),
});
