/**
 * Live migration: start one (POST /v1/vms/:id/migrate), list and show the migrations rows with live progress.
 * The route refuses from the store what it can answer at once (404, 409, 422) and writes nothing itself; then it
 * starts migrateVm and waits, bounded, until the plan is made, so a refusal (the plan predicts it cannot converge
 * under the policy) is the request's answer rather than a workflow an operator must look up. A migration is
 * cancelled like any workflow, with POST /v1/workflows/:id/cancel.
 */
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { WorkflowIdReusePolicy } from '@temporalio/common';
import type { FastifyInstance } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import {
  migrationPolicySchema,
  migrationWorkflowId,
  type MigrationPhase,
  type MigrationPlan,
  type MigrationProgress,
  type MigrationResult,
} from '../../domain/migration';
import { LOCAL_STORAGE_POOL } from '../../domain/vm-spec';
import { getHost } from '../../store/hosts';
import {
  getMigration,
  listMigrations,
  MIGRATION_RECORD_STATES,
  type MigrationRecord,
} from '../../store/migration-records';
import { getVm } from '../../store/vms';
import { ConflictError, migrationFailureError, NotFoundError, UnprocessableError } from '../errors';
import { migrationListSchema, migrationRecordSchema, migrationStartedSchema } from '../migration-schemas';
import { errorBodySchema, requestIdSchema, WORKFLOW_PROGRESS_QUERIES, workflowIdSchema } from '../schemas';
import { hostIdSchema } from './hosts';
import { startOrFindWorkflow } from './start-workflow';
import { failureOf } from './workflows';

export interface MigrationRouteOptions {
  /** How long POST /v1/vms/:id/migrate waits for the plan before it answers 202 without one. */
  planWaitMs?: number;
}

const PLAN_WAIT_MS = 30_000;
const PLAN_POLL_MS = 100;
/** A query goes through a worker; one that is away must not hold the request. */
const QUERY_DEADLINE_MS = 2000;
/** Phases before the plan is accepted: `refused` ends in a MigrationRefused failure a moment later. */
const UNPLANNED: ReadonlySet<MigrationPhase> = new Set(['planning', 'refused']);
const LIVE_STATES: ReadonlySet<MigrationRecord['state']> = new Set(['planning', 'queued', 'running']);
const PROGRESS_QUERY = WORKFLOW_PROGRESS_QUERIES.migrateVm;

const migrateBodySchema = z.strictObject({
  /** Unset: placement chooses among the other hosts that mount the VM's storage pool. */
  targetHostId: hostIdSchema.optional(),
  policy: migrationPolicySchema.optional(),
});

type Started = z.infer<typeof migrationStartedSchema>;
type Temporal = FastifyInstance['temporal'];

/** The workflow's live progress, or undefined while it has none to give (not started, no worker answering). */
async function liveProgress(temporal: Temporal, workflowId: string): Promise<MigrationProgress | undefined> {
  const handle = temporal.workflow.getHandle(workflowId);
  return temporal.connection
    .withDeadline(Date.now() + QUERY_DEADLINE_MS, () => handle.query<MigrationProgress>(PROGRESS_QUERY))
    .catch(() => undefined);
}

/**
 * Polls the workflow until its plan is accepted, it ends, or the wait is over. A typed failure that ended it
 * before anything moved is thrown as its API error; any other ending is the client's to follow.
 */
async function awaitPlan(
  app: Pick<FastifyInstance, 'temporal' | 'pool'>,
  input: { workflowId: string; waitMs: number; targetNamed: boolean },
): Promise<MigrationPlan | undefined> {
  const handle = app.temporal.workflow.getHandle(input.workflowId);
  const storedPlan = async () => (await getMigration(app.pool, input.workflowId))?.plan;
  const deadline = Date.now() + input.waitMs;
  for (;;) {
    const { status } = await handle.describe();
    if (status.name === 'COMPLETED') return ((await handle.result()) as MigrationResult).plan ?? storedPlan();
    if (status.name === 'FAILED') {
      const failure = await handle.result().then(
        () => undefined,
        (err: unknown) => (err instanceof WorkflowFailedError ? failureOf(err) : undefined),
      );
      // The workflow id leads to the migrations row, which a refusal leaves with its plan and figures.
      const named = failure && { ...failure, message: `${failure.message} (migration ${input.workflowId})` };
      const refused = named && migrationFailureError(named, { targetNamed: input.targetNamed });
      if (refused) throw refused;
      return storedPlan();
    }
    if (status.name !== 'RUNNING') return storedPlan();
    const progress = await liveProgress(app.temporal, input.workflowId);
    if (progress && !UNPLANNED.has(progress.phase)) return storedPlan();
    if (Date.now() >= deadline) return undefined;
    await sleep(PLAN_POLL_MS);
  }
}

/** The row, with the workflow's own progress while it runs: fresher than the phases the row stores. */
async function withLiveProgress(temporal: Temporal, record: MigrationRecord): Promise<MigrationRecord> {
  if (!LIVE_STATES.has(record.state)) return record;
  const progress = await liveProgress(temporal, record.id);
  return progress ? { ...record, progress } : record;
}

