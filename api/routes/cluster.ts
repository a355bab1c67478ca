/** Cluster initialization: start (idempotent by request id) and the latest recorded boot. */
import { WorkflowIdReusePolicy } from '@temporalio/common';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { latestClusterBoot } from '../../store/cluster-boots';
import { ComponentGraphError, planBoot } from '../../domain/component-graph';
import { CLUSTER_COMPONENTS } from '../../workflows/cluster-components';
import { clusterInitInput } from '../../domain/cluster-init';
import { ApiError, NotFoundError } from '../errors';
import { errorBodySchema, requestIdSchema, workflowStartedSchema } from '../schemas';
import { startOrFindWorkflow } from './start-workflow';

const componentNames = CLUSTER_COMPONENTS.map((c) => c.name) as [string, ...string[]];

export const clusterBootSchema = z.object({
  workflowId: z.string(),
  nodeId: z.string(),
  status: z.string(),
  startedAt: z.string(),
  completedAt: z.string().optional(),
  report: z.unknown(),
});

export const clusterRoutes: FastifyPluginAsyncZod = async (app) => {
  const { config, pool } = app;
  app.post(
    '/v1/cluster/init',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Start cluster initialization; the same requestId returns the same workflow',
        tags: ['cluster'],
        headers: z.object({ 'idempotency-key': requestIdSchema.optional() }),
        body: z.strictObject({
          requestId: requestIdSchema.optional(),
          disabledComponents: z.array(z.enum(componentNames)).max(componentNames.length).optional(),
        }),
        response: { 200: workflowStartedSchema, 202: workflowStartedSchema },
      },
      // A POST without a body means "all defaults"; Fastify hands validation null for it.
      preValidation: async (request) => {
        request.body ??= {};
      },
    },
    async (request, reply) => {
      const input = clusterInitInput(config, request.body.disabledComponents);
      try {
        planBoot(CLUSTER_COMPONENTS.filter((c) => !input.disabledComponents?.includes(c.name)));
      } catch (err) {
        if (err instanceof ComponentGraphError)
          throw new ApiError(400, 'BadRequest', `body.disabledComponents: ${err.message}`);
        throw err;
      }
      const requestId = request.body.requestId ?? request.headers['idempotency-key'] ?? randomUUID();
      const workflowId = `cluster-init-${requestId}`;
      request.auditWorkflowId = workflowId;
      const { status, ...started } = await startOrFindWorkflow(app, {
        type: 'initializeCluster',
        workflowId,
        args: [input],
        // A finished init with this id must not run again: the request id is an idempotency key, and finds it.
        reusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
        whenEnded: 'find',
      });
      return reply.status(status).send(started);
    },
  );

  app.get(
    '/v1/cluster/boot',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'The most recent recorded cluster boot report',
        tags: ['cluster'],
        response: { 200: clusterBootSchema, 404: errorBodySchema },
      },
    },
    async () => {
      const boot = await latestClusterBoot(pool);
      if (!boot) throw new NotFoundError('no cluster boot has been recorded yet; POST /v1/cluster/init');
      return boot;
    },
  );
};
