/**
 * Liveness, readiness and metrics: unauthenticated, cheap, and safe to poll.
 *
 * Readiness follows what this process needs to serve: PostgreSQL and Temporal reachable, and its first boot done.
 * That boot is the one named at start (`bootWorkflowId`: the stack passes the init it starts for this node); with
 * none named, it is done once any boot of this node came up. A later init, such as one an admin starts with
 * POST /v1/cluster/init, neither holds readiness while it runs nor drops it if it fails: behind a load balancer,
 * every replica would otherwise leave service at once, the one the admin needs to follow the init included.
 */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { Pool } from 'pg';
import { z } from 'zod';
import { bootForReadiness, type BootRecordStatus } from '../../store/cluster-boots';

export interface HealthRoutesOptions {
  bootWorkflowId?: string | undefined;
}

const readySchema = z
  .object({
    ready: z.boolean(),
    checks: z.object({ postgres: z.string(), temporal: z.string(), clusterInit: z.string() }),
  })
  .describe('Not ready: `checks` says which dependency or boot is not there yet');

const BOOTED: ReadonlySet<BootRecordStatus> = new Set(['ready', 'degraded']);

async function settle(check: () => Promise<string>): Promise<string> {
  try {
    return await check();
  } catch (err) {
    return `error: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`;
  }
}

/** The state of the boot readiness follows: `ready` or `degraded` once it came up. */
async function firstBootState(pool: Pool, input: { nodeId: string; bootWorkflowId?: string }): Promise<string> {
  const boot = await bootForReadiness(pool, input);
  if (!boot) {
    return input.bootWorkflowId
      ? `pending: ${input.bootWorkflowId} has not started`
      : `pending: no cluster init has run on node ${input.nodeId}`;
  }
  if (BOOTED.has(boot.status)) return boot.status;
  return boot.status === 'running' ? `pending: ${boot.workflowId} is running` : `failed: ${boot.workflowId}`;
}

export const healthRoutes: FastifyPluginAsyncZod<HealthRoutesOptions> = async (app, { bootWorkflowId }) => {
  const { pool, temporal, metrics, config } = app;

  app.get(
    '/health',
    {
      config: { public: true },
      schema: {
        summary: 'Liveness: the process serves requests',
        tags: ['health'],
        response: { 200: z.object({ status: z.literal('ok') }) },
      },
    },
    async () => ({ status: 'ok' as const }),
  );

  app.get(
    '/ready',
    {
      config: { public: true },
      schema: {
        summary: "Readiness: PostgreSQL and Temporal reachable, and this process's first cluster boot came up",
        tags: ['health'],
        response: { 200: readySchema.describe('Ready'), 503: readySchema },
      },
    },
    async (_request, reply) => {
      const [postgres, temporalState, clusterInit] = await Promise.all([
        settle(async () => {
          await pool.query('SELECT 1');
          return 'ok';
        }),
        settle(async () => {
          await temporal.workflowService.getSystemInfo({});
          return 'ok';
        }),
        settle(() =>
          firstBootState(pool, { nodeId: config.system.nodeId, ...(bootWorkflowId ? { bootWorkflowId } : {}) }),
        ),
      ]);
      const ready = postgres === 'ok' && temporalState === 'ok' && BOOTED.has(clusterInit as BootRecordStatus);
      return reply
        .status(ready ? 200 : 503)
        .send({ ready, checks: { postgres, temporal: temporalState, clusterInit } });
    },
  );

  app.get(
    '/metrics',
    {
      config: { public: true },
      schema: {
        summary: 'Prometheus metrics of this process',
        tags: ['health'],
        response: {
          200: { description: 'The Prometheus text format', content: { 'text/plain': { schema: z.string() } } },
        },
      },
    },
    async (_request, reply) => {
      const text = await metrics.registry.metrics();
      return reply.type(metrics.registry.contentType).send(text);
    },
  );
};
