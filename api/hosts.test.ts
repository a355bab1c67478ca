/**
 * The host routes through inject against a real PostgreSQL: what an agent registered for live migration (its
 * storage pools, migration address and peer libvirt URI) reaches the answer, and /openapi.json declares it; a host's
 * failover reports; readmission of a fenced host, refused with the store's reason until it is safe. The response
 * serializer drops what the schema does not name, so a field missing from the schema is missing here too, and every
 * answer is checked against /openapi.json.
 */
import type { Client, Connection } from '@temporalio/client';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { createMetrics } from '../observability/metrics';
import { listAudit } from '../store/audit-log';
import { createFailover, finishFailover, getFailover, recordFailoverVm, updateFailover } from '../store/failovers';
import { acquireHostLease, fenceHost, recordInventory, registerHost } from '../store/hosts';
import { testHost } from '../test/support/hosts';
import { createTestDatabase, temporalClient, testConfig, type TestDatabase } from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import { buildApp, type BuiltApp } from './app';

let db: TestDatabase;
let built: BuiltApp;
let client: Client;
let connection: Connection;
let token: string;
let adminToken: string;

const migrating = testHost('hv-a', {
  address: '10.0.0.21',
  libvirtUri: 'qemu+unix:///system?socket=/run/hv-a/libvirt-sock',
  storagePools: { shared: '/srv/pools/shared', nfs1: '/mnt/nfs1' },
  migrationAddress: '10.1.0.21',
  peerLibvirtUri: 'qemu+tcp://10.1.0.21:16509/system',
});
// Registered as an agent from before live migration would: no pools, no migration address, no peer URI.
const plain = testHost('hv-b', { address: '10.0.0.22' });

before(async () => {
  db = await createTestDatabase();
  token = await mintToken(db.pool, { roles: ['viewer'] });
  adminToken = await mintToken(db.pool, { roles: ['admin'], name: 'hosts-test-admin' });
  ({ client, connection } = await temporalClient());
  built = await buildApp({
    config: testConfig({ databaseUrl: db.url }),
    temporal: client,
    pool: db.pool,
    metrics: createMetrics({ service: 'hosts-test' }),
    logger: pino({ level: 'silent' }),
    checkResponses: true,
  });
  await registerHost(db.pool, migrating);
  await registerHost(db.pool, plain);
});

after(async () => {
  await built?.close();
  await connection?.close();
  await db?.drop();
});

const get = (url: string) => built.app.inject({ method: 'GET', url, headers: bearer(token) });
const readmit = (hostId: string, as = adminToken) =>
  built.app.inject({ method: 'POST', url: `/v1/hosts/${hostId}/readmit`, headers: bearer(as), payload: {} });

test('a host shows its storage pools, migration address and peer libvirt URI', async () => {
  const response = await get('/v1/hosts/hv-a');
  assert.equal(response.statusCode, 200, response.body);
  const host = response.json<Record<string, unknown>>();
  assert.deepEqual(host.storagePools, { shared: '/srv/pools/shared', nfs1: '/mnt/nfs1' });
  assert.equal(host.migrationAddress, '10.1.0.21');
  assert.equal(host.peerLibvirtUri, 'qemu+tcp://10.1.0.21:16509/system');
});

test('a host that declared none has no pools, migrates on its address and has no peer URI', async () => {
  const { hosts } = (await get('/v1/hosts')).json<{ hosts: Array<Record<string, unknown>> }>();
  assert.deepEqual(
    hosts.map((h) => h.id),
    ['hv-a', 'hv-b'],
  );
  const [a, b] = hosts;
  assert.deepEqual(a!.storagePools, migrating.storagePools, 'the list shows what one host shows');
  assert.deepEqual(b!.storagePools, {});
  assert.equal(b!.migrationAddress, '10.0.0.22');
  assert.equal('peerLibvirtUri' in b!, false);
});