export const migrationRoutes: FastifyPluginAsyncZod<MigrationRouteOptions> = async (app, options) => {
  const { pool, temporal } = app;
  const planWaitMs = options.planWaitMs ?? PLAN_WAIT_MS;

  /** Everything the store can refuse at once, in the order a caller fixes them: the VM, the target, the VM's state. */
  const checkMigratable = async (vmId: string, targetHostId: string | undefined): Promise<void> => {
    const vm = await getVm(pool, vmId);
    if (!vm) throw new NotFoundError(`VM ${vmId} does not exist`);
    if (targetHostId !== undefined) {
      const target = await getHost(pool, targetHostId);
      if (!target) throw new NotFoundError(`body.targetHostId: host ${targetHostId} does not exist`);
      if (target.id === vm.hostId) {
        throw new UnprocessableError(
          `body.targetHostId: VM ${vm.name} already runs on ${target.id}; the target must be another host`,
          'InvalidMigrationTarget',
        );
      }
      if (target.state !== 'up') throw new ConflictError(`body.targetHostId: host ${target.id} is ${target.state}`);
      if (!target.lease?.alive) {
        throw new ConflictError(`body.targetHostId: host ${target.id} has no live lease (is its agent running?)`);
      }
      const storagePool = vm.spec.storagePool;
      if (storagePool !== LOCAL_STORAGE_POOL && !Object.hasOwn(target.storagePools, storagePool)) {
        throw new UnprocessableError(
          `body.targetHostId: host ${target.id} does not mount storage pool ${storagePool}, where ${vm.name}'s disks are`,
          'TargetLacksStoragePool',
        );
      }
    }
    if (vm.operationWorkflowId) {
      throw new ConflictError(`VM ${vm.name} is busy with workflow ${vm.operationWorkflowId}`);
    }
    if (vm.state !== 'running' || !vm.hostId) {
      throw new ConflictError(`VM ${vm.name} is ${vm.state}; only a running VM migrates`);
    }
    if (vm.spec.storagePool === LOCAL_STORAGE_POOL) {
      throw new UnprocessableError(
        `VM ${vm.name} has its disks on its host's local storage; only VMs on a shared storage pool migrate live`,
        'LocalStorageNotMigratable',
      );
    }
  };

  /** A request id seen before answers with its migration, whatever the VM's state has become since. */
  const alreadyStarted = async (workflowId: string): Promise<{ runId: string } | undefined> => {
    try {
      const { runId } = await temporal.workflow.getHandle(workflowId).describe();
      return { runId };
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return undefined;
      throw err;
    }
  };

  app.post(
    '/v1/vms/:id/migrate',
    {
      config: { role: 'operator' },
      schema: {
        summary:
          'Live-migrate a running VM (migrateVm); answers once the plan is made: 422 when the policy refuses it, ' +
          '202 with the plan otherwise (without it if planning outlasts the wait)',
        tags: ['migrations'],
        params: z.strictObject({ id: z.uuid('must be a VM id (a UUID)') }),
        headers: z.object({ 'idempotency-key': requestIdSchema.optional() }),
        body: migrateBodySchema,
        response: {
          200: migrationStartedSchema,
          202: migrationStartedSchema,
          404: errorBodySchema,
          409: errorBodySchema,
          422: errorBodySchema,
        },
      },
      // A POST without a body means "placement's target, the default policy".
      preValidation: async (request) => {
        (request as { body: unknown }).body ??= {};
      },
    },
    async (request, reply) => {
      const vmId = request.params.id;
      const { targetHostId, policy } = request.body;
      const key = request.headers['idempotency-key'];
      const workflowId = migrationWorkflowId({ vmId, requestId: key ?? randomUUID().slice(0, 8) });
      const seen = key !== undefined ? await alreadyStarted(workflowId) : undefined;
      let started: Omit<Started, 'plan'> & { status: 200 | 202 };
      if (seen) {
        started = { status: 200, workflowId, runId: seen.runId, vmId, existing: true };
      } else {
        await checkMigratable(vmId, targetHostId);
        const args = { vmId, ...(targetHostId ? { targetHostId } : {}), ...(policy ? { policy } : {}) };
        const result = await startOrFindWorkflow(app, {
          type: 'migrateVm',
          workflowId,
          args: [args],
          reusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
          whenEnded: 'find',
        });
        started = { ...result, vmId };
      }
      request.auditWorkflowId = workflowId;
      const plan = await awaitPlan(app, { workflowId, waitMs: planWaitMs, targetNamed: targetHostId !== undefined });
      const { status, ...body } = started;
      return reply.status(status).send({ ...body, ...(plan ? { plan } : {}) });
    },
  );

  app.get(
    '/v1/migrations',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'Migrations, newest first, optionally of one VM or in one state; progress as last stored',
        tags: ['migrations'],
        querystring: z.strictObject({
          vmId: z.uuid().optional(),
          state: z.enum(MIGRATION_RECORD_STATES).optional(),
          limit: z.coerce.number().int().min(1).max(1000).default(100),
        }),
        response: { 200: migrationListSchema },
      },
    },
    async (request) => {
      const { vmId, state, limit } = request.query;
      return {
        migrations: await listMigrations(pool, { limit, ...(vmId ? { vmId } : {}), ...(state ? { state } : {}) }),
      };
    },
  );

  app.get(
    '/v1/migrations/:id',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'One migration by its workflow id: policy, plan, escalations, result, and live progress while it runs',
        tags: ['migrations'],
        params: z.strictObject({ id: workflowIdSchema }),
        response: { 200: migrationRecordSchema, 404: errorBodySchema },
      },
    },
    async (request) => {
      const record = await getMigration(pool, request.params.id);
      if (!record) throw new NotFoundError(`migration ${request.params.id} does not exist`);
      return withLiveProgress(temporal, record);
    },
  );
};
