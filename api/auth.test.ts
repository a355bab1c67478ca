/**
 * Integration: authentication and roles on the real app and PostgreSQL. Walks every route of /openapi.json and
 * checks its declared role against what the hook enforces; covers expired, revoked, tampered and malformed tokens,
 * OIDC JWTs signed with a static key, token management, per-token rate limits and the audit trail of who did what.
 */
import type { Client, Connection } from '@temporalio/client';
import type { InjectOptions } from 'fastify';
import Fastify from 'fastify';
import { exportJWK, SignJWT } from 'jose';
import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import type { NovacronConfig } from '../config/schema';
import { createMetrics } from '../observability/metrics';
import {
  createTestDatabase,
  scratchDir,
  temporalClient,
  testConfig,
  type TestDatabase,
} from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import { buildApp, type BuiltApp } from './app';
import { authPlugin, type Role } from './auth';
import { servicesPlugin } from './services';

const ISSUER = 'https://idp.test.invalid';
const AUDIENCE = 'novacron-api';

let db: TestDatabase;
let config: NovacronConfig;
let built: BuiltApp;
let client: Client;
let connection: Connection;
let signingKey: KeyObject;
const tokens = {} as Record<Role, string>;

async function app(options: { config: NovacronConfig }): Promise<BuiltApp> {
  return buildApp({
    config: options.config,
    temporal: client,
    pool: db.pool,
    metrics: createMetrics({ service: 'auth-test' }),
    logger: pino({ level: 'silent' }),
    checkResponses: true,
  });
}

before(async () => {
  db = await createTestDatabase();
  const keys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  signingKey = keys.privateKey;
  const publicKeyFile = path.join(scratchDir('oidc'), 'idp.pem');
  writeFileSync(publicKeyFile, keys.publicKey.export({ type: 'spki', format: 'pem' }));
  config = testConfig({
    databaseUrl: db.url,
    overrides: {
      security: { oidc: { issuer: ISSUER, audience: AUDIENCE, publicKeyFile, rolesClaim: 'realm_access.roles' } },
    },
  });
  ({ client, connection } = await temporalClient());
  built = await app({ config });
  for (const role of ['viewer', 'operator', 'admin'] as const) {
    tokens[role] = await mintToken(db.pool, { roles: [role], name: role });
  }
});

after(async () => {
  await built.close();
  await connection.close();
  await db.drop();
});

function inject(options: InjectOptions & { token?: string }) {
  const { token, ...rest } = options;
  return built.app.inject({ ...rest, headers: { ...(token ? bearer(token) : {}), ...rest.headers } });
}

function jwt(input: { sub?: string; roles?: unknown; iss?: string; aud?: string; exp?: number; key?: KeyObject }) {
  const builder = new SignJWT({ realm_access: { roles: input.roles ?? ['operator'] } })
    .setProtectedHeader({ alg: 'ES256' })
    .setIssuer(input.iss ?? ISSUER)
    .setAudience(input.aud ?? AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(input.exp ?? Math.floor(Date.now() / 1000) + 300);
  if (input.sub !== undefined) builder.setSubject(input.sub);
  return builder.sign(input.key ?? signingKey);
}

interface Operation {
  security?: unknown[];
  'x-novacron-role'?: Role;
  'x-novacron-public'?: boolean;
  requestBody?: unknown;
}

const RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };

/** A path parameter every route's pattern accepts (a UUID is also a host, image, workflow id and token name). */
const PROBE_ID = '00000000-0000-4000-8000-000000000000';

/**
 * What each route without a request body answers an allowed caller in this file's empty fleet: the probe id names
 * nothing, and no cluster boot is recorded. A route with a body answers 400 for the unknown field instead.
 */
