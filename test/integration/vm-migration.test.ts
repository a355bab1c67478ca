/**
 * Live migration end to end on real libvirt: a test guest on the fleet's shared pool, on host-1, migrates to host-2
 * through the API, the agents and libvirt; its heartbeat counter goes on in host-2's own console log, the store
 * names host-2 as its owner under a new generation, and libvirt has it on host-2 only. Then a migration cancelled
 * while its job runs (its bandwidth capped so that it lasts) leaves the guest running on its source, and nothing on
 * the target. Fails without libvirt or the guest's build packages, as the other harness tests do.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { vmConsoleLogPath } from '../../activities/storage-paths';
import type { MigrationProgress, MigrationResult } from '../../domain/migration';
import { ensureTestGuestImage, TESTGUEST_NAME } from '../../guest/build';
import { parseConsoleLog, testGuestOemStrings } from '../../guest/workload';
import { FLEET_SHARED_POOL, startFleet, TEST_FLEET_OVERRIDES, type Fleet } from '../support/fleet';
import { createTestDatabase, scratchDir, testConfig, type TestDatabase } from '../support/services';
import { waitUntil } from '../support/wait';

const HOSTS = ['host-1', 'host-2'];
// Bounds for a broken boot or migration on a loaded 2-core TCG machine, not speed requirements.
const HEARTBEAT_TIMEOUT_MS = 120_000;
const MIGRATION_TIMEOUT_MS = 300_000;

let db: TestDatabase;
let fleet: Fleet;

before(async () => {
  const image = await ensureTestGuestImage({ log: (line) => process.stderr.write(`${line}\n`) });
  db = await createTestDatabase();
  fleet = await startFleet({
    config: testConfig({
      databaseUrl: db.url,
      overrides: { ...TEST_FLEET_OVERRIDES, migration: { pollIntervalMs: 250 } },
    }),
    pool: db.pool,
    hostIds: HOSTS,
    scratchDir,
  });
  const library = path.join(fleet.imageRoots['host-1']!, 'library', `${TESTGUEST_NAME}.raw`);
  await mkdir(path.dirname(library), { recursive: true });
  await copyFile(image.path, library);
  const registered = await fleet.inject({
    method: 'POST',
    url: '/v1/images',
    payload: { id: TESTGUEST_NAME, hostId: 'host-1', format: 'raw' },
  });
  assert.equal(registered.statusCode, 202, registered.body);
  await fleet.waitForWorkflow(registered.json<{ workflowId: string }>().workflowId);
});

after(async () => {
  await fleet?.stop();
  await db?.drop();
});

async function runningGuest(name: string, dirtyMiBps: number): Promise<string> {
  const started = await fleet.createVm({
    name,
    vcpus: 1,
    memoryMib: 256,
    image: TESTGUEST_NAME,
    storagePool: FLEET_SHARED_POOL,
    hostId: 'host-1',
    oemStrings: testGuestOemStrings({ dirtyMiBps, workingSetMiB: 64 }),
  });
  await fleet.waitForWorkflow(started.workflowId, 300_000);
  await heartbeatsOn('host-1', started.vmId, 2);
  return started.vmId;
}

/** The counters in a host's own console log of the guest, once it shows at least `count` of them. */
async function heartbeatsOn(hostId: string, vmId: string, count: number): Promise<number[]> {
  const log = vmConsoleLogPath({ imageRoot: fleet.imageRoots[hostId]!, vmId });
  const report = await waitUntil(
    `${count} heartbeats in ${log}`,
    async () => {
      const parsed = parseConsoleLog(await readFile(log, 'utf8').catch(() => ''));
      return parsed.heartbeats.length >= count ? parsed : undefined;
    },
    { timeoutMs: HEARTBEAT_TIMEOUT_MS, intervalMs: 250 },
  );
  return report.heartbeats;
}

async function domainsOf(vmId: string): Promise<string[]> {
  return (await fleet.allDomains()).filter((d) => d.uuid === vmId).map((d) => `${d.hostId}:${d.state}`);
}

test('a running guest migrates to host-2: its counter goes on there and the store follows', async (t) => {
  const vmId = await runningGuest('mig-e2e-1', 1);
  const before = (await db.pool.query<{ g: string }>('SELECT owner_generation AS g FROM vms WHERE id = $1', [vmId]))
    .rows[0]!.g;
  const counterBefore = (await heartbeatsOn('host-1', vmId, 2)).at(-1)!;

  const started = await fleet.inject({
    method: 'POST',
    url: `/v1/vms/${vmId}/migrate`,
    payload: { targetHostId: 'host-2' },
  });
  assert.equal(started.statusCode, 202, started.body);
  const { workflowId } = started.json<{ workflowId: string }>();
  const result = (await fleet.waitForWorkflow(workflowId, MIGRATION_TIMEOUT_MS)) as unknown as MigrationResult;
  t.diagnostic(`result: ${JSON.stringify({ ...result, plan: result.plan?.prediction })}`);
  assert.equal(result.outcome, 'completed');
  assert.equal(result.finalHostId, 'host-2');
  assert.ok(result.measured, 'libvirt reported the finished job on the target');
  assert.ok(result.measured.passes >= 1 && result.measured.bytes > 0, JSON.stringify(result.measured));

  const counters = await heartbeatsOn('host-2', vmId, 2);
  assert.ok(counters[0]! > counterBefore, `the counter went on on host-2 (${counters[0]} after ${counterBefore})`);
  assert.deepEqual(await domainsOf(vmId), ['host-2:running']);
  const vm = (await fleet.inject({ method: 'GET', url: `/v1/vms/${vmId}` })).json<{ hostId: string; state: string }>();
  assert.deepEqual([vm.hostId, vm.state], ['host-2', 'running']);
  const after = (await db.pool.query<{ g: string }>('SELECT owner_generation AS g FROM vms WHERE id = $1', [vmId]))
    .rows[0]!.g;
  assert.equal(Number(after), Number(before) + 1, 'one fenced ownership write');
  const record = (await fleet.inject({ method: 'GET', url: `/v1/migrations/${workflowId}` })).json<{
    state: string;
    finalHostId: string;
  }>();
  assert.deepEqual([record.state, record.finalHostId], ['completed', 'host-2']);
});

test('a migration cancelled mid-job (its bandwidth capped to make it last) leaves it running on its source only', async () => {
  const vmId = await runningGuest('mig-e2e-2', 4);
  const started = await fleet.inject({
    method: 'POST',
    url: `/v1/vms/${vmId}/migrate`,
    payload: { targetHostId: 'host-2', policy: { bandwidthMiBps: 8, allowAutoConverge: false } },
  });
  assert.equal(started.statusCode, 202, started.body);
  const { workflowId } = started.json<{ workflowId: string }>();
  const handle = fleet.client.workflow.getHandle(workflowId);
  await waitUntil(
    'the job to run',
    async () => (await handle.query<MigrationProgress>('migrationProgress')).dataProcessedBytes,
    { timeoutMs: MIGRATION_TIMEOUT_MS, intervalMs: 250 },
  );
  await handle.signal('cancel', { reason: 'integration test' });
  const result = (await handle.result()) as MigrationResult;
  assert.equal(result.outcome, 'cancelled');
  assert.equal(result.finalHostId, 'host-1');
  assert.deepEqual(await domainsOf(vmId), ['host-1:running']);
  const vm = (await fleet.inject({ method: 'GET', url: `/v1/vms/${vmId}` })).json<{ hostId: string; state: string }>();
  assert.deepEqual([vm.hostId, vm.state], ['host-1', 'running']);
});
