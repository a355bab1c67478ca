/**
 * Integration: readiness on the real app, control worker, Temporal and PostgreSQL. /ready follows this process's
 * dependencies and its first boot, never an init that merely runs: a manual POST /v1/cluster/init in flight (held
 * in its PostgreSQL check by a lock this test takes) leaves every replica in service. Each test boots its own node,
 * so none depends on another having run.
 */
import type { Client, Connection } from '@temporalio/client';
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import type { NovacronConfig } from '../config/schema';
import { createMetrics } from '../observability/metrics';
import { createTestDatabase, temporalClient, testConfig, type TestDatabase } from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import { startControlWorker, type ControlWorkerHandle } from '../workers/control-worker';
import { buildApp, type BuiltApp } from './app';

let db: TestDatabase;
let config: NovacronConfig;
let worker: ControlWorkerHandle;
let client: Client;
let connection: Connection;
let adminToken: string;
const apps: BuiltApp[] = [];

before(async () => {
  db = await createTestDatabase();
  adminToken = await mintToken(db.pool, { roles: ['admin'], name: 'health-test-admin' });
  config = testConfig({ databaseUrl: db.url });
  ({ client, connection } = await temporalClient());
  worker = await startControlWorker({ config, logger: pino({ level: 'silent' }) });
});

after(async () => {
  for (const built of apps) await built.close();
  await worker.shutdown();
  await connection.close();
  await db.drop();
});

/** An API process of its own node: boots record the node id of the config that started them. */
async function apiOf(nodeId: string, bootWorkflowId?: string): Promise<BuiltApp> {
  const built = await buildApp({
    config: { ...config, system: { ...config.system, nodeId } },
    temporal: client,
    pool: db.pool,
    metrics: createMetrics({ service: `health-test-${nodeId}` }),
    logger: pino({ level: 'silent' }),
    checkResponses: true,
    ...(bootWorkflowId ? { bootWorkflowId } : {}),
  });
  apps.push(built);
  return built;
}

async function ready(built: BuiltApp): Promise<{ status: number; clusterInit: string }> {
  const response = await built.app.inject({ method: 'GET', url: '/ready' });
  return {
    status: response.statusCode,
    clusterInit: response.json<{ checks: { clusterInit: string } }>().checks.clusterInit,
  };
}

async function init(built: BuiltApp, requestId: string): Promise<string> {
  const response = await built.app.inject({
    method: 'POST',
    url: '/v1/cluster/init',
    headers: bearer(adminToken),
    payload: { requestId },
  });
  assert.equal(response.statusCode, 202, response.body);
  return response.json<{ workflowId: string }>().workflowId;
}

/** Generous for a loaded 2-core machine: a boot takes well under a second when it has the cores. */
async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function bootStatus(workflowId: string): Promise<string | undefined> {
  const { rows } = await db.pool.query<{ status: string }>('SELECT status FROM cluster_boots WHERE workflow_id = $1', [
    workflowId,
  ]);
  return rows[0]?.status;
}

async function booted(workflowId: string): Promise<string> {
  const status = await until(`${workflowId} to finish`, async () => {
    const now = await bootStatus(workflowId);
    return now && now !== 'running' ? now : undefined;
  });
  assert.equal(status, 'ready', `${workflowId} came up`);
  return status;
}

describe('/ready', () => {
  test('/health is live at once; /ready is 503 until the first boot of this node came up, then 200', async () => {
    const api = await apiOf('node-first');
    assert.equal((await api.app.inject({ method: 'GET', url: '/health' })).statusCode, 200);
    assert.deepEqual(await ready(api), {
      status: 503,
      clusterInit: 'pending: no cluster init has run on node node-first',
    });
    const workflowId = await init(api, 'first-1');
    await booted(workflowId);
    assert.deepEqual(await ready(api), { status: 200, clusterInit: 'ready' });
  });

  test('a manual init in flight leaves /ready at 200', async () => {
    const api = await apiOf('node-manual');
    await booted(await init(api, 'manual-boot'));
    assert.equal((await ready(api)).status, 200);

    // The manual init's PostgreSQL check reads schema_migrations; holding its lock keeps the init running.
    const holder = await db.pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE');
      const manual = await init(api, 'manual-again');
      await until('the manual init to wait on the lock', async () => {
        const waiting = await db.pool.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        );
        return (await bootStatus(manual)) === 'running' && waiting.rows[0]!.n > 0 ? true : undefined;
      });
      const latest = await api.app.inject({ method: 'GET', url: '/v1/cluster/boot', headers: bearer(adminToken) });
      assert.deepEqual(
        {
          workflowId: latest.json<{ workflowId: string }>().workflowId,
          status: latest.json<{ status: string }>().status,
        },
        { workflowId: manual, status: 'running' },
        'the newest boot is the manual one, still running',
      );
      assert.deepEqual(await ready(api), { status: 200, clusterInit: 'ready' });
      await holder.query('ROLLBACK');
      await booted(manual);
    } finally {
      holder.release();
    }
    assert.deepEqual(await ready(api), { status: 200, clusterInit: 'ready' });
  });

  test('a process told its boot waits for that boot, not for an earlier one of its node', async () => {
    const earlier = await apiOf('node-named');
    await booted(await init(earlier, 'named-earlier'));
    const api = await apiOf('node-named', 'cluster-init-named-own');
    assert.deepEqual(await ready(api), { status: 503, clusterInit: 'pending: cluster-init-named-own has not started' });
    await booted(await init(api, 'named-own'));
    assert.deepEqual(await ready(api), { status: 200, clusterInit: 'ready' });
  });
});
