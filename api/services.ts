/**
 * The services every route shares, as one fastify-plugin plugin: its decorators are not encapsulated, so each route
 * plugin reads `app.pool`, `app.temporal`, `app.metrics` and `app.config` instead of being handed them. Other plugins
 * name it in `dependencies`, so Fastify refuses to start if they are registered before it. What the caller opened
 * for the app closes in its onClose hook, after the last request drained.
 */
import type { Client } from '@temporalio/client';
import fp from 'fastify-plugin';
import type { Pool } from 'pg';
import type { NovacronConfig } from '../config/schema';
import type { NovacronMetrics } from '../observability/metrics';

declare module 'fastify' {
  interface FastifyInstance {
    config: NovacronConfig;
    pool: Pool;
    temporal: Client;
    metrics: NovacronMetrics;
  }
}

export interface Services {
  config: NovacronConfig;
  temporal: Client;
  pool: Pool;
  metrics: NovacronMetrics;
  /** Releases what the caller opened for the app (connections, pools). */
  onClose?: () => Promise<void>;
}

export const SERVICES_PLUGIN = 'novacron-services';

export const servicesPlugin = fp<Services>(
  async (app, services) => {
    app.decorate('config', services.config);
    app.decorate('pool', services.pool);
    app.decorate('temporal', services.temporal);
    app.decorate('metrics', services.metrics);
    const { onClose } = services;
    if (onClose) app.addHook('onClose', async () => onClose());
  },
  { name: SERVICES_PLUGIN, fastify: '5.x' },
);
