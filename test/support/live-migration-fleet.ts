/**
 * What the live-migration integration tests of test/integration/vm-migration*.test.ts share: a two-host fleet with
 * the test guest registered as an image on its shared pool, busy guests booted from it, each host's own console log
 * of a guest read back, and a migration followed through the API (GET /v1/migrations/:id) to its end, whatever that
 * end is: a refused or aborted migration fails its workflow, so the workflow route cannot be waited on for those.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { vmConsoleLogPath } from '../../activities/storage-paths';
import type { MigrationPolicyInput } from '../../domain/migration';
import { TESTGUEST_NAME } from '../../guest/build';
import { parseConsoleLog, testGuestOemStrings, type TestGuestWorkload } from '../../guest/workload';
import type { MigrationRecord } from '../../store/migration-records';
import { FLEET_SHARED_POOL, startFleet, TEST_FLEET_OVERRIDES, type Fleet } from './fleet';
import { registerTestGuest } from './test-guest-library';
import { createTestDatabase, scratchDir, testConfig, type TestDatabase } from './services';
import { waitUntil } from './wait';

export const MIGRATION_HOSTS = ['host-1', 'host-2'];
export const GUEST_MEMORY_MIB = 256;
// Bounds for a broken boot or migration on a loaded, shared 2-core TCG machine, not speed requirements.
export const HEARTBEAT_TIMEOUT_MS = 180_000;
export const MIGRATION_TIMEOUT_MS = 420_000;

const ENDED: ReadonlySet<MigrationRecord['state']> = new Set(['completed', 'failed', 'cancelled', 'refused']);

export interface MigrationFleet {
  fleet: Fleet;
  stop(): Promise<void>;
}

/** Two harness hosts on one shared pool, sampling migration jobs four times a second, with the test guest image. */
export async function startMigrationFleet(): Promise<MigrationFleet> {
  const db: TestDatabase = await createTestDatabase();
  const fleet = await startFleet({
    config: testConfig({
      databaseUrl: db.url,
      overrides: { ...TEST_FLEET_OVERRIDES, migration: { pollIntervalMs: 250 } },
    }),
    pool: db.pool,
    hostIds: MIGRATION_HOSTS,
    scratchDir,
  }).catch(async (err: unknown) => {
    await db.drop();
    throw err;
  });
  const stop = async () => {
    await fleet.stop();
    await db.drop();
  };
  try {
    await registerTestGuest(fleet);
  } catch (err) {
    await stop();
    throw err;
  }
  return { fleet, stop };
}

/** The counters in a host's own console log of the guest, once it shows at least `count` of them. */
export async function heartbeatsOn(fleet: Fleet, input: { hostId: string; vmId: string; count: number }) {
  const log = vmConsoleLogPath({ imageRoot: fleet.imageRoots[input.hostId]!, vmId: input.vmId });
  const report = await waitUntil(
    `${input.count} heartbeats in ${log}`,
    async () => {
      const parsed = parseConsoleLog(await readFile(log, 'utf8').catch(() => ''));
      assert.equal(parsed.error, undefined, `the guest's workload refused to start: ${parsed.error}`);
      return parsed.heartbeats.length >= input.count ? parsed : undefined;
    },
    { timeoutMs: HEARTBEAT_TIMEOUT_MS, intervalMs: 250 },
  );
  return report.heartbeats;
}

/**
 * A host's own console log of the guest once it shows `count` heartbeats, or the kernel panic that ends them: a
 * guest that died on its target (see POST_COPY_TODO in vm-migration-convergence.test.ts) says so at once instead of
 * being waited on in silence. A guest that hangs without a word still runs the wait out.
 */
