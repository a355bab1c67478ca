/**
 * Integration: the API plugin (through inject) with a real control worker, the real Temporal server and a real
 * PostgreSQL database. Covers init idempotency, workflow follow/list/cancel, metrics, the OpenAPI document, and that
 * bad input is refused with the field named and nothing written. Readiness has its own file (health.test.ts). Tests
 * that need a finished boot share one through firstBoot(), whichever of them runs first, so none depends on the
 * order they run in.
 */
import type { Client, Connection } from '@temporalio/client';
import type { InjectOptions } from 'fastify';
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import type { NovacronConfig } from '../config/schema';
import { createMetrics } from '../observability/metrics';
import { LATEST_MIGRATION_VERSION } from '../store/migrate';
import { createTestDatabase, temporalClient, testConfig, type TestDatabase } from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import { startControlWorker, type ControlWorkerHandle } from '../workers/control-worker';
import type { BootReport } from '../workflows/initialize-cluster';
import { buildApp, type BuiltApp } from './app';
import { openApiPath } from './response-contract';
import { standardStatuses } from './responses';
import { ERROR_BODY_ID } from './schemas';

interface OpenApiDocument {
  paths: Record<
    string,
    Record<
      string,
      {
        parameters?: Array<{ in: string; name: string; schema?: unknown }>;
        requestBody?: { content: Record<string, { schema?: unknown }> };
        responses: Record<string, { content?: Record<string, { schema?: unknown }> }>;
      }
    >
  >;
  components: { schemas: Record<string, unknown> };
}

let db: TestDatabase;
let config: NovacronConfig;
let worker: ControlWorkerHandle;
let built: BuiltApp;
let client: Client;
let connection: Connection;
let adminToken: string;

/** Every request here is made as an admin; api/auth.test.ts covers the other roles and no token at all. */
function inject(options: InjectOptions) {
  return built.app.inject({ ...options, headers: { ...bearer(adminToken), ...options.headers } });
}

before(async () => {
  db = await createTestDatabase();
  adminToken = await mintToken(db.pool, { roles: ['admin'], name: 'app-test-admin' });
  config = testConfig({ databaseUrl: db.url });
  ({ client, connection } = await temporalClient());
  worker = await startControlWorker({ config, logger: pino({ level: 'silent' }) });
  built = await buildApp({
    config,
    temporal: client,
    pool: db.pool,
    metrics: createMetrics({ service: 'api-test' }),
    logger: pino({ level: 'silent' }),
    checkResponses: true,
  });
});

after(async () => {
  await built.close();
  await worker.shutdown();
  await connection.close();
  await db.drop();
});

async function rowCounts(): Promise<Record<string, number>> {
  const tables = ['audit_log', 'cluster_boots', 'hosts', 'vms', 'leases'];
  const counts: Record<string, number> = {};
  for (const table of tables)
    counts[table] = Number((await db.pool.query(`SELECT count(*) AS n FROM ${table}`)).rows[0].n);
  return counts;
}

/** Workflows on this test's own task queue: other test files share the Temporal server. */
async function workflowCount(): Promise<number> {
  let count = 0;
  for await (const _ of client.workflow.list({ query: `TaskQueue = '${config.temporal.taskQueue}'` })) count++;
  return count;
}

