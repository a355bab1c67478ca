/**
 * zod schemas of live migration's shapes (domain/migration.ts) for the API's answers and its OpenAPI document. Each
 * is checked at compile time to give exactly the domain type, both ways (exact-schema.ts): a field added to the
 * contract and not here fails the build instead of being stripped from answers by the serializer.
 */
import { z } from 'zod';
import {
  migrationPolicySchema,
  type EscalationKind,
  type MigrationEscalation,
  type MigrationMode,
  type MigrationOutcome,
  type MigrationPhase,
  type MigrationPlan,
  type MigrationProgress,
  type MigrationResult,
} from '../domain/migration';
import { MIGRATION_RECORD_STATES, type MigrationRecord } from '../store/migration-records';
import { exactly } from './exact-schema';

export const MIGRATION_MODES = ['datacenter', 'hybrid', 'internet'] as const satisfies readonly MigrationMode[];
export const ESCALATION_KINDS = [
  'raise-downtime',
  'auto-converge',
  'post-copy',
  'abort',
] as const satisfies readonly EscalationKind[];
export const MIGRATION_PHASES = [
  'queued',
  'planning',
  'preparing',
  'precopy',
  'postcopy',
  'committing',
  'rolling-back',
  'completed',
  'failed',
  'cancelled',
  'refused',
] as const satisfies readonly MigrationPhase[];
export const MIGRATION_OUTCOMES = [
  'completed',
  'cancelled',
  'failed',
  'refused',
] as const satisfies readonly MigrationOutcome[];
export const migrationPlanSchema = exactly<MigrationPlan>()(
  z.object({
    mode: z.enum(MIGRATION_MODES),
    parameters: z.object({
      parallelConnections: z.number(),
      maxDowntimeMs: z.number(),
      bandwidthMiBps: z.number().optional(),
      autoConverge: z.boolean(),
      postCopy: z.boolean(),
    }),
    prediction: z.object({
      converges: z.boolean(),
      passes: z.number(),
      totalMs: z.number(),
      downtimeMs: z.number(),
      bytes: z.number(),
      reason: z.string().optional(),
    }),
    mitigation: z.enum(['none', 'auto-converge', 'post-copy']),
    deadlineMs: z.number(),
    inputs: z.object({
      memoryBytes: z.number(),
      dirtyRateBytesPerSecond: z.number(),
      linkBandwidthBytesPerSecond: z.number(),
      linkRttMs: z.number(),
      mode: z.enum(MIGRATION_MODES),
      spareCpus: z.number().optional(),
    }),
  }),
);

export const migrationEscalationSchema = exactly<MigrationEscalation>()(
  z.object({
    seq: z.number(),
    kind: z.enum(ESCALATION_KINDS),
    pass: z.number(),
    dataRemainingBytes: z.number(),
    value: z.number().optional(),
    reason: z.string(),
    atMs: z.number(),
  }),
);

export const migrationProgressSchema = exactly<MigrationProgress>()(
  z.object({
    workflowId: z.string(),
    vmId: z.string(),
    sourceHostId: z.string(),
    targetHostId: z.string().optional(),
    phase: z.enum(MIGRATION_PHASES),
    dataTotalBytes: z.number().optional(),
    dataProcessedBytes: z.number().optional(),
    dataRemainingBytes: z.number().optional(),
    dirtyRateBytesPerSecond: z.number().optional(),
    pass: z.number().optional(),
    throughputBytesPerSecond: z.number().optional(),
    etaMs: z.number().optional(),
    elapsedMs: z.number().optional(),
    escalations: z.array(migrationEscalationSchema),
  }),
);

export const migrationResultSchema = exactly<MigrationResult>()(
  z.object({
    workflowId: z.string(),
    vmId: z.string(),
    outcome: z.enum(MIGRATION_OUTCOMES),
    finalHostId: z.string(),
    sourceHostId: z.string(),
    targetHostId: z.string().optional(),
    plan: migrationPlanSchema.optional(),
    escalations: z.array(migrationEscalationSchema),
    measured: z
      .object({ totalMs: z.number(), downtimeMs: z.number(), bytes: z.number(), passes: z.number(), jobMs: z.number() })
      .optional(),
    workflowMs: z.number(),
    reason: z.string().optional(),
  }),
);

/** A migrations row; `progress` is the workflow's live answer while it runs, the last stored one otherwise. */
export const migrationRecordSchema = exactly<MigrationRecord>()(
  z.object({
    id: z.string(),
    vmId: z.string(),
    sourceHostId: z.string(),
    targetHostId: z.string().optional(),
    state: z.enum(MIGRATION_RECORD_STATES),
    policy: migrationPolicySchema,
    plan: migrationPlanSchema.optional(),
    progress: migrationProgressSchema.optional(),
    escalations: z.array(migrationEscalationSchema),
    result: migrationResultSchema.optional(),
    error: z.string().optional(),
    finalHostId: z.string().optional(),
    createdAt: z.string(),
    startedAt: z.string().optional(),
    finishedAt: z.string().optional(),
  }),
);

export const migrationListSchema = z.object({ migrations: z.array(migrationRecordSchema) });

export const migrationStartedSchema = z.object({
  workflowId: z.string(),
  runId: z.string(),
  vmId: z.string(),
  existing: z.boolean(),
  /** Present once the plan is made within the route's wait; GET /v1/migrations/:id has it later otherwise. */
  plan: migrationPlanSchema.optional(),
});
