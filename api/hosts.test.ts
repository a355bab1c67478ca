/**
 * GET /v1/hosts[/:id] through inject against a real PostgreSQL: what an agent registered for live migration (its
 * storage pools, migration address and peer libvirt URI) reaches the answer, and /openapi.json declares it. The
 * response serializer drops what the schema does not name, so a field missing from the schema is missing here too.
 */
import type { Client, Connection } from '@temporalio/client';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { createMetrics } from '../observability/metrics';
import { registerHost } from '../store/hosts';
import { testHost } from '../test/support/hosts';
import { createTestDatabase, temporalClient, testConfig, type TestDatabase } from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import { buildApp, type BuiltApp } from './app';

let db: TestDatabase;
let built: BuiltApp;
let client: Client;
let connection: Connection;
let token: string;

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
