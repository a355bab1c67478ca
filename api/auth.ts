/**
 * Authentication and roles, enforced in one place. Every route declares who may call it in its options:
 *
 *   app.get('/v1/things', { config: { role: 'viewer' }, schema: { ... } }, handler);
 *   app.get('/health', { config: { public: true }, schema: { ... } }, handler);
 *
 * A route without a declaration makes app start-up fail. One onRequest hook authenticates the bearer (an API token
 * from PostgreSQL, or a JWT from the configured identity provider), applies the token's rate limit, and compares
 * roles: viewer < operator < admin. Handlers never check roles themselves.
 */
import type { RouteOptions } from 'fastify';
import fp from 'fastify-plugin';
import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { NovacronConfig } from '../config/schema';
import { API_ROLES, authenticateApiToken, looksLikeApiToken, type ApiRole } from '../store/api-tokens';
import { ForbiddenError, ServiceUnavailableError, TooManyRequestsError, UnauthorizedError } from './errors';
import { RateLimiter } from './rate-limiter';
import { SERVICES_PLUGIN } from './services';

export { API_ROLES };
export type Role = ApiRole;

/** What a route declares in `config`: exactly one of a minimum role or `public: true`. */
export interface RouteAccess {
  role?: Role;
  public?: true;
}

/** Who made the request; `actor` is what the audit log records. */
export interface Principal {
  method: 'token' | 'jwt';
  name: string;
  actor: string;
  roles: Role[];
}

declare module 'fastify' {
  interface FastifyContextConfig {
    role?: Role;
    public?: true;
  }
  interface FastifyRequest {
    principal?: Principal;
  }
}

const ROLE_RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };

export function hasRole(held: readonly Role[], required: Role): boolean {
  return held.some((role) => ROLE_RANK[role] >= ROLE_RANK[required]);
}

export class RouteAccessError extends Error {
  override readonly name = 'RouteAccessError';
}

function methods(route: Pick<RouteOptions, 'method'>): string {
  return Array.isArray(route.method) ? route.method.join(',') : String(route.method);
}

/** Called for each route as it is added, so a route that forgot its declaration never serves a request. */
export function assertRouteAccess(route: Pick<RouteOptions, 'method' | 'url' | 'config'>): void {
  const access = (route.config ?? {}) as RouteAccess;
  const where = `${methods(route)} ${route.url}`;
  if (access.public === true && access.role !== undefined) {
    throw new RouteAccessError(`route ${where} declares both public and role ${access.role}; choose one`);
  }
  if (access.public !== true && (access.role === undefined || !(access.role in ROLE_RANK))) {
    throw new RouteAccessError(
      `route ${where} declares no access: add config: { role: 'viewer' | 'operator' | 'admin' } or config: { public: true }`,
    );
  }
}

/** The route's access in OpenAPI terms, so clients (and the role test) read it from /openapi.json. */
export function openApiAccess(config: unknown): Record<string, unknown> {
  const access = (config ?? {}) as RouteAccess;
  if (access.public) return { security: [], 'x-novacron-public': true };
  return { security: [{ bearerAuth: [] }], 'x-novacron-role': access.role };
}

export const BEARER_SECURITY_SCHEME = {
  bearerAuth: { type: 'http', scheme: 'bearer', description: 'An API token (nvc_...) or an OIDC JWT' },
} as const;

type JwtVerifier = (token: string) => Promise<Principal>;

function claimAt(payload: Record<string, unknown>, path: string): unknown {
  let value: unknown = payload;
  for (const key of path.split('.')) {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return value;
}

export function rolesFromClaim(value: unknown): Role[] {
  const names = typeof value === 'string' ? value.split(/[\s,]+/) : Array.isArray(value) ? value : [];
  return API_ROLES.filter((role) => names.includes(role));
}

export async function createJwtVerifier(oidc: NonNullable<NovacronConfig['security']['oidc']>): Promise<JwtVerifier> {
  // jose is published as ES modules only; a dynamic import loads it from this CommonJS module on any Node 20.
  const jose = await import('jose');
  const key: KeyObject | ReturnType<typeof jose.createRemoteJWKSet> = oidc.jwksUrl
    ? jose.createRemoteJWKSet(new URL(oidc.jwksUrl))
    : createPublicKey(readFileSync(oidc.publicKeyFile!));
  return async (token) => {
    let payload: Record<string, unknown>;
    try {
      ({ payload } = await jose.jwtVerify(token, key as KeyObject, {
        issuer: oidc.issuer,
        audience: oidc.audience,
        algorithms: oidc.algorithms,
        clockTolerance: oidc.clockToleranceSeconds,
        requiredClaims: ['sub', 'exp'],
      }));
    } catch (err) {
      if (err instanceof jose.errors.JWKSTimeout || !(err instanceof jose.errors.JOSEError)) {
        throw new ServiceUnavailableError('the identity provider could not be reached to verify the JWT');
      }
      throw new UnauthorizedError(`invalid JWT: ${err.code}`);
    }
    const subject = String(payload.sub);
    return {
      method: 'jwt',
      name: subject,
      actor: `jwt:${subject}`,
      roles: rolesFromClaim(claimAt(payload, oidc.rolesClaim)),
    };
  };
}

/**
 * Adds the two hooks to the whole app (fastify-plugin lifts them out of the plugin's own context); register it before
 * any route, so every route passes through assertRouteAccess.
 */
export const authPlugin = fp(
  async (app) => {
    const { pool, config } = app;
    const verifyJwt = config.security.oidc ? await createJwtVerifier(config.security.oidc) : undefined;
    const limiter = new RateLimiter(config.security.rateLimit);

    const authenticate = async (header: string | undefined): Promise<Principal> => {
      if (!header) throw new UnauthorizedError('missing bearer token: send Authorization: Bearer <token>');
      const match = /^Bearer ([\x21-\x7e]{1,8192})$/i.exec(header);
      if (!match) throw new UnauthorizedError('malformed Authorization header: expected Bearer <token>');
      const bearer = match[1]!;
      if (looksLikeApiToken(bearer) || !verifyJwt) {
        const check = await authenticateApiToken(pool, { token: bearer });
        if (!check.ok) throw new UnauthorizedError(`API token ${check.reason}`);
        const { record } = check;
        return { method: 'token', name: record.name, actor: `token:${record.name}`, roles: record.roles };
      }
      return verifyJwt(bearer);
    };

    app.decorateRequest('principal', undefined);
    app.addHook('onRoute', (route) => assertRouteAccess(route));
    app.addHook('onRequest', async (request) => {
      const access = request.routeOptions.config as RouteAccess;
      if (access.public) return;
      const principal = await authenticate(request.headers.authorization);
      request.principal = principal;
      const wait = limiter.take({ key: principal.actor, nowMs: Date.now() });
      if (wait > 0) throw new TooManyRequestsError(wait);
      // Unmatched URLs have no declaration; they answer 404 only to an authenticated caller.
      const required = access.role ?? 'viewer';
      if (!hasRole(principal.roles, required)) {
        throw new ForbiddenError(
          `${request.method} ${request.routeOptions.url ?? request.url.split('?')[0]} needs role ${required}; ${principal.actor} has ${principal.roles.join(', ') || 'no role'}`,
        );
      }
    });
  },
  { name: 'novacron-auth', fastify: '5.x', dependencies: [SERVICES_PLUGIN] },
);
