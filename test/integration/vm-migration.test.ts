/**
 * Live migration end to end on real libvirt: a test guest on the fleet's shared pool, dirtying memory, migrates
 * host-1 → host-2 and back through the API, the agents and libvirt. After each hop libvirt has it running on the
 * target only (nothing left defined on the source), its heartbeat counter goes on in the target's own console log
 * from where the source's stopped, the store names the target as its owner under the next generation, and the test
 * reports libvirt's measured downtime, time and bytes beside the plan's prediction. Then a migration cancelled while
 * its job runs (its bandwidth capped so that it lasts) leaves the guest running on its source, and nothing on the
 * target. Fails without libvirt or the guest's build packages, as the other harness tests do.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import type { MigrationProgress, MigrationResult } from '../../domain/migration';
import type { TestGuestWorkload } from '../../guest/workload';
import {
  bootBusyGuest,
  consoleOn,
  domainsOf,
  heartbeatsOn,
  migrationRecord,
  MIGRATION_TIMEOUT_MS,
  requestMigration,
  startMigrationFleet,
  storedVm,
  type MigrationFleet,
} from '../support/live-migration-fleet';
import { waitUntil } from '../support/wait';

const MIB = 1024 * 1024;
// Busy, yet well under what an uncapped loopback migration sends: it converges in pre-copy with QEMU's defaults.
const BUSY: TestGuestWorkload = { dirtyMiBps: 24, workingSetMiB: 48 };
/**
 * The default policy but for two figures. A longer deadline: the plan refuses a guest whose memory, copied once at the
 * link probe's rate, outlasts the deadline (one minute for 256 MiB by default), and the probe, TLS between two agent
 * processes, read 1.7-5.7 MiB/s while other TCG guests loaded this machine, though the migration stream itself sends
 * far faster; 600 s per GiB gives 150 s, enough down to a 1.7 MiB/s probe. And a 1 s max downtime, so that QEMU
 * switches over after two or three passes however loaded the machine: under this machine's QEMU 7.2/TCG a pre-copy
 * that needs a fourth pass loses pages, and the guest dies on its target (POST_COPY_TODO in the convergence test).
 */
const POLICY = { deadlineSecondsPerGiB: 600, maxDowntimeMs: 1000 };

let harness: MigrationFleet;

before(async () => {
  harness = await startMigrationFleet();
});

after(async () => {
  await harness?.stop();
});

function mibText(bytes: number): string {
  return `${(bytes / MIB).toFixed(1)} MiB`;
}