test('/openapi.json declares the fields, the peer URI optional', async () => {
  const doc = (await get('/openapi.json')).json<{
    paths: Record<
      string,
      Record<string, { responses: Record<string, { content: Record<string, { schema: unknown }> }> }>
    >;
  }>();
  for (const route of ['/v1/hosts/{id}', '/v1/hosts']) {
    let schema = doc.paths[route]!.get!.responses['200']!.content['application/json']!.schema as {
      properties: Record<string, { type?: string; description?: string }>;
      required: string[];
    };
    if (route === '/v1/hosts') schema = (schema.properties.hosts as unknown as { items: typeof schema }).items;
    assert.equal(schema.properties.storagePools?.type, 'object', route);
    assert.equal(schema.properties.migrationAddress?.type, 'string', route);
    assert.equal(schema.properties.peerLibvirtUri?.type, 'string', route);
    assert.ok(schema.required.includes('storagePools') && schema.required.includes('migrationAddress'), route);
    assert.ok(!schema.required.includes('peerLibvirtUri'), route);
    assert.match(schema.properties.migrationAddress?.description ?? '', /incoming migration/, route);
  }
});

test('a host with no failovers lists none', async () => {
  const response = await get('/v1/hosts/hv-b/failovers');
  assert.equal(response.statusCode, 200, response.body);
  assert.deepEqual(response.json(), { failovers: [] });
});

test('the failovers of a host that does not exist are a 404 naming it', async () => {
  const response = await get('/v1/hosts/hv-nope/failovers');
  assert.equal(response.statusCode, 404, response.body);
  assert.match(response.json<{ message: string }>().message, /host hv-nope does not exist/);
});

test('a limit outside 1..100 is a 400 naming limit', async () => {
  for (const limit of ['0', '101', 'ten', '2.5']) {
    const response = await get(`/v1/hosts/hv-a/failovers?limit=${limit}`);
    assert.equal(response.statusCode, 400, `${limit}: ${response.body}`);
    assert.match(response.json<{ message: string }>().message, /^querystring\.limit: /, limit);
  }
});

test('an unknown failover is a 404', async () => {
  const response = await get('/v1/failovers/failover-hv-a-404');
  assert.equal(response.statusCode, 404, response.body);
  assert.match(response.json<{ message: string }>().message, /failover failover-hv-a-404 does not exist/);
});

test("a host's failovers are the store's reports, newest first, as many as the limit; each one by its id", async () => {
  const older = await createFailover(db.pool, {
    id: 'failover-hv-a-3',
    hostId: 'hv-a',
    suspectToken: 3,
    suspectedAt: new Date(Date.now() - 60_000),
  });
  await finishFailover(db.pool, { id: older.id, state: 'aborted', reason: 'its agent renewed the lease' });
  const id = 'failover-hv-a-5';
  await createFailover(db.pool, { id, hostId: 'hv-a', suspectToken: 5, suspectedAt: new Date(Date.now() - 5000) });
  await updateFailover(db.pool, {
    id,
    patch: {
      graceEndedAt: new Date().toISOString(),
      confirmation: {
        mode: 'signed',
        asked: 4,
        needed: 3,
        accepted: 3,
        votes: [
          {
            witnessHostId: 'hv-b',
            verdict: 'unreachable',
            agentReachable: false,
            libvirtReachable: false,
            accepted: true,
          },
          {
            witnessHostId: 'hv-c',
            verdict: 'alive',
            agentReachable: false,
            libvirtReachable: true,
            runningDomains: ['web-1'],
            accepted: false,
            refusedReason: 'stale',
          },
        ],
        confirmedAt: new Date().toISOString(),
      },
      fencedAt: new Date().toISOString(),
      fencedToken: 6,
    },
  });
  await recordFailoverVm(db.pool, {
    id,
    vm: {
      vmId: '6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b',
      name: 'web-1',
      haPriority: 90,
      outcome: 'restarted',
      targetHostId: 'hv-b',
      restartedAt: new Date().toISOString(),
      durationMs: 4200,
    },
  });
  await finishFailover(db.pool, { id, state: 'completed' });
  const stored = await getFailover(db.pool, id);
  assert.ok(stored?.confirmation && stored.fencedToken === 6 && stored.vms.length === 1);

  const list = await get('/v1/hosts/hv-a/failovers');
  assert.equal(list.statusCode, 200, list.body);
  const { failovers } = list.json<{ failovers: Array<{ id: string }> }>();
  assert.deepEqual(
    failovers.map((f) => f.id),
    [id, older.id],
  );
  assert.deepEqual(failovers[0], stored, 'every field of the report reaches the answer');
  const limited = (await get('/v1/hosts/hv-a/failovers?limit=1')).json<{ failovers: Array<{ id: string }> }>();
  assert.deepEqual(
    limited.failovers.map((f) => f.id),
    [id],
  );
  const one = await get(`/v1/failovers/${id}`);
  assert.equal(one.statusCode, 200, one.body);
  assert.deepEqual(one.json(), stored);
});

