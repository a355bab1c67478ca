/**
 * The NovaCron API as a Fastify app. server.ts listens; tests `inject` into the same instance. The shared services
 * and authentication are fastify-plugin plugins (services.ts, auth.ts); routes declare zod schemas, which give
 * validation, types and the OpenAPI document at /openapi.json, completed by the answers every route can give
 * (responses.ts).
 */
import fastifySwagger from '@fastify/swagger';
import Fastify, {
  type FastifyInstance,
  type FastifyReply,
  type FastifyServerOptions,
  type RouteOptions,
} from 'fastify';
import {
  jsonSchemaTransform,
  jsonSchemaTransformObject,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import type { Logger } from 'pino';
import { recordAudit } from '../store/audit-log';
import { authPlugin, BEARER_SECURITY_SCHEME, openApiAccess } from './auth';
import { registerErrorHandler } from './errors';
import { declareStandardResponses } from './responses';
import { checkResponsesAgainstDocument } from './response-contract';
import { auditRoutes } from './routes/audit';
import { clusterRoutes } from './routes/cluster';
import { healthRoutes } from './routes/health';
import { hostRoutes } from './routes/hosts';
import { imageRoutes } from './routes/images';
import { migrationRoutes } from './routes/migrations';
import { tokenRoutes } from './routes/tokens';
import { vmRoutes } from './routes/vms';
import { workflowRoutes } from './routes/workflows';
import { servicesPlugin, type Services } from './services';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by handlers that start or signal a workflow, so the audit row links to it. */
    auditWorkflowId?: string;
    /** Set by handlers whose target is not the `id` path parameter (a token's name). */
    auditTarget?: string;
  }
}

export interface AppDeps extends Services {
  logger: Logger;
  /** The cluster boot this process's readiness follows (the stack's boot at start); see routes/health.ts. */
  bootWorkflowId?: string;
  /** How long POST /v1/vms/:id/migrate waits for the plan (default 30 s); see routes/migrations.ts. */
  migrationPlanWaitMs?: number;
  /** Check every answer against /openapi.json (tests); defaults to NOVACRON_CHECK_RESPONSES=1. */
  checkResponses?: boolean;
}

const SAFE_REQUEST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
// Malformed input never reached a handler; it is answered, not audited, so bad input writes nothing. Neither are
// 401 (no actor to record) nor 429 (a flood would write a row per request). A 403 is audited: a known actor was
// refused.
const UNAUDITED_STATUS = new Set([400, 401, 413, 415, 429]);

/** A route as the onRoute hook saw it, one per method, its standard answers added. */
export type RegisteredRoute = Pick<RouteOptions, 'url' | 'config' | 'schema'> & { method: string };

export interface BuiltApp {
  app: FastifyInstance;
  /** Every route Fastify registered, HEAD routes included. */
  routes: readonly RegisteredRoute[];
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
  const routes: RegisteredRoute[] = [];
  app.addHook('onRoute', (route) => {
    declareStandardResponses(route);
    for (const method of [route.method].flat()) {
      routes.push({ method, url: route.url, config: route.config, schema: route.schema });
    }
  });

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
  await app.register(servicesPlugin, { config, pool, metrics, temporal: deps.temporal, onClose: deps.onClose });
  await app.register(authPlugin);
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
  if (deps.checkResponses ?? process.env.NOVACRON_CHECK_RESPONSES === '1') checkResponsesAgainstDocument(app);

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
    // Schemas registered with an id (the error body) become components that every answer refers to.
    transformObject: jsonSchemaTransformObject,
  });
  await app.register(healthRoutes, { bootWorkflowId: deps.bootWorkflowId });
  await app.register(clusterRoutes);
  await app.register(workflowRoutes);
  await app.register(hostRoutes);
  await app.register(vmRoutes);
  await app.register(imageRoutes);
  await app.register(migrationRoutes, { planWaitMs: deps.migrationPlanWaitMs });
  await app.register(tokenRoutes);
  await app.register(auditRoutes);
  app.get(
    '/openapi.json',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'This document (OpenAPI 3.1)',
        tags: ['meta'],
        response: { 200: z.looseObject({ openapi: z.string(), paths: z.record(z.string(), z.unknown()) }) },
      },
    },
    async () => app.swagger() as unknown as { openapi: string; paths: Record<string, unknown> },
  );
  await app.ready();

  return {
    app,
    routes,
    async close() {
      closing = true;
      await app.close();
    },
  };
}
