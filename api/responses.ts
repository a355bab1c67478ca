/**
 * The answers every route can give besides its own, declared in one place so that /openapi.json tells clients every
 * status they can meet. An onRoute hook adds them to each route's `schema.response` from what the route declares:
 * its access (`config.role` → 401, 403, 429), its request schemas (→ 400), whether it takes a body (→ 400 for bad
 * JSON, 413, 415), and what any route answers (500, and 503 while the process drains or a dependency is down).
 * Routes declare only what their handler decides: 404 for a missing thing, 409 for a refused state change, 422 for
 * what cannot be done as asked.
 *
 * The same schemas serialize the answers, so an error body that does not match the document fails in the serializer
 * instead of reaching a client.
 */
import type { RouteOptions } from 'fastify';
import { z } from 'zod';
import type { RouteAccess } from './auth';
import { errorBodySchema } from './schemas';

const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/** What each status means for any route; a route's own 404, 409 or 422 is explained by its summary and message. */
const ERROR_DESCRIPTIONS: Readonly<Record<number, string>> = {
  400: 'Invalid request: `message` names the first invalid field, `issues` lists every one',
  401: 'No bearer token, or one that does not authenticate (unknown, malformed, expired, revoked)',
  403: "Authenticated, but the caller's role is below the route's",
  404: 'Not found',
  409: 'Refused in the current state',
  413: 'Body larger than api.bodyLimitBytes',
  415: 'Content-Type other than application/json',
  422:
    'Well-formed, but cannot be done as asked (a pool no host mounts, a migration its policy forbids): ' +
    '`error` names the refusal, `message` the field or the figures it was judged on',
  429: "Over the caller's rate limit; Retry-After says when to try again",
  500: 'Internal error; the server log has the details under `requestId`',
  503: 'Shutting down, or a dependency (Temporal, the identity provider) is unreachable',
};

type RouteSchema = NonNullable<RouteOptions['schema']> & {
  params?: unknown;
  querystring?: unknown;
  headers?: unknown;
  body?: unknown;
  response?: Record<string, unknown>;
};

/** The statuses a route answers whatever its handler does, derived from its declaration. */
export function standardStatuses(route: Pick<RouteOptions, 'method' | 'config' | 'schema'>): number[] {
  const access = (route.config ?? {}) as RouteAccess;
  const schema = (route.schema ?? {}) as RouteSchema;
  const methods = Array.isArray(route.method) ? route.method : [route.method];
  const statuses = new Set([500, 503]);
  if (!access.public) for (const status of [401, 403, 429]) statuses.add(status);
  if (schema.params || schema.querystring || schema.headers || schema.body) statuses.add(400);
  // Fastify parses a body on these methods whether or not the route declares one.
  if (methods.some((m) => BODY_METHODS.has(m))) for (const status of [400, 413, 415]) statuses.add(status);
  return [...statuses].sort((a, b) => a - b);
}

function errorResponse(status: number, own?: z.ZodType) {
  const standard = ERROR_DESCRIPTIONS[status] ?? `Error ${status}`;
  return {
    description: own?.description ? `${own.description}; or: ${standard}` : standard,
    content: { 'application/json': { schema: own ? z.union([own, errorBodySchema]) : errorBodySchema } },
  };
}

/**
 * Adds the standard answers to a route's response schemas (the onRoute hook). A status the route declares with the
 * error body gets its description; one it declares with its own body (the 503 of /ready) may also carry the error
 * body, since the draining hook answers before the handler runs.
 */
export function declareStandardResponses(route: RouteOptions): void {
  const schema = (route.schema ??= {}) as RouteSchema;
  const response = { ...(schema.response ?? {}) };
  for (const [status, declared] of Object.entries(response)) {
    if (declared === errorBodySchema) response[status] = errorResponse(Number(status));
  }
  for (const status of standardStatuses(route)) {
    const declared = response[status];
    if (declared === undefined) response[status] = errorResponse(status);
    else if (declared instanceof z.ZodType) response[status] = errorResponse(status, declared);
  }
  schema.response = response;
}
