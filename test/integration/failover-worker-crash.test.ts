/**
 * The control worker SIGKILLed twice in one failover, once in the grace and once right after the fence: each new
 * worker takes the same failoverHost over, and it ends as if nothing had happened. The guest runs on exactly one
 * other host, it was relocated once (one ownership write, one vm.relocated event), and the host was fenced once.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FailoverReport } from '../../store/failovers';
import { FAILOVER_AGENT_ENV } from '../support/failover-fleet';
import { FLEET_SHARED_POOL, TEST_FLEET_OVERRIDES } from '../support/fleet';
import { startProcessFleet, type ProcessFleet } from '../support/migration-process-fleet';
import { createTestDatabase, scratchDir, testConfig, type TestDatabase } from '../support/services';
import { waitUntil } from '../support/wait';

const HOSTS = ['host-1', 'host-2', 'host-3'];
// Long enough to kill the worker inside it on a loaded machine.
const GRACE_MS = 6000;
const FAILOVER_TIMEOUT_MS = 180_000;

let db: TestDatabase;
let fleet: ProcessFleet;

before(async () => {
  db = await createTestDatabase();
  const failover = { ...TEST_FLEET_OVERRIDES.failover, enabled: true, graceMs: GRACE_MS, witnessProbeTimeoutMs: 1000 };
  fleet = await startProcessFleet({
    config: testConfig({ databaseUrl: db.url, overrides: { ...TEST_FLEET_OVERRIDES, failover } }),
    pool: db.pool,
    hostIds: HOSTS,
    scratchDir,
    agentEnv: FAILOVER_AGENT_ENV,
  });
});

after(async () => {
  await fleet?.stop();
  await db?.drop();
});

async function report(hostId: string): Promise<FailoverReport | undefined> {
  const res = await fleet.inject({ method: 'GET', url: `/v1/hosts/${hostId}/failovers` });
  assert.equal(res.statusCode, 200, res.body);
  return res.json<{ failovers: FailoverReport[] }>().failovers[0];
}

async function count(sql: string, args: unknown[]): Promise<number> {
  return (await db.pool.query(sql, args)).rowCount ?? 0;
}

test('SIGKILL of the control worker in the grace and after the fence: the failover still completes, once', async (t) => {
  const created = await fleet.createVm({
    name: 'crash-failover-guest',
    vcpus: 1,
    memoryMib: 64,
    disks: [{ name: 'root', sizeMib: 16 }],
    storagePool: FLEET_SHARED_POOL,
    hostId: 'host-1',
  });
  await fleet.waitForWorkflow(created.workflowId, 120_000);
  const vmId = created.vmId;
  const generation = Number(
    (await db.pool.query<{ g: string }>('SELECT owner_generation AS g FROM vms WHERE id = $1', [vmId])).rows[0]!.g,
  );

  await fleet.kill(fleet.agents['host-1']!);
  const opened = await waitUntil('the failover to open', () => report('host-1'), { timeoutMs: FAILOVER_TIMEOUT_MS });
  assert.equal(opened.state, 'running');
  assert.equal(opened.fencedAt, undefined, 'killed inside the grace, before anything was fenced');
  await fleet.kill(fleet.controlWorker()!);
  await fleet.startControlWorker();

  const fenced = await waitUntil(
    'the fence',
    async () => ((await report('host-1'))?.fencedAt ? report('host-1') : undefined),
    {
      timeoutMs: FAILOVER_TIMEOUT_MS,
      intervalMs: 20,
    },
  );
  await fleet.kill(fleet.controlWorker()!);
  t.diagnostic(`second kill with ${fenced.vms.length} guest outcome(s) recorded, state ${fenced.state}`);
  await fleet.startControlWorker();

  const done = await waitUntil(
    'the failover to finish',
    async () => {
      const r = await report('host-1');
      return r && r.state !== 'running' ? r : undefined;
    },
    { timeoutMs: FAILOVER_TIMEOUT_MS },
  );
  assert.equal(done.state, 'completed', JSON.stringify(done));
  assert.equal(done.id, opened.id, 'one failover, taken over by each new worker');
  const vm = done.vms.find((v) => v.vmId === vmId);
  assert.equal(vm?.outcome, 'restarted');

  const running: string[] = [];
  for (const hostId of HOSTS) {
    const domains = await fleet.libvirt[hostId]!.listAllDomains();
    if (domains.some((d) => d.uuid === vmId && d.state === 'running')) running.push(hostId);
  }
  assert.deepEqual(running, [vm.targetHostId], 'running on its new host only');
  const row = (
    await db.pool.query<{ host_id: string; state: string; g: string }>(
      'SELECT host_id, state, owner_generation AS g FROM vms WHERE id = $1',
      [vmId],
    )
  ).rows[0]!;
  assert.deepEqual([row.host_id, row.state, Number(row.g)], [vm.targetHostId, 'running', generation + 1]);
  assert.equal(await count(`SELECT 1 FROM events WHERE kind = 'vm.relocated' AND vm_id = $1`, [vmId]), 1);
  assert.equal(await count(`SELECT 1 FROM events WHERE kind = 'host.fenced' AND host_id = 'host-1'`, []), 1);
});