/** One hop through the API, checked on libvirt, in the store and in both hosts' console logs, its figures reported. */
async function hop(t: TestContext, vmId: string, from: string, to: string): Promise<void> {
  const { fleet } = harness;
  const before = await storedVm(fleet, vmId);
  assert.deepEqual([before.state, before.hostId], ['running', from]);
  const started = await requestMigration(fleet, vmId, { targetHostId: to, policy: POLICY });
  assert.equal(started.statusCode, 202, started.body);
  const { workflowId } = started.json<{ workflowId: string }>();
  const result = (await fleet.waitForWorkflow(workflowId, MIGRATION_TIMEOUT_MS)) as unknown as MigrationResult;
  const { plan } = result;
  assert.ok(plan, 'the result carries its plan');
  assert.equal(result.outcome, 'completed', JSON.stringify(result));
  assert.deepEqual([result.sourceHostId, result.finalHostId], [from, to]);
  const { measured } = result;
  assert.ok(measured, 'libvirt reported the finished job on the target');
  assert.ok(measured.passes >= 1 && measured.bytes > 0 && measured.totalMs > 0, JSON.stringify(measured));
  assert.ok(measured.downtimeMs > 0 && measured.downtimeMs < measured.totalMs, JSON.stringify(measured));

  // libvirt: running on the target, persistent there, and neither running nor defined on the source.
  assert.deepEqual(await domainsOf(fleet, vmId), [`${to}:running`]);
  const name = (await fleet.allDomains()).find((d) => d.uuid === vmId)!.name;
  assert.equal((await fleet.libvirt[to]!.domainLookupByName({ name })).persistent, true, 'defined on the target');

  const { prediction, inputs } = plan;
  t.diagnostic(
    `${from} → ${to}: downtime ${measured.downtimeMs} ms, total ${measured.totalMs} ms (job call ${measured.jobMs} ms, ` +
      `workflow ${result.workflowMs} ms), ${mibText(measured.bytes)} in ${measured.passes} passes; predicted ` +
      `${prediction.converges ? 'converging' : 'not converging'} in ${prediction.passes} passes, ` +
      `${prediction.totalMs} ms, downtime ${prediction.downtimeMs} ms, ${mibText(prediction.bytes)}; ` +
      `from dirty rate ${mibText(inputs.dirtyRateBytesPerSecond)}/s (guest writes ${BUSY.dirtyMiBps} MiB/s over ` +
      `${BUSY.workingSetMiB} MiB), link ${mibText(inputs.linkBandwidthBytesPerSecond)}/s at ` +
      `${inputs.linkRttMs.toFixed(2)} ms (${inputs.mode})`,
  );

  // The source's log holds the counter up to the switchover; the target's own log carries on from there.
  const onSource = await heartbeatsOn(fleet, { hostId: from, vmId, count: 1 });
  const target = await consoleOn(fleet, { hostId: to, vmId, count: 3 });
  assert.equal(target.panic, undefined, `the guest's kernel on ${to} after ${measured.passes} passes: ${target.panic}`);
  const onTarget = target.heartbeats;
  const last = onSource.at(-1)!;
  t.diagnostic(`heartbeat ${last} on ${from} → ${onTarget[0]} on ${to}`);
  assert.ok(onTarget[0]! > last, `the counter went on on ${to} (${onTarget[0]} after ${last} on ${from})`);
  assert.deepEqual(
    onTarget,
    onTarget.map((_, i) => onTarget[0]! + i),
    'the counter rises by one each second on the target, without a restart',
  );

  const afterHop = await storedVm(fleet, vmId);
  assert.deepEqual([afterHop.state, afterHop.hostId], ['running', to]);
  assert.equal(afterHop.generation, before.generation + 1, 'one fenced ownership write');
  const record = await migrationRecord(fleet, workflowId);
  assert.deepEqual([record.state, record.finalHostId], ['completed', to]);
  assert.equal(record.escalations.length, 0, JSON.stringify(record.escalations));
}

test('a guest dirtying memory migrates host-1 → host-2 and back: it runs on the target only, its counter goes on', async (t) => {
  const { fleet } = harness;
  const vmId = await bootBusyGuest(fleet, { name: 'mig-e2e-1', workload: BUSY });
  await hop(t, vmId, 'host-1', 'host-2');
  await hop(t, vmId, 'host-2', 'host-1');
  // One guest at a time on this machine: the next test boots its own.
  await fleet.waitForWorkflow((await fleet.operate(vmId, 'delete')).workflowId, MIGRATION_TIMEOUT_MS);
  assert.deepEqual(await domainsOf(fleet, vmId), []);
});

test('a migration cancelled mid-job (its bandwidth capped to make it last) leaves it running on its source only', async () => {
  const { fleet } = harness;
  // Nearly idle, so that the plan accepts the cap whatever the dirty-rate sample reads; auto-converge stays allowed.
  const vmId = await bootBusyGuest(fleet, { name: 'mig-e2e-2', workload: { dirtyMiBps: 1 } });
  const before = await storedVm(fleet, vmId);
  const started = await requestMigration(fleet, vmId, {
    targetHostId: 'host-2',
    policy: { ...POLICY, bandwidthMiBps: 8 },
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
  assert.deepEqual(await domainsOf(fleet, vmId), ['host-1:running']);
  const vm = await storedVm(fleet, vmId);
  assert.deepEqual([vm.state, vm.hostId, vm.generation], ['running', 'host-1', before.generation]);
  const record = await migrationRecord(fleet, workflowId);
  assert.deepEqual([record.state, record.finalHostId], ['cancelled', 'host-1']);
});