const ALLOWED_ANSWER: Record<string, number> = {
  'GET /openapi.json': 200,
  'GET /v1/cluster/boot': 404,
  'GET /v1/workflows': 200,
  'GET /v1/workflows/{id}': 404,
  'POST /v1/workflows/{id}/cancel': 404,
  'GET /v1/hosts': 200,
  'GET /v1/hosts/{id}': 404,
  'GET /v1/hosts/{id}/failovers': 404,
  'POST /v1/hosts/{id}/readmit': 404,
  'GET /v1/failovers/{id}': 404,
  'GET /v1/drift': 200,
  'GET /v1/vms': 200,
  'GET /v1/vms/{id}': 404,
  'DELETE /v1/vms/{id}': 404,
  'GET /v1/events': 200,
  'GET /v1/images': 200,
  'GET /v1/images/{id}': 404,
  'GET /v1/links': 200,
  'GET /v1/migrations': 200,
  'GET /v1/migrations/{id}': 404,
  'GET /v1/tokens': 200,
  'DELETE /v1/tokens/{ref}': 404,
  'GET /v1/audit': 200,
};

describe('authentication and roles', () => {
  test('every route in /openapi.json: 401 without a token, 403 below its role, allowed at or above it', async () => {
    assert.equal((await inject({ method: 'GET', url: '/openapi.json' })).statusCode, 401);
    const doc = (await inject({ method: 'GET', url: '/openapi.json', token: tokens.viewer })).json<{
      paths: Record<string, Record<string, Operation>>;
      components: { securitySchemes: Record<string, unknown> };
    }>();
    assert.ok(doc.components.securitySchemes.bearerAuth);
    const routes = Object.entries(doc.paths).flatMap(([route, ops]) =>
      Object.entries(ops).map(([method, op]) => ({ method: method.toUpperCase(), route, op })),
    );
    assert.equal(routes.length, built.routes.filter((r) => r.method !== 'HEAD').length, 'the document has every route');

    const publicRoutes = routes.filter((r) => r.op['x-novacron-public']).map((r) => `${r.method} ${r.route}`);
    assert.deepEqual(publicRoutes.sort(), ['GET /health', 'GET /metrics', 'GET /ready']);
    for (const { method, route, op } of routes) {
      const where = `${method} ${route}`;
      const url = route.replace(/\{[^}]+\}/g, PROBE_ID);
      // An unknown field makes every body invalid, so an allowed request stops at validation and writes nothing.
      const payload = method === 'GET' ? undefined : { unknownProbeField: true };
      const answer = (token?: string) =>
        inject({ method, url, ...(payload ? { payload } : {}), ...(token ? { token } : {}) });
      const status = async (token?: string) => (await answer(token)).statusCode;
      if (op['x-novacron-public']) {
        assert.ok(![401, 403].includes(await status()), `${where} is public`);
        continue;
      }
      const required = op['x-novacron-role'];
      assert.ok(required && RANK[required], `${where} declares its role in the document`);
      assert.deepEqual(op.security ?? [{ bearerAuth: [] }], [{ bearerAuth: [] }], `${where} documents bearer auth`);
      // Policy: viewers only read; tokens and the audit log are admin's; changing anything needs operator at least.
      if (method !== 'GET') assert.ok(RANK[required] >= RANK.operator, `${where} mutates, so needs operator+`);
      if (/^\/v1\/(tokens|audit)/.test(route)) assert.equal(required, 'admin', `${where} is admin only`);

      assert.equal(await status(), 401, `${where} without a token`);
      assert.equal(await status('nvc_0000000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'), 401, where);
      const expected = op.requestBody ? 400 : ALLOWED_ANSWER[where];
      assert.ok(expected, `${where}: add the answer an allowed caller gets to ALLOWED_ANSWER`);
      for (const role of ['viewer', 'operator', 'admin'] as const) {
        if (RANK[role] < RANK[required]) {
          assert.equal(await status(tokens[role]), 403, `${where} as ${role} (needs ${required})`);
          continue;
        }
        const response = await answer(tokens[role]);
        assert.equal(response.statusCode, expected, `${where} as ${role}: ${response.body.slice(0, 200)}`);
        if (op.requestBody) {
          const issues = response.json<{ issues?: Array<{ field: string }> }>().issues ?? [];
          assert.ok(
            issues.some((i) => i.field === 'body.unknownProbeField'),
            `${where}: refused for the unknown field`,
          );
        }
      }
    }
  });

  test('a route that declares no role makes start-up fail', async () => {
    const bare = Fastify();
    await bare.register(servicesPlugin, {
      config,
      pool: db.pool,
      temporal: client,
      metrics: createMetrics({ service: 'bare' }),
    });
    await bare.register(authPlugin);
    assert.throws(() => bare.get('/v1/forgotten', async () => 'x'), /GET \/v1\/forgotten declares no access/);
    assert.throws(
      () => bare.get('/v1/both', { config: { public: true, role: 'admin' } }, async () => 'x'),
      /declares both public and role admin/,
    );
    bare.get('/v1/declared', { config: { role: 'viewer' } }, async () => 'x');
    await bare.close();
  });

  test('an unknown URL is 401 without a token and 404 with one', async () => {
    assert.equal((await inject({ method: 'GET', url: '/v1/nothing-here' })).statusCode, 401);
    assert.equal((await inject({ method: 'GET', url: '/v1/nothing-here', token: tokens.viewer })).statusCode, 404);
  });

  test('expired, revoked, tampered and malformed credentials are refused', async () => {
    const expired = await mintToken(db.pool, { roles: ['admin'], expiresAt: new Date(Date.now() - 1000) });
    const response = await inject({ method: 'GET', url: '/v1/cluster/boot', token: expired });
    assert.equal(response.statusCode, 401);
    assert.match(response.json<{ message: string }>().message, /expired/);
    assert.equal(response.headers['www-authenticate'], 'Bearer realm="novacron"');

    const tampered = `${tokens.admin.slice(0, -1)}${tokens.admin.endsWith('A') ? 'B' : 'A'}`;
    for (const authorization of [`Bearer ${tampered}`, 'Basic YWRtaW46YWRtaW4=', 'Bearer', `bearer  ${tokens.admin}`]) {
      const refused = await inject({ method: 'GET', url: '/v1/cluster/boot', headers: { authorization } });
      assert.equal(refused.statusCode, 401, authorization);
    }
    // The scheme is case-insensitive.
    const lower = await inject({
      method: 'GET',
      url: '/v1/tokens',
      headers: { authorization: `bearer ${tokens.admin}` },
    });
    assert.equal(lower.statusCode, 200);

    const created = await inject({
      method: 'POST',
      url: '/v1/tokens',
      token: tokens.admin,
      payload: { name: 'ci-bot', roles: ['operator'], expiresInSeconds: 3600 },
    });
    assert.equal(created.statusCode, 201, created.body);
    const { token, id } = created.json<{ token: string; id: string; expiresAt: string }>();
    assert.equal((await inject({ method: 'GET', url: '/v1/workflows?limit=1', token })).statusCode, 200);
    assert.equal((await inject({ method: 'GET', url: '/v1/tokens', token })).statusCode, 403);

    const duplicate = await inject({
      method: 'POST',
      url: '/v1/tokens',
      token: tokens.admin,
      payload: { name: 'ci-bot', roles: ['viewer'] },
    });
    assert.equal(duplicate.statusCode, 409);

    const stored = await db.pool.query<{ row: string }>('SELECT row_to_json(t)::text AS row FROM api_tokens t');
    assert.ok(!stored.rows.some((r) => r.row.includes(token.split('.')[1]!)), 'the secret is not stored');

    const revoked = await inject({ method: 'DELETE', url: '/v1/tokens/ci-bot', token: tokens.admin });
    assert.equal(revoked.statusCode, 200, revoked.body);
    assert.equal(revoked.json<{ id: string }>().id, id);
    const refused = await inject({ method: 'GET', url: '/v1/workflows?limit=1', token });
    assert.equal(refused.statusCode, 401);
    assert.match(refused.json<{ message: string }>().message, /revoked/);
    assert.equal((await inject({ method: 'DELETE', url: '/v1/tokens/ci-bot', token: tokens.admin })).statusCode, 404);

    const live = (await inject({ method: 'GET', url: '/v1/tokens', token: tokens.admin })).json<{
      tokens: Array<{ name: string }>;
    }>();
    assert.ok(!live.tokens.some((t) => t.name === 'ci-bot'));
    const all = (await inject({ method: 'GET', url: '/v1/tokens?includeRevoked=true', token: tokens.admin })).json<{
      tokens: Array<{ name: string; revokedAt?: string; createdBy: string }>;
    }>();
    const bot = all.tokens.find((t) => t.name === 'ci-bot');
    assert.ok(bot?.revokedAt);
    assert.equal(bot.createdBy, 'token:admin');
    assert.ok(!JSON.stringify(all).includes('nvc_'), 'listing never returns a secret');
  });

  test('OIDC JWTs: roles from the configured claim; wrong issuer, audience, key or expiry refused', async () => {
    const operator = await jwt({ sub: 'alice', roles: ['operator'] });
    const cancel = await inject({ method: 'POST', url: '/v1/workflows/no-such-workflow/cancel', token: operator });
    assert.equal(cancel.statusCode, 404, cancel.body);
    assert.equal((await inject({ method: 'GET', url: '/v1/tokens', token: operator })).statusCode, 403);
    const admin = await jwt({ sub: 'root-person', roles: 'viewer admin' });
    assert.equal((await inject({ method: 'GET', url: '/v1/tokens', token: admin })).statusCode, 200);
    const noRole = await jwt({ sub: 'bob', roles: ['superuser'] });
    assert.equal((await inject({ method: 'GET', url: '/v1/cluster/boot', token: noRole })).statusCode, 403);

    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const bad = {
      'wrong issuer': await jwt({ sub: 'alice', iss: 'https://evil.invalid' }),
      'wrong audience': await jwt({ sub: 'alice', aud: 'someone-else' }),
      expired: await jwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) - 3600 }),
      'other key': await jwt({ sub: 'alice', key: other }),
      'no subject': await jwt({}),
      'alg none': `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(
        JSON.stringify({ sub: 'alice', iss: ISSUER, aud: AUDIENCE, realm_access: { roles: ['admin'] } }),
      ).toString('base64url')}.`,
    };
    for (const [what, token] of Object.entries(bad)) {
      const response = await inject({ method: 'GET', url: '/v1/cluster/boot', token });
      assert.equal(response.statusCode, 401, `${what}: ${response.body}`);
    }
    const audit = await db.pool.query(
      "SELECT actor, outcome, details FROM audit_log WHERE action = 'POST /v1/workflows/:id/cancel' AND actor = 'jwt:alice'",
    );
    assert.deepEqual(audit.rows, [{ actor: 'jwt:alice', outcome: 'rejected', details: { status: 404 } }]);
  });

  test('OIDC with a JWKS URL: keys are fetched from the provider; an unreachable provider is a 503', async () => {
    const keys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwk = { ...(await exportJWK(keys.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    let fetches = 0;
    const idp = createServer((_request, response) => {
      fetches++;
      response.setHeader('content-type', 'application/json');
      response.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((resolve) => idp.listen(0, '127.0.0.1', resolve));
    const jwksUrl = `http://127.0.0.1:${(idp.address() as AddressInfo).port}/jwks`;
    const oidc = { issuer: ISSUER, audience: AUDIENCE, jwksUrl };
    const withJwks = await app({
      config: {
        ...config,
        security: { ...config.security, oidc: { ...config.security.oidc!, publicKeyFile: undefined, ...oidc } },
      },
    });
    try {
      const token = await new SignJWT({ roles: ['viewer'] })
        .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
        .setIssuer(ISSUER)
        .setAudience(AUDIENCE)
        .setSubject('carol')
        .setExpirationTime('5m')
        .sign(keys.privateKey);
      const ok = await withJwks.app.inject({ method: 'GET', url: '/v1/cluster/boot', headers: bearer(token) });
      assert.equal(ok.statusCode, 403, 'rolesClaim is realm_access.roles, so a top-level roles claim grants nothing');
      assert.equal(ok.json<{ message: string }>().message.includes('jwt:carol'), true);
      assert.ok(fetches >= 1);
      const forged = await jwt({ sub: 'carol', roles: ['admin'] });
      const refused = await withJwks.app.inject({ method: 'GET', url: '/v1/tokens', headers: bearer(forged) });
      assert.equal(refused.statusCode, 401, 'a key the provider does not publish');
    } finally {
      await withJwks.close();
      await new Promise((resolve) => idp.close(resolve));
    }

    const unreachable = await app({
      config: {
        ...config,
        security: {
          ...config.security,
          oidc: { ...config.security.oidc!, publicKeyFile: undefined, jwksUrl: 'http://127.0.0.1:9/jwks' },
        },
      },
    });
    try {
      const response = await unreachable.app.inject({
        method: 'GET',
        url: '/v1/cluster/boot',
        headers: bearer(await jwt({ sub: 'carol' })),
      });
      assert.equal(response.statusCode, 503, response.body);
    } finally {
      await unreachable.close();
    }
  });

  test('each token has its own rate limit; a limited request gets 429 with Retry-After', async () => {
    const limited = await app({
      config: { ...config, security: { ...config.security, rateLimit: { burst: 3, refillPerSecond: 0.01 } } },
    });
    try {
      const get = (token: string) =>
        limited.app.inject({ method: 'GET', url: '/v1/workflows?limit=1', headers: bearer(token) });
      for (let i = 0; i < 3; i++) assert.equal((await get(tokens.viewer)).statusCode, 200);
      const refused = await get(tokens.viewer);
      assert.equal(refused.statusCode, 429);
      assert.ok(Number(refused.headers['retry-after']) >= 1);
      assert.equal((await get(tokens.operator)).statusCode, 200, 'another token is unaffected');
      assert.equal((await limited.app.inject({ method: 'GET', url: '/health' })).statusCode, 200);
    } finally {
      await limited.close();
    }
  });

  test('the audit log records who did what; GET /v1/audit filters it (admin only)', async () => {
    const denied = await inject({ method: 'POST', url: '/v1/workflows/some-workflow/cancel', token: tokens.viewer });
    assert.equal(denied.statusCode, 403);
    const requestId = denied.headers['x-request-id'] as string;

    const byRequest = await inject({ method: 'GET', url: `/v1/audit?requestId=${requestId}`, token: tokens.admin });
    assert.equal(byRequest.statusCode, 200, byRequest.body);
    const [row] = byRequest.json<{ entries: Array<Record<string, unknown>> }>().entries;
    assert.deepEqual(
      { actor: row?.actor, action: row?.action, target: row?.target, outcome: row?.outcome },
      {
        actor: 'token:viewer',
        action: 'POST /v1/workflows/:id/cancel',
        target: 'some-workflow',
        outcome: 'rejected',
      },
    );

    const minted = await inject({
      method: 'POST',
      url: '/v1/tokens',
      token: tokens.admin,
      payload: { name: 'audit-probe', roles: ['viewer'] },
    });
    assert.equal(minted.statusCode, 201, minted.body);
    const created = await inject({
      method: 'GET',
      url: '/v1/audit?actor=token:admin&action=POST%20/v1/tokens&outcome=accepted',
      token: tokens.admin,
    });
    const entries = created.json<{ entries: Array<{ actor: string; target?: string; outcome: string }> }>().entries;
    assert.ok(entries.length >= 1);
    assert.ok(entries.every((e) => e.actor === 'token:admin' && e.outcome === 'accepted'));
    assert.ok(entries.some((e) => e.target === 'audit-probe'));

    const page = (await inject({ method: 'GET', url: '/v1/audit?limit=1', token: tokens.admin })).json<{
      entries: Array<{ id: number }>;
    }>().entries;
    assert.equal(page.length, 1);
    const next = (
      await inject({ method: 'GET', url: `/v1/audit?limit=1&before=${page[0]!.id}`, token: tokens.admin })
    ).json<{ entries: Array<{ id: number }> }>().entries;
    assert.ok(next[0]!.id < page[0]!.id);
    const future = (
      await inject({ method: 'GET', url: '/v1/audit?since=2999-01-01T00:00:00Z', token: tokens.admin })
    ).json<{ entries: unknown[] }>();
    assert.deepEqual(future.entries, []);

    assert.equal((await inject({ method: 'GET', url: '/v1/audit', token: tokens.operator })).statusCode, 403);
    const badFilter = await inject({ method: 'GET', url: '/v1/audit?since=yesterday', token: tokens.admin });
    assert.equal(badFilter.statusCode, 400);
    assert.match(badFilter.json<{ message: string }>().message, /^querystring\.since: /);
    const unknown = await inject({ method: 'GET', url: '/v1/audit?actr=x', token: tokens.admin });
    assert.match(unknown.json<{ message: string }>().message, /^querystring\.actr: unknown field/);
  });
});
