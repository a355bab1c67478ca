/**
 * Integration: the migration routes through inject, with the real control worker (migrateVm and the store's
 * control activities), the real Temporal server and PostgreSQL. The source host's agent is a stand-in worker on its
 * task queue that answers the plan's measurements as each test sets them and holds the migration at `preparing`
 * (no libvirt here: the workflow's own tests and the live-migration integration test run the job itself). Covers
 * every refusal the route answers from the store (field named, nothing written), a refusal by the plan, the 202 with
 * the plan, idempotent retries, list and show with live progress, and cancellation through /v1/workflows/:id/cancel.
 */
import { Context } from '@temporalio/activity';
import type { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import type { InjectOptions } from 'fastify';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import type { LinkProbeReport } from '../activities/image-activities';
import type { NovacronConfig } from '../config/schema';
import { migrationWorkflowId, type MigrationPlan } from '../domain/migration';
import { vmSpecSchema, type VmRecord } from '../domain/vm-spec';
import { createMetrics } from '../observability/metrics';
import { acquireHostLease, registerHost, setHostDwcpEndpoint, setHostMaintenance } from '../store/hosts';
import type { MigrationRecord } from '../store/migration-records';
import { assignVmOwner, getVm, listVms } from '../store/vms';
import {
  createTestDatabase,
  temporalClient,
  testConfig,
  testTemporalAddress,
  type TestDatabase,
} from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import { waitUntil } from '../test/support/wait';
import { startControlWorker, type ControlWorkerHandle } from '../workers/control-worker';
import { buildApp, type BuiltApp } from './app';

const MiB = 1024 * 1024;
// Host ids name task queues, which every test file on the Temporal server shares.
const prefix = `mig${randomBytes(3).toString('hex')}`;
const hosts = {
  source: `${prefix}-src`,
  target: `${prefix}-dst`,
  maintenance: `${prefix}-maint`,
  leaseless: `${prefix}-nolease`,
  poolless: `${prefix}-nopool`,
};

/** What the stand-in source agent measures; each test sets the figures its plan is to be made from. */
const agent = { dirtyRateBytesPerSecond: MiB, bandwidthMbps: 9000, measureDelayMs: 0, preparing: 0 };

let db: TestDatabase;
let config: NovacronConfig;
let worker: ControlWorkerHandle;
let sourceAgent: Worker;
let agentRun: Promise<void>;
let nativeConnection: NativeConnection;
let built: BuiltApp;
let client: Client;
let connection: Connection;
let token: string;
const vms: Record<'web' | 'stopped' | 'busy' | 'local' | 'gone', string> = {
  web: randomUUID(),
  stopped: randomUUID(),
  busy: randomUUID(),
  local: randomUUID(),
  gone: randomUUID(),
};

function inject(options: InjectOptions) {
  return built.app.inject({ ...options, headers: { ...bearer(token), ...options.headers } });
}

const migrate = (vmId: string, payload: unknown, headers: Record<string, string> = {}) =>
  inject({ method: 'POST', url: `/v1/vms/${vmId}/migrate`, payload: payload as object, headers });

async function host(id: string, input: { pools?: Record<string, string>; lease?: boolean } = {}): Promise<void> {
  await registerHost(db.pool, {
    id,
    address: '127.0.0.1',
    libvirtUri: `qemu+unix:///system?socket=/run/${id}/libvirt-sock`,
    cpus: 4,
    memoryMib: 8192,
    diskMib: 100_000,
    labels: {},
    imageRoot: `/tmp/${id}`,
    storagePools: input.pools ?? { nfs: '/mnt/nfs' },
  });
  await setHostDwcpEndpoint(db.pool, { hostId: id, endpoint: '127.0.0.1:7480' });
  if (input.lease !== false) await acquireHostLease(db.pool, { hostId: id, holder: `${id}-agent`, ttlMs: 600_000 });
}

async function vm(id: string, input: { name: string; state: string; pool?: string; busyWith?: string }) {
  const spec = vmSpecSchema.parse({ name: input.name, vcpus: 1, memoryMib: 256, storagePool: input.pool ?? 'nfs' });
  await db.pool.query('INSERT INTO vms (id, name, spec, state, operation_workflow_id) VALUES ($1, $2, $3, $4, $5)', [
    id,
    input.name,
    JSON.stringify(spec),
    input.state,
    input.busyWith ?? null,
  ]);
  const lease = await db.pool.query<{ fencing_token: string }>('SELECT fencing_token FROM leases WHERE resource = $1', [
    `host:${hosts.source}`,
  ]);
  await assignVmOwner(db.pool, { vmId: id, hostId: hosts.source, token: Number(lease.rows[0]!.fencing_token) });
}

/** The source agent's side of planning, and a `describeMigrationSource` that holds the run until cancelled. */
const sourceActivities = {
  async probeLink(input: { targetHostId: string }): Promise<LinkProbeReport> {
    return {
      sourceHostId: hosts.source,
      targetHostId: input.targetHostId,
      rttMs: 0.3,
      bandwidthMbps: agent.bandwidthMbps,
      probeBytes: 1e8,
      streams: 2,
      mode: 'datacenter',
    };
  },
  async measureDirtyRate(): Promise<{ bytesPerSecond: number; periodSeconds: number }> {
    await Context.current().sleep(agent.measureDelayMs);
    return { bytesPerSecond: agent.dirtyRateBytesPerSecond, periodSeconds: 1 };
  },
  async describeMigrationSource(): Promise<never> {
    agent.preparing++;
    const context = Context.current();
    for (;;) {
      context.heartbeat();
      await Promise.race([context.cancelled, context.sleep(200)]);
    }
  },
};

before(async () => {
  db = await createTestDatabase();
  token = await mintToken(db.pool, { roles: ['operator'], name: 'migrations-test' });
  config = testConfig({ databaseUrl: db.url });
  ({ client, connection } = await temporalClient());
  worker = await startControlWorker({ config, logger: pino({ level: 'silent' }) });
  nativeConnection = await NativeConnection.connect({ address: testTemporalAddress() });
  sourceAgent = await Worker.create({
    connection: nativeConnection,
    taskQueue: `host-${hosts.source}`,
    activities: sourceActivities,
    maxHeartbeatThrottleInterval: '100 milliseconds',
  });
  agentRun = sourceAgent.run();
  built = await buildApp({
    config,
    temporal: client,
    pool: db.pool,
    metrics: createMetrics({ service: 'api-migrations-test' }),
    logger: pino({ level: 'silent' }),
    checkResponses: true,
  });

  await host(hosts.source);
  await host(hosts.target);
  await host(hosts.maintenance);
  await setHostMaintenance(db.pool, { hostId: hosts.maintenance, enabled: true });
  await host(hosts.leaseless, { lease: false });
  await host(hosts.poolless, { pools: {} });
  await vm(vms.web, { name: 'web', state: 'running' });
  await vm(vms.stopped, { name: 'idle', state: 'stopped' });
  await vm(vms.busy, { name: 'busy', state: 'stopping', busyWith: 'vm-stop-x' });
  await vm(vms.local, { name: 'local', state: 'running', pool: 'local' });
});

after(async () => {
  await built.close();
  sourceAgent.shutdown();
  await agentRun;
  await nativeConnection.close();
  await worker.shutdown();
  await connection.close();
  await db.drop();
});

const migrationRows = async () => Number((await db.pool.query('SELECT count(*) AS n FROM migrations')).rows[0].n);

describe('POST /v1/vms/:id/migrate refuses from the store', () => {
  test('each refusal names the field, and nothing is written or started', async () => {
    const vmsBefore: VmRecord[] = await listVms(db.pool);
    const cases: Array<{ vmId: string; body: unknown; status: number; message: RegExp; error?: string }> = [
      { vmId: vms.gone, body: {}, status: 404, message: /^VM .* does not exist$/ },
      {
        vmId: vms.web,
        body: { targetHostId: 'nowhere' },
        status: 404,
        message: /^body\.targetHostId: host nowhere does not exist$/,
      },
      {
        vmId: vms.web,
        body: { targetHostId: hosts.source },
        status: 422,
        message: /^body\.targetHostId: VM web already runs on .*-src; the target must be another host$/,
        error: 'InvalidMigrationTarget',
      },
      {
        vmId: vms.web,
        body: { targetHostId: hosts.maintenance },
        status: 409,
        message: /^body\.targetHostId: host .*-maint is maintenance$/,
      },
      {
        vmId: vms.web,
        body: { targetHostId: hosts.leaseless },
        status: 409,
        // The fleet monitor marks a host without a live lease down within a second or so.
        message: /^body\.targetHostId: host .*-nolease (is down|has no live lease)/,
      },
      {
        vmId: vms.web,
        body: { targetHostId: hosts.poolless },
        status: 422,
        message: /^body\.targetHostId: host .*-nopool does not mount storage pool nfs, where web's disks are$/,
        error: 'TargetLacksStoragePool',
      },
      { vmId: vms.busy, body: {}, status: 409, message: /^VM busy is busy with workflow vm-stop-x$/ },
      { vmId: vms.stopped, body: {}, status: 409, message: /^VM idle is stopped; only a running VM migrates$/ },
      {
        vmId: vms.local,
        body: { targetHostId: hosts.target },
        status: 422,
        message: /^VM local has its disks on its host's local storage/,
        error: 'LocalStorageNotMigratable',
      },
      { vmId: vms.web, body: { policy: { maxDowntimeMs: 5 } }, status: 400, message: /^body\.policy\.maxDowntimeMs: / },
      { vmId: vms.web, body: { policy: { stallPasses: 0 } }, status: 400, message: /^body\.policy\.stallPasses: / },
      {
        vmId: vms.web,
        body: { policy: { escalation: 'sometimes' } },
        status: 400,
        message: /^body\.policy\.escalation: /,
      },
      {
        vmId: vms.web,
        body: { policy: { bandwidthMiBps: 0.5 } },
        status: 400,
        message: /^body\.policy\.bandwidthMiBps: /,
      },
      {
        vmId: vms.web,
        body: { policy: { turbo: true } },
        status: 400,
        message: /^body\.policy\.turbo: unknown field$/,
      },
      { vmId: vms.web, body: { color: 'red' }, status: 400, message: /^body\.color: unknown field$/ },
      { vmId: vms.web, body: { targetHostId: 'Not A Host' }, status: 400, message: /^body\.targetHostId: / },
      { vmId: 'not-a-uuid', body: {}, status: 400, message: /^params\.id: must be a VM id/ },
    ];
    for (const c of cases) {
      const response = await migrate(c.vmId, c.body);
      const where = `${JSON.stringify(c.body)} -> ${response.body}`;
      assert.equal(response.statusCode, c.status, where);
      const body = response.json<{ error: string; message: string }>();
      assert.match(body.message, c.message, where);
      if (c.error) assert.equal(body.error, c.error, where);
    }
    assert.equal(await migrationRows(), 0, 'no migrations row');
    assert.deepEqual(await listVms(db.pool), vmsBefore, 'every VM as it was');
    const started = await db.pool.query<{ n: string }>(
      `SELECT count(*) AS n FROM audit_log WHERE action = 'POST /v1/vms/:id/migrate' AND workflow_id IS NOT NULL`,
    );
    assert.equal(Number(started.rows[0]!.n), 0, 'no workflow named in the audit log');
    // A refusal with an actor is audited as rejected; malformed input is answered, not audited.
    const rejected = await db.pool.query<{ n: string }>(
      `SELECT count(*) AS n FROM audit_log WHERE action = 'POST /v1/vms/:id/migrate' AND outcome = 'rejected'`,
    );
    assert.equal(Number(rejected.rows[0]!.n), cases.filter((c) => c.status !== 400).length);
  });
});

describe('a migration through the API', () => {
  test('a plan the policy forbids is a 422 with its figures; the record keeps the plan and the VM stays', async () => {
    agent.dirtyRateBytesPerSecond = 2000 * MiB;
    agent.bandwidthMbps = 800;
    const requestId = 'refused-1';
    const response = await migrate(
      vms.web,
      { targetHostId: hosts.target, policy: { escalation: 'forbidden' } },
      { 'idempotency-key': requestId },
    );
    assert.equal(response.statusCode, 422, response.body);
    const workflowId = migrationWorkflowId({ vmId: vms.web, requestId });
    const body = response.json<{ error: string; message: string }>();
    assert.equal(body.error, 'MigrationRefused');
    assert.match(body.message, /^migration of web refused: .*memory 256 MiB, dirty rate 2000 MiB\/s/);
    assert.match(body.message, new RegExp(`it stays on ${hosts.source} \\(migration ${workflowId}\\)$`));

    const record = (await inject({ method: 'GET', url: `/v1/migrations/${workflowId}` })).json<MigrationRecord>();
    assert.equal(record.state, 'refused');
    assert.equal(record.plan?.inputs.dirtyRateBytesPerSecond, 2000 * MiB);
    assert.equal(record.finalHostId, hosts.source);
    const web = await getVm(db.pool, vms.web);
    assert.equal(web?.state, 'running');
    assert.equal(web?.hostId, hosts.source);
    assert.equal(web?.operationWorkflowId, undefined);
  });

  test('202 with the plan; shown with live progress, listed, retried idempotently, then cancelled', async () => {
    agent.dirtyRateBytesPerSecond = MiB;
    agent.bandwidthMbps = 9000;
    const requestId = 'move-1';
    const workflowId = migrationWorkflowId({ vmId: vms.web, requestId });
    const response = await migrate(vms.web, { targetHostId: hosts.target }, { 'idempotency-key': requestId });
    assert.equal(response.statusCode, 202, response.body);
    const started = response.json<{ workflowId: string; runId: string; existing: boolean; plan?: MigrationPlan }>();
    assert.equal(started.workflowId, workflowId);
    assert.equal(started.existing, false);
    assert.equal(started.plan?.mode, 'datacenter');
    assert.ok(started.plan?.prediction.converges, JSON.stringify(started.plan));
    await waitUntil('the stand-in agent holds the migration at preparing', () => agent.preparing === 1);

    const shown = await inject({ method: 'GET', url: `/v1/migrations/${workflowId}` });
    assert.equal(shown.statusCode, 200, shown.body);
    const record = shown.json<MigrationRecord>();
    assert.equal(record.targetHostId, hosts.target);
    assert.equal(record.progress?.phase, 'preparing');
    // The stored progress is what the workflow last wrote; while it runs, its own answer replaces it.
    await db.pool.query(`UPDATE migrations SET progress = jsonb_set(progress, '{phase}', '"planning"') WHERE id = $1`, [
      workflowId,
    ]);
    const live = (await inject({ method: 'GET', url: `/v1/migrations/${workflowId}` })).json<MigrationRecord>();
    assert.equal(live.progress?.phase, 'preparing', 'from the migrationProgress query');
    const stored = (await inject({ method: 'GET', url: `/v1/migrations?vmId=${vms.web}` })).json<{
      migrations: MigrationRecord[];
    }>();
    assert.equal(stored.migrations[0]?.progress?.phase, 'planning', 'the list shows what is stored');
    assert.deepEqual(record.plan, started.plan);
    assert.equal(record.policy.maxDowntimeMs, 300, 'the default policy, stored whole');

    const listed = await inject({ method: 'GET', url: `/v1/migrations?vmId=${vms.web}` });
    assert.deepEqual(
      listed.json<{ migrations: MigrationRecord[] }>().migrations.map((m) => m.id),
      [workflowId, migrationWorkflowId({ vmId: vms.web, requestId: 'refused-1' })],
      'newest first',
    );
    const refusedOnly = await inject({ method: 'GET', url: '/v1/migrations?state=refused' });
    assert.deepEqual(
      refusedOnly.json<{ migrations: MigrationRecord[] }>().migrations.map((m) => m.state),
      ['refused'],
    );
    const workflow = await inject({ method: 'GET', url: `/v1/workflows/${workflowId}` });
    assert.equal(workflow.json<{ progress?: { phase: string } }>().progress?.phase, 'preparing');

    // The same request again finds the migration the first one started, though the VM is now busy with it.
    const again = await migrate(vms.web, { targetHostId: hosts.target }, { 'idempotency-key': requestId });
    assert.equal(again.statusCode, 200, again.body);
    assert.deepEqual(again.json<{ runId: string; existing: boolean }>(), { ...started, existing: true });
    const other = await migrate(vms.web, { targetHostId: hosts.target });
    assert.equal(other.statusCode, 409, other.body);
    assert.match(other.json<{ message: string }>().message, new RegExp(`busy with workflow ${workflowId}$`));

    const cancel = await inject({ method: 'POST', url: `/v1/workflows/${workflowId}/cancel` });
    assert.equal(cancel.statusCode, 202, cancel.body);
    const handle = client.workflow.getHandle(workflowId);
    await assert.rejects(handle.result());
    assert.equal((await handle.describe()).status.name, 'CANCELLED');
    const ended = (await inject({ method: 'GET', url: `/v1/migrations/${workflowId}` })).json<MigrationRecord>();
    assert.equal(ended.state, 'cancelled');
    assert.equal(ended.finalHostId, hosts.source);
    const web = await getVm(db.pool, vms.web);
    assert.equal(web?.state, 'running', 'released, running where it was');
    assert.equal(web?.hostId, hosts.source);
    assert.equal(web?.operationWorkflowId, undefined);
    const audit = await db.pool.query('SELECT action, outcome FROM audit_log WHERE workflow_id = $1 ORDER BY id', [
      workflowId,
    ]);
    assert.deepEqual(audit.rows, [
      { action: 'POST /v1/vms/:id/migrate', outcome: 'accepted' },
      { action: 'POST /v1/vms/:id/migrate', outcome: 'accepted' },
      { action: 'POST /v1/workflows/:id/cancel', outcome: 'accepted' },
    ]);
  });

  test('planning that outlasts the wait is a 202 without the plan, which the record has later', async () => {
    const impatient = await buildApp({
      config,
      temporal: client,
      pool: db.pool,
      metrics: createMetrics({ service: 'api-migrations-test-impatient' }),
      logger: pino({ level: 'silent' }),
      checkResponses: true,
      migrationPlanWaitMs: 200,
    });
    agent.measureDelayMs = 1500;
    try {
      const response = await impatient.app.inject({
        method: 'POST',
        url: `/v1/vms/${vms.web}/migrate`,
        payload: { targetHostId: hosts.target },
        headers: bearer(token),
      });
      assert.equal(response.statusCode, 202, response.body);
      const started = response.json<{ workflowId: string; plan?: MigrationPlan }>();
      assert.equal(started.plan, undefined);
      const planned = await waitUntil('the plan in the record', async () => {
        const shown = await inject({ method: 'GET', url: `/v1/migrations/${started.workflowId}` });
        return shown.json<MigrationRecord>().plan;
      });
      assert.equal(planned.mode, 'datacenter');
      await client.workflow.getHandle(started.workflowId).cancel();
      await assert.rejects(client.workflow.getHandle(started.workflowId).result());
    } finally {
      agent.measureDelayMs = 0;
      await impatient.close();
    }
  });

  test('show and list refuse what they cannot answer', async () => {
    assert.equal((await inject({ method: 'GET', url: '/v1/migrations/migrate-nothing-here' })).statusCode, 404);
    for (const url of ['/v1/migrations?state=exploded', '/v1/migrations?vmId=web', '/v1/migrations?limit=0']) {
      assert.equal((await inject({ method: 'GET', url })).statusCode, 400, url);
    }
  });
});