/** Deadlines generous enough for a loaded 2-core machine; nothing here measures speed. */
async function waitClosed(workflowId: string): Promise<{ status: string; result?: BootReport }> {
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const response = await inject({ method: 'GET', url: `/v1/workflows/${workflowId}` });
    assert.equal(response.statusCode, 200, response.body);
    const body = response.json<{ status: string; result?: BootReport }>();
    if (body.status !== 'RUNNING') return body;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${workflowId} did not close`);
}

let booting: Promise<{ workflowId: string; runId: string }> | undefined;

/** One finished boot for the tests that need a closed workflow and its metrics; started by whichever asks first. */
function firstBoot(): Promise<{ workflowId: string; runId: string }> {
  booting ??= (async () => {
    const response = await inject({ method: 'POST', url: '/v1/cluster/init', payload: { requestId: 'shared-boot' } });
    assert.equal(response.statusCode, 202, response.body);
    const started = response.json<{ workflowId: string; runId: string }>();
    assert.equal((await waitClosed(started.workflowId)).status, 'COMPLETED');
    return started;
  })();
  return booting;
}

describe('API', () => {
  test('POST /v1/cluster/init boots the cluster and is idempotent by request id', async () => {
    const first = await inject({ method: 'POST', url: '/v1/cluster/init', payload: { requestId: 'boot-1' } });
    assert.equal(first.statusCode, 202, first.body);
    const started = first.json<{ workflowId: string; runId: string; existing: boolean }>();
    assert.equal(started.workflowId, 'cluster-init-boot-1');
    assert.equal(started.existing, false);

    const again = await inject({ method: 'POST', url: '/v1/cluster/init', payload: { requestId: 'boot-1' } });
    assert.equal(again.statusCode, 200);
    assert.deepEqual(again.json(), { ...started, existing: true });

    const closed = await waitClosed(started.workflowId);
    assert.equal(closed.status, 'COMPLETED', JSON.stringify(closed));
    const report = closed.result!;
    assert.equal(report.status, 'ready', JSON.stringify(report.components.filter((c) => c.status !== 'ok')));
    const postgres = report.components.find((c) => c.name === 'postgres')!;
    assert.equal(postgres.detail?.schemaVersion, LATEST_MIGRATION_VERSION);
    assert.match(String(postgres.detail?.serverVersion), /^\d+/);
    assert.ok(report.components.every((c) => c.durationMs >= 0 && c.attempts >= 1));

    // Once finished, the same request id still answers with the same workflow and starts nothing new.
    const afterDone = await inject({
      method: 'POST',
      url: '/v1/cluster/init',
      headers: { 'idempotency-key': 'boot-1' },
    });
    assert.equal(afterDone.statusCode, 200);
    assert.equal(afterDone.json<{ runId: string }>().runId, started.runId);

    const boots = await db.pool.query("SELECT status FROM cluster_boots WHERE workflow_id = 'cluster-init-boot-1'");
    assert.deepEqual(boots.rows, [{ status: 'ready' }]);
    const audit = await db.pool.query<{ action: string; actor: string }>(
      "SELECT action, actor FROM audit_log WHERE workflow_id = 'cluster-init-boot-1' ORDER BY id",
    );
    assert.deepEqual(audit.rows.map((r) => `${r.actor} ${r.action}`).sort(), [
      'node:novacron-1 cluster.init',
      'token:app-test-admin POST /v1/cluster/init',
      'token:app-test-admin POST /v1/cluster/init',
      'token:app-test-admin POST /v1/cluster/init',
    ]);
  });

  test('GET /v1/workflows lists from visibility, filtered by type and status', async () => {
    const { workflowId } = await firstBoot();
    // Visibility is eventually consistent; give it a while on a loaded machine.
    let listed: Array<{ workflowId: string; status: string; type: string }> = [];
    const deadline = Date.now() + 60_000;
    while (listed.length === 0 && Date.now() < deadline) {
      const response = await inject({
        method: 'GET',
        url: '/v1/workflows?type=initializeCluster&status=COMPLETED',
      });
      assert.equal(response.statusCode, 200);
      listed = response.json<{ workflows: typeof listed }>().workflows.filter((w) => w.workflowId === workflowId);
      if (listed.length === 0) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(listed.length, 1);
    assert.equal(listed[0]!.type, 'initializeCluster');
    const running = await inject({
      method: 'GET',
      url: '/v1/workflows?type=initializeCluster&status=RUNNING',
    });
    assert.ok(!running.json<{ workflows: typeof listed }>().workflows.some((w) => w.workflowId === workflowId));
  });

  test('cancel: 409 for a closed workflow, 404 for an unknown one, 202 for a running one', async () => {
    const { workflowId } = await firstBoot();
    const closed = await inject({ method: 'POST', url: `/v1/workflows/${workflowId}/cancel` });
    assert.equal(closed.statusCode, 409);
    assert.match(closed.json<{ message: string }>().message, /COMPLETED, not RUNNING/);
    const unknown = await inject({ method: 'POST', url: '/v1/workflows/no-such-workflow/cancel' });
    assert.equal(unknown.statusCode, 404);
    assert.equal((await inject({ method: 'GET', url: '/v1/workflows/no-such-workflow' })).statusCode, 404);

    // A workflow on a queue nobody polls stays RUNNING, so the cancel path is deterministic.
    const handle = await client.workflow.start('initializeCluster', {
      workflowId: `cancel-me-${Date.now()}`,
      taskQueue: 'nobody-polls-this',
      args: [{ nodeId: 'n', retry: config.clusterInit.retry, componentTimeoutMs: 1000 }],
    });
    const cancelled = await inject({ method: 'POST', url: `/v1/workflows/${handle.workflowId}/cancel` });
    assert.equal(cancelled.statusCode, 202, cancelled.body);
    const detail = await inject({ method: 'GET', url: `/v1/workflows/${handle.workflowId}` });
    assert.equal(detail.json<{ status: string }>().status, 'RUNNING');
    await handle.terminate('test cleanup');
    const audit = await db.pool.query('SELECT actor, outcome FROM audit_log WHERE workflow_id = $1', [
      handle.workflowId,
    ]);
    assert.deepEqual(audit.rows, [{ actor: 'token:app-test-admin', outcome: 'accepted' }]);
  });

  test('bad input gets a 400 naming the field, and nothing is written or started', async () => {
    const before = await rowCounts();
    const workflowsBefore = await workflowCount();
    const cases: Array<{ payload: unknown; headers?: Record<string, string>; field: RegExp; status?: number }> = [
      { payload: { requestId: 'has spaces' }, field: /^body\.requestId: / },
      { payload: { requestId: 42 }, field: /^body\.requestId: / },
      { payload: { requestId: 'ok', color: 'red' }, field: /^body\.color: unknown field/ },
      { payload: { disabledComponents: ['warp-drive'] }, field: /^body\.disabledComponents\.0: / },
      {
        payload: { disabledComponents: ['postgres'] },
        field: /^body\.disabledComponents: component "audit-log" depends on unknown "postgres"/,
      },
      { payload: {}, headers: { 'idempotency-key': '../../etc/passwd' }, field: /^headers\.idempotency-key: / },
      { payload: '{"requestId": ', headers: { 'content-type': 'application/json' }, field: /JSON/ },
      { payload: { requestId: 'x'.repeat(2 * 1024 * 1024) }, field: /too large/i, status: 413 },
    ];
    for (const c of cases) {
      const response = await inject({
        method: 'POST',
        url: '/v1/cluster/init',
        payload: c.payload as string,
        headers: c.headers ?? {},
      });
      assert.equal(
        response.statusCode,
        c.status ?? 400,
        `${JSON.stringify(c.payload).slice(0, 80)} -> ${response.body.slice(0, 200)}`,
      );
      const body = response.json<{ message: string; requestId: string }>();
      assert.match(body.message, c.field);
      assert.ok(body.requestId);
    }
    for (const url of [
      '/v1/workflows?status=EXPLODED',
      '/v1/workflows?limit=0',
      '/v1/workflows?type=drop%20table',
      '/v1/workflows/bad%20id',
    ]) {
      const response = await inject({ method: 'GET', url });
      assert.equal(response.statusCode, 400, `${url} -> ${response.body}`);
    }
    assert.deepEqual(await rowCounts(), before);
    assert.equal(await workflowCount(), workflowsBefore);
  });

  test('/metrics exposes workflow, activity and HTTP counters; the worker serves its own', async () => {
    await firstBoot();
    const text = (await inject({ method: 'GET', url: '/metrics' })).body;
    assert.match(text, /novacron_workflow_starts_total\{[^}]*workflow_type="initializeCluster"[^}]*\} [1-9]/);
    assert.match(text, /novacron_http_requests_total\{[^}]*route="\/v1\/cluster\/init"/);
    const workerText = await (await fetch(worker.metricsUrl)).text();
    assert.match(
      workerText,
      /novacron_activity_executions_total\{[^}]*activity_type="checkPostgres"[^}]*outcome="completed"/,
    );
    assert.match(
      workerText,
      /novacron_workflow_completions_total\{[^}]*workflow_type="initializeCluster"[^}]*outcome="completed"/,
    );
    assert.match(workerText, /novacron_workflow_duration_seconds_count/);
  });

  test('/openapi.json documents every route Fastify registered, with its schemas and every answer', async () => {
    const doc = (await inject({ method: 'GET', url: '/openapi.json' })).json<OpenApiDocument & { openapi: string }>();
    assert.equal(doc.openapi, '3.1.0');
    // HEAD answers as GET does (response-contract.ts checks it so); every other route is an operation.
    const routes = built.routes.filter((r) => r.method !== 'HEAD');
    assert.ok(routes.length >= 29, `${routes.length} routes`);
    const documented = Object.values(doc.paths).reduce((n, ops) => n + Object.keys(ops).length, 0);
    assert.equal(documented, routes.length, 'no operation without a route');
    for (const route of routes) {
      const where = `${route.method} ${route.url}`;
      const op = doc.paths[openApiPath(route.url)]?.[route.method.toLowerCase()];
      assert.ok(op, `${where} is documented`);
      const schema = (route.schema ?? {}) as { body?: unknown; response?: Record<string, unknown> };
      const pathParams = [...route.url.matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1]);
      const documentedParams = (op.parameters ?? []).filter((p) => p.in === 'path' && p.schema).map((p) => p.name);
      assert.deepEqual(documentedParams.sort(), pathParams.sort(), `${where}: path parameters with their schemas`);
      assert.equal(Boolean(op.requestBody?.content['application/json']?.schema), Boolean(schema.body), `${where} body`);
      const declared = Object.keys(schema.response ?? {}).sort();
      assert.deepEqual(Object.keys(op.responses).sort(), declared, `${where}: the answers its route declares`);
      for (const status of standardStatuses(route)) {
        const content = op.responses[status]?.content?.['application/json']?.schema;
        assert.ok(JSON.stringify(content).includes(`#/components/schemas/${ERROR_BODY_ID}`), `${where} ${status}`);
      }
      for (const [status, response] of Object.entries(op.responses)) {
        assert.ok(
          Object.values(response.content ?? {}).every((c) => c.schema),
          `${where} ${status} has a schema`,
        );
      }
    }
    assert.ok(doc.components.schemas[ERROR_BODY_ID], 'the error body is a component');
    assert.ok(JSON.stringify(doc.paths['/v1/cluster/init']).includes('requestId'));
  });
});
