/**
 * The NovaCron API as a Fastify plugin. server.ts listens; tests `inject` into the same instance. Routes declare
 * zod schemas, which give validation, types and the OpenAPI document at /openapi.json.
 */
import fastifySwagger from '@fastify/swagger';
import type { Client } from '@temporalio/client';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyServerOptions } from 'fastify';
import {
  jsonSchemaTransform,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Pool } from 'pg';
import type { Logger } from 'pino';
import type { NovacronConfig } from '../config/schema';
import type { NovacronMetrics } from '../observability/metrics';
import { recordAudit } from '../store/audit-log';
import { BEARER_SECURITY_SCHEME, openApiAccess, registerAuth } from './auth';
import { registerErrorHandler } from './errors';
import { auditRoutes } from './routes/audit';
import { clusterRoutes } from './routes/cluster';
import { healthRoutes } from './routes/health';
import { hostRoutes } from './routes/hosts';
import { imageRoutes } from './routes/images';
import { tokenRoutes } from './routes/tokens';
import { vmRoutes } from './routes/vms';
import { workflowRoutes } from './routes/workflows';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by handlers that start or signal a workflow, so the audit row links to it. */
    auditWorkflowId?: string;
    /** Set by handlers whose target is not the `id` path parameter (a token's name). */
    auditTarget?: string;
  }
}

export interface AppDeps {
  config: NovacronConfig;
  temporal: Client;
  pool: Pool;
  metrics: NovacronMetrics;
  logger: Logger;
  /** Releases what the caller opened for the app (connections, pools) after the last request drained. */
  onClose?: () => Promise<void>;
}

const SAFE_REQUEST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
// Malformed input never reached a handler; it is answered, not audited, so bad input writes nothing. Neither are
// 401 (no actor to record) nor 429 (a flood would write a row per request). A 403 is audited: a known actor was
// refused.
const UNAUDITED_STATUS = new Set([400, 401, 413, 415, 429]);

export interface BuiltApp {
  app: FastifyInstance;
  /** Stop accepting requests (503), drain in-flight ones, then run onClose hooks. */
  close(): Promise<void>;
}

export async function buildApp(deps: AppDeps): Promise<BuiltApp> {
  const { config, metrics, pool } = deps;
  const options: FastifyServerOptions & { https?: { cert: Buffer; key: Buffer } } = {
    loggerInstance: deps.logger,
    bodyLimit: config.api.bodyLimitBytes,
    requestIdHeader: false,
    // A URL that cannot be decoded never reaches routing or the error handler; answer it in the same shape.
    frameworkErrors: (error, request, reply) => {
      void (reply as FastifyReply)
        .status(400)
        .send({ error: 'BadRequest', message: error.message, requestId: String(request.id) });
    },
    genReqId: (req) => {
      const header = req.headers['x-request-id'];
      return typeof header === 'string' && SAFE_REQUEST_ID.test(header) ? header : randomUUID();
    },
    ...(config.api.tls
      ? { https: { cert: readFileSync(config.api.tls.certFile), key: readFileSync(config.api.tls.keyFile) } }
      : {}),
  };
  const app = Fastify(options).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  registerErrorHandler(app);

  let closing = false;
  app.decorateRequest('auditWorkflowId', undefined);
  app.decorateRequest('auditTarget', undefined);
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', String(request.id));
    if (closing)
      return reply
        .status(503)
        .header('connection', 'close')
        .send({ error: 'ServiceUnavailable', message: 'shutting down', requestId: String(request.id) });
  });
  await registerAuth(app, { pool, config });
  app.addHook('onResponse', async (request, reply) => {
    const labels = {
      method: request.method,
      route: request.routeOptions.url ?? 'unmatched',
      status: String(reply.statusCode),
    };
    metrics.httpRequests.inc(labels);
    metrics.httpDuration.observe(labels, reply.elapsedTime / 1000);
  });
  // The audit row is written before the response leaves, so a client that saw the answer can find the row.
  app.addHook('onSend', async (request, reply, payload) => {
    const route = request.routeOptions.url ?? 'unmatched';
    if (MUTATING.has(request.method) && request.routeOptions.url && !UNAUDITED_STATUS.has(reply.statusCode)) {
      await recordAudit(pool, {
        actor: request.principal?.actor ?? 'anonymous',
        action: `${request.method} ${route}`,
        target: request.auditTarget ?? (request.params as Record<string, string> | undefined)?.id,
        requestId: String(request.id),
        workflowId: request.auditWorkflowId,
        outcome: reply.statusCode < 400 ? 'accepted' : reply.statusCode >= 500 ? 'failed' : 'rejected',
        details: { status: reply.statusCode },
      }).catch((err: unknown) => request.log.error({ err }, 'audit write failed'));
    }
    return payload;
  });

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'NovaCron API', version: '1', description: 'Control plane for KVM/libvirt fleets' },
      components: { securitySchemes: BEARER_SECURITY_SCHEME },
    },
    transform: (input) => {
      const transformed = jsonSchemaTransform(input);
      return { ...transformed, schema: { ...transformed.schema, ...openApiAccess(input.route.config) } };
    },
  });
  await app.register(healthRoutes, { temporal: deps.temporal, pool, metrics });
  await app.register(clusterRoutes, { config, temporal: deps.temporal, pool, metrics });
  await app.register(workflowRoutes, { temporal: deps.temporal });
  await app.register(hostRoutes, { pool, metrics });
  await app.register(vmRoutes, { config, temporal: deps.temporal, pool, metrics });
  await app.register(imageRoutes, { config, temporal: deps.temporal, pool, metrics });
  await app.register(tokenRoutes, { pool });
  await app.register(auditRoutes, { pool });
  app.get('/openapi.json', { config: { role: 'viewer' }, schema: { hide: true } }, async () => app.swagger());
  const onClose = deps.onClose;
  if (onClose) app.addHook('onClose', async () => onClose());
  await app.ready();

  return {
    app,
    async close() {
      closing = true;
      await app.close();
    },
  };
}