test("readmitting a host that is up is a 409 with the store's reason, and is audited as rejected", async () => {
  await registerHost(db.pool, testHost('hv-up'));
  await acquireHostLease(db.pool, { hostId: 'hv-up', holder: 'agent-up', ttlMs: 60_000 });
  const response = await readmit('hv-up');
  assert.equal(response.statusCode, 409, response.body);
  const body = response.json<{ error: string; message: string }>();
  assert.equal(body.error, 'ReadmitRefused');
  assert.match(body.message, /host hv-up not readmitted: it is up; only a fenced host is readmitted/);
  const [entry] = await listAudit(db.pool, { action: 'POST /v1/hosts/:id/readmit', limit: 1 });
  assert.equal(entry?.target, 'hv-up');
  assert.equal(entry?.outcome, 'rejected');
});

test('readmitting a host that does not exist is a 404 naming it', async () => {
  const response = await readmit('hv-nope');
  assert.equal(response.statusCode, 404, response.body);
  assert.equal(response.json<{ error: string }>().error, 'HostNotFound');
  assert.match(response.json<{ message: string }>().message, /host hv-nope does not exist/);
});

test('a viewer may not readmit a host', async () => {
  const response = await readmit('hv-up', token);
  assert.equal(response.statusCode, 403, response.body);
});

test('a fenced host is readmitted once its agent is back and has reported, and is up with its new token', async () => {
  await registerHost(db.pool, testHost('hv-fenced'));
  const lost = await acquireHostLease(db.pool, { hostId: 'hv-fenced', holder: 'agent-old', ttlMs: 1 });
  await new Promise((resolve) => setTimeout(resolve, 20));
  const fence = await fenceHost(db.pool, { hostId: 'hv-fenced', expectedToken: lost, fencedBy: 'failover-test' });
  assert.ok(fence.fenced);
  assert.equal((await get('/v1/hosts/hv-fenced')).json<{ state: string }>().state, 'fenced');

  const noAgent = await readmit('hv-fenced');
  assert.equal(noAgent.statusCode, 409, noAgent.body);
  assert.match(noAgent.json<{ message: string }>().message, /no agent holds a live lease on it/);

  const back = await acquireHostLease(db.pool, { hostId: 'hv-fenced', holder: 'agent-new', ttlMs: 60_000 });
  const noReport = await readmit('hv-fenced');
  assert.equal(noReport.statusCode, 409, noReport.body);
  assert.match(noReport.json<{ message: string }>().message, new RegExp(`inventory under lease token ${back}`));

  assert.ok(
    await recordInventory(db.pool, {
      hostId: 'hv-fenced',
      leaseToken: back,
      seq: 1,
      observedAt: new Date(),
      domains: [],
    }),
  );
  const response = await readmit('hv-fenced');
  assert.equal(response.statusCode, 200, response.body);
  const host = response.json<{ id: string; state: string; lease?: { fencingToken: number; alive: boolean } }>();
  assert.equal(host.state, 'up');
  assert.deepEqual(host.lease && { token: host.lease.fencingToken, alive: host.lease.alive }, {
    token: back,
    alive: true,
  });
});

test("/openapi.json declares the failover routes, readmit's 404 and 409, and a host's fenced state", async () => {
  const doc = (await get('/openapi.json')).json<{
    paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
  }>();
  assert.ok(doc.paths['/v1/hosts/{id}/failovers']?.get?.responses['404']);
  assert.ok(doc.paths['/v1/failovers/{id}']?.get?.responses['404']);
  const responses = doc.paths['/v1/hosts/{id}/readmit']!.post!.responses;
  for (const status of ['200', '403', '404', '409']) assert.ok(responses[status], status);
  const host = (responses['200'] as { content: Record<string, { schema: { properties: Record<string, unknown> } }> })
    .content['application/json']!.schema;
  assert.ok((host.properties.state as { enum: string[] }).enum.includes('fenced'));
  assert.match((host.properties.witnessPublicKey as { description: string }).description, /Ed25519/);
});
