/**
 * POST /v1/vms with an image and a storage pool, through inject against a real PostgreSQL and Temporal server: what
 * the route refuses names the field and writes nothing (no VM row, no workflow), and a request it accepts starts
 * vmCreate with the spec as given. No worker polls this test's queue, so an accepted create stays where it started.
 */
import type { Client, Connection } from '@temporalio/client';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pino from 'pino';
import type { NovacronConfig } from '../config/schema';
import { createMetrics } from '../observability/metrics';
import { registerHost, setHostMaintenance } from '../store/hosts';
import { registerImage } from '../store/images';
import { testHost } from '../test/support/hosts';
import { createTestDatabase, temporalClient, testConfig, type TestDatabase } from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import type { VmCreateInput } from '../workflows/vm-create';
import { buildApp, type BuiltApp } from './app';

let db: TestDatabase;
let config: NovacronConfig;
let built: BuiltApp;
let client: Client;
let connection: Connection;
let token: string;

const host = (id: string, storagePools: Record<string, string>) => testHost(id, { storagePools });

before(async () => {
  db = await createTestDatabase();
  token = await mintToken(db.pool, { roles: ['operator'] });
  config = testConfig({ databaseUrl: db.url });
  ({ client, connection } = await temporalClient());
  built = await buildApp({
    config,
    temporal: client,
    pool: db.pool,
    metrics: createMetrics({ service: 'vm-image-pool-test' }),
    logger: pino({ level: 'silent' }),
    checkResponses: true,
  });
  await registerHost(db.pool, host('pool-a', { shared: '/srv/pools/shared' }));
  await registerHost(db.pool, host('pool-b', {}));
  // Mounts `parked`, but an operator took it out of service.
  await registerHost(db.pool, host('pool-c', { parked: '/srv/pools/parked' }));
  await setHostMaintenance(db.pool, { hostId: 'pool-c', enabled: true });
  const image = { format: 'raw' as const, sizeBytes: 16 * 1024 * 1024, description: 'test', workflowId: 'seed' };
  await registerImage(db.pool, { ...image, id: 'guest', sha256: 'a'.repeat(64), hostId: 'pool-b', path: '/x' });
});

after(async () => {
  await built?.close();
  await connection?.close();
  await db?.drop();
});

const create = (payload: Record<string, unknown>) =>
  built.app.inject({ method: 'POST', url: '/v1/vms', payload, headers: bearer(token) });

async function vmCreates(): Promise<number> {
  let count = 0;
  for await (const _ of client.workflow.list({ query: `TaskQueue = '${config.temporal.taskQueue}'` })) count++;
  return count;
}

const spec = { name: 'from-image', vcpus: 1, memoryMib: 128 };

test('an unknown image, a raw overlay or a pool no up host mounts is refused naming the field', async () => {
  const refused: Array<[Record<string, unknown>, number, RegExp]> = [
    [{ ...spec, image: 'no-such-image' }, 404, /^body\.image: image no-such-image does not exist$/],
    [
      { ...spec, image: 'guest', disks: [{ name: 'root', sizeMib: 32, format: 'raw' }] },
      422,
      /^body\.disks\.0\.format: the first disk of a VM made from an image is a qcow2 overlay/,
    ],
    [
      { ...spec, storagePool: 'nfs-9' },
      422,
      /^body\.storagePool: no up host mounts storage pool nfs-9 \(pools hosts declare: local, parked, shared\)$/,
    ],
    [{ ...spec, storagePool: 'parked' }, 422, /^body\.storagePool: no up host mounts storage pool parked/],
    // A name every JavaScript object answers to: only a pool a host declared counts.
    [{ ...spec, storagePool: 'constructor' }, 422, /^body\.storagePool: no up host mounts storage pool constructor/],
    [
      { ...spec, storagePool: 'constructor', hostId: 'pool-a' },
      422,
      /^body\.storagePool: host pool-a does not mount storage pool constructor$/,
    ],
    [
      { ...spec, storagePool: 'shared', hostId: 'pool-b' },
      422,
      /^body\.storagePool: host pool-b does not mount storage pool shared$/,
    ],
    [{ ...spec, storagePool: 'Bad/Pool' }, 400, /^body\.storagePool: must be a storage pool name/],
  ];
  for (const [payload, status, message] of refused) {
    const response = await create(payload);
    assert.equal(response.statusCode, status, `${JSON.stringify(payload)}: ${response.body}`);
    assert.match(response.json<{ message: string }>().message, message);
  }
  assert.equal(Number((await db.pool.query('SELECT count(*) AS n FROM vms')).rows[0].n), 0);
  assert.equal(await vmCreates(), 0);
});

test('an image on a pool an up host mounts starts vmCreate with that spec', async () => {
  const response = await create({ ...spec, image: 'guest', storagePool: 'shared' });
  assert.equal(response.statusCode, 202, response.body);
  const { workflowId } = response.json<{ workflowId: string }>();
  const handle = client.workflow.getHandle(workflowId);
  try {
    const started = await handle.fetchHistory();
    const attributes = started.events?.[0]?.workflowExecutionStartedEventAttributes;
    assert.equal(attributes?.workflowType?.name, 'vmCreate');
    const input = JSON.parse(Buffer.from(attributes.input!.payloads![0]!.data!).toString('utf8')) as VmCreateInput;
    assert.equal(input.spec.image, 'guest');
    assert.equal(input.spec.storagePool, 'shared');
  } finally {
    await handle.terminate('test done');
  }
});