export async function consoleOn(
  fleet: Fleet,
  input: { hostId: string; vmId: string; count: number; timeoutMs?: number },
): Promise<{ heartbeats: number[]; panic?: string }> {
  const log = vmConsoleLogPath({ imageRoot: fleet.imageRoots[input.hostId]!, vmId: input.vmId });
  return waitUntil(
    `${input.count} heartbeats or a kernel panic in ${log}`,
    async () => {
      const { heartbeats, panic } = parseConsoleLog(await readFile(log, 'utf8').catch(() => ''));
      return heartbeats.length >= input.count || panic ? { heartbeats, ...(panic ? { panic } : {}) } : undefined;
    },
    { timeoutMs: input.timeoutMs ?? HEARTBEAT_TIMEOUT_MS, intervalMs: 500 },
  );
}

/** A test guest running the workload on host-1, on the shared pool, once its counter is going. */
export async function bootBusyGuest(
  fleet: Fleet,
  input: { name: string; workload: TestGuestWorkload; memoryMib?: number },
) {
  const started = await fleet.createVm({
    name: input.name,
    vcpus: 1,
    memoryMib: input.memoryMib ?? GUEST_MEMORY_MIB,
    image: TESTGUEST_NAME,
    storagePool: FLEET_SHARED_POOL,
    hostId: 'host-1',
    oemStrings: testGuestOemStrings(input.workload),
  });
  await fleet.waitForWorkflow(started.workflowId, MIGRATION_TIMEOUT_MS);
  await heartbeatsOn(fleet, { hostId: 'host-1', vmId: started.vmId, count: 2 });
  return started.vmId;
}

/** Where libvirt has the VM, as `host:state`, on every host of the fleet. */
export async function domainsOf(fleet: Fleet, vmId: string): Promise<string[]> {
  return (await fleet.allDomains()).filter((d) => d.uuid === vmId).map((d) => `${d.hostId}:${d.state}`);
}

/** The VM as the store has it: state, host and ownership generation. */
export async function storedVm(fleet: Fleet, vmId: string) {
  const row = await fleet.pool.query<{ state: string; host_id: string | null; owner_generation: string }>(
    'SELECT state, host_id, owner_generation FROM vms WHERE id = $1',
    [vmId],
  );
  const vm = row.rows[0]!;
  return { state: vm.state, hostId: vm.host_id, generation: Number(vm.owner_generation) };
}

export function requestMigration(
  fleet: Fleet,
  vmId: string,
  body: { targetHostId?: string; policy?: MigrationPolicyInput },
) {
  return fleet.inject({ method: 'POST', url: `/v1/vms/${vmId}/migrate`, payload: body });
}

export async function migrationRecord(fleet: Fleet, workflowId: string): Promise<MigrationRecord> {
  const response = await fleet.inject({ method: 'GET', url: `/v1/migrations/${workflowId}` });
  assert.equal(response.statusCode, 200, response.body);
  return response.json<MigrationRecord>();
}

/**
 * Follows a migration through GET /v1/migrations/:id until its row has an outcome, and returns that row with each
 * distinct live progress line seen on the way (seconds since the start, phase, pass, what was left, steps taken).
 */
export async function followMigration(
  fleet: Fleet,
  workflowId: string,
): Promise<{ record: MigrationRecord; trace: string[] }> {
  const trace: string[] = [];
  let previous = '';
  const record = await waitUntil(
    `migration ${workflowId} to end`,
    async () => {
      const current = await migrationRecord(fleet, workflowId);
      const p = current.progress;
      if (p) {
        const left = p.dataRemainingBytes === undefined ? '' : ` ${(p.dataRemainingBytes / 2 ** 20).toFixed(1)} MiB`;
        const line = `${p.phase} pass ${p.pass ?? '-'}${left} (${p.escalations.length} steps)`;
        if (line !== previous) trace.push(`${Math.round((p.elapsedMs ?? 0) / 1000)} s ${line}`);
        previous = line;
      }
      return ENDED.has(current.state) ? current : undefined;
    },
    { timeoutMs: MIGRATION_TIMEOUT_MS, intervalMs: 500 },
  );
  return { record, trace };
}
