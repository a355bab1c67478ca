/** Liveness, readiness and metrics: unauthenticated, cheap, and safe to poll. */
import type { Client } from '@temporalio/client';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { Pool } from 'pg';
import { z } from 'zod';
import type { NovacronMetrics } from '../../observability/metrics';
import { latestClusterBoot } from '../../store/cluster-boots';

export interface HealthRoutesOptions {
  temporal: Client;
  pool: Pool;
  metrics: NovacronMetrics;
}

const readySchema = z.object({
  ready: z.boolean(),
  checks: z.object({ postgres: z.string(), temporal: z.string(), clusterInit: z.string() }),
});

async function settle(check: () => Promise<string>): Promise<string> {
  try {
    return await check();
  } catch (err) {
    return `error: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`;
  }
}

export const healthRoutes: FastifyPluginAsyncZod<HealthRoutesOptions> = async (app, { temporal, pool, metrics }) => {
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
        summary: 'Readiness: PostgreSQL and Temporal reachable, and a cluster init has completed',
        tags: ['health'],
        response: { 200: readySchema, 503: readySchema },
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
        settle(async () => {
          const boot = await latestClusterBoot(pool);
          if (!boot) return 'pending: no cluster init has run';
          if (boot.status === 'running') return `pending: ${boot.workflowId} is running`;
          return boot.status === 'failed' ? `failed: ${boot.workflowId}` : boot.status;
        }),
      ]);
      const ready =
        postgres === 'ok' && temporalState === 'ok' && (clusterInit === 'ready' || clusterInit === 'degraded');
      return reply
        .status(ready ? 200 : 503)
        .send({ ready, checks: { postgres, temporal: temporalState, clusterInit } });
    },
  );

  app.get('/metrics', { config: { public: true }, schema: { hide: true } }, async (_request, reply) => {
    const text = await metrics.registry.metrics();
    return reply.type(metrics.registry.contentType).send(text);
  });
};
