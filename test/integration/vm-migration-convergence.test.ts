/**
 * Convergence control on real libvirt: a test guest that dirties memory far faster than the policy's bandwidth cap
 * lets pre-copy send it, so the plan predicts non-convergence. With escalation forbidden the request is refused
 * with 422 before anything moves. With escalation allowed the migration climbs the ladder, each step in the
 * migration's record and events. Without post-copy (auto-converge is then what the plan needs): the max downtime
 * raised to the ceiling, QEMU's throttle recorded, and an abort that leaves the guest running on its source only.
 * With post-copy: the raises, then post-copy, which completes on the target; that the guest survives it there is a
 * todo on this machine (POST_COPY_TODO). One guest serves all three, in this order. Each case is bounded by its
 * policy: a low ceiling, one pass without gain per step, and for the abort the one-minute deadline floor.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import type { MigrationEscalation, MigrationPlan, MigrationPolicyInput } from '../../domain/migration';
import { migrationJobSample } from '../../native/libvirt';
import type { EventRow } from '../../store/events';
import type { MigrationRecord } from '../../store/migration-records';
import {
  bootBusyGuest,
  consoleOn,
  domainsOf,
  followMigration,
  heartbeatsOn,
  requestMigration,
  startMigrationFleet,
  storedVm,
  type MigrationFleet,
} from '../support/live-migration-fleet';

const MIB = 1024 * 1024;
/**
 * 128 MiB leaves room for the 32 MiB working set (as in the driver's own migration test) and keeps the guest within
 * the abort case's one-minute deadline: the plan refuses outright a guest whose memory, copied once at the link
 * probe's rate, outlasts its deadline, and the probe (TLS between two agent processes) read 1.7-5.7 MiB/s here while
 * other helpers' TCG guests loaded the machine. 128 MiB fits a minute down to 2.2 MiB/s. 100 MiB/s is far more than
 * the cap, yet leaves TCG room to catch up on what the guest's throttled seconds left unwritten: its workload writes
 * every page it fell behind on before its next heartbeat.
 */
const GUEST = { name: 'mig-conv', memoryMib: 128, workload: { dirtyMiBps: 100, workingSetMiB: 32 } };
const CAP_MIBPS = 8;
/** Where the deadline is not what the case is about: an hour per GiB, so that no probe figure refuses the plan. */
const LONG_DEADLINE = { deadlineSecondsPerGiB: 3600 };
/** What each allowed case shares: a cap the guest outruns, two raises (100 → 200 → 400 ms), short patience. */
const LADDER = { bandwidthMiBps: CAP_MIBPS, maxDowntimeMs: 100, downtimeCeilingMs: 400, stallPasses: 1 };

/**
 * Seen on this machine (QEMU 7.2 under TCG, host kernel 6.18): a guest switched to post-copy after pre-copy passes
 * (at pass 3 or 5, with the downtime raised or not) panics on its target, "Kernel panic - not syncing: Fatal
 * exception in interrupt", or hangs without a word, while libvirt has it running (migrated) and the job completed;
 * switched in pass 1, it lives on, as in the driver's own migration test. The fault tests see the same of a pre-copy
 * that needs a fourth pass: pages written after the first passes are lost on the way. Until that is understood, the
 * guest's survival is a todo.
 */
const POST_COPY_TODO = 'QEMU 7.2/TCG here loses pages after pre-copy passes: the guest panics or hangs on the target';
/** A guest that lives prints a heartbeat a second; one that died says nothing more, however long one waits. */
const TARGET_CONSOLE_WAIT_MS = 90_000;

let harness: MigrationFleet;
let vmId: string;

before(async () => {
  harness = await startMigrationFleet();
  vmId = await bootBusyGuest(harness.fleet, GUEST);
});

after(async () => {
  await harness?.stop();
});

function mibText(bytes: number): string {
  return `${(bytes / MIB).toFixed(1)} MiB`;
}

function planText(plan: MigrationPlan): string {
  const { prediction, inputs } = plan;
  return (
    `plan: dirty rate ${mibText(inputs.dirtyRateBytesPerSecond)}/s measured (the guest writes ` +
    `${GUEST.workload.dirtyMiBps} MiB/s over ${GUEST.workload.workingSetMiB} MiB) against a ${CAP_MIBPS} MiB/s cap ` +
    `(probe ${mibText(inputs.linkBandwidthBytesPerSecond)}/s); ` +
    `predicted ${prediction.converges ? 'converging' : 'not converging'}, ${prediction.passes} passes, ` +
    `mitigation ${plan.mitigation}, deadline ${plan.deadlineMs} ms; ${prediction.reason ?? ''}`
  );
}

function stepText(e: MigrationEscalation): string {
  const value = e.value !== undefined ? ` (${e.value})` : '';
  return `#${e.seq} ${e.kind}${value} at pass ${e.pass}, ${mibText(e.dataRemainingBytes)} left: ${e.reason}`;
}

async function escalationEvents(workflowId: string): Promise<EventRow[]> {
  const response = await harness.fleet.inject({ method: 'GET', url: `/v1/events?vmId=${vmId}&limit=1000` });
  assert.equal(response.statusCode, 200, response.body);
  return response
    .json<{ events: EventRow[] }>()
    .events.filter((e) => e.workflowId === workflowId && e.kind === 'migration.escalation')
    .reverse();
}

/**
 * The ladder in the record and its events: steps numbered 1, 2, … at passes that never go back; the raises double
 * the downtime from the policy's start up to its ceiling, all before the last step; QEMU's throttle is recorded at
 * most once, before the last step; the last step is `last`. Returns the kinds in order.
 */
async function assertLadder(record: MigrationRecord, last: 'abort' | 'post-copy'): Promise<string[]> {
  const steps = record.escalations;
  assert.deepEqual(
    steps.map((e) => e.seq),
    steps.map((_, i) => i + 1),
  );
  for (let i = 1; i < steps.length; i++) assert.ok(steps[i]!.pass >= steps[i - 1]!.pass, stepText(steps[i]!));
  assert.equal(steps.at(-1)?.kind, last, steps.map(stepText).join('\n'));
  const raises = steps.filter((e) => e.kind === 'raise-downtime').map((e) => e.value);
  assert.deepEqual(raises, [200, 400], 'the downtime doubled from 100 ms up to the 400 ms ceiling');
  const throttles = steps.filter((e) => e.kind === 'auto-converge');
  assert.ok(throttles.length <= 1, 'the throttle is recorded once');
  for (const throttle of throttles) assert.ok(throttle.value! > 0 && throttle.value! <= 99, stepText(throttle));
  assert.equal(steps.filter((e) => e.kind === last).length, 1);
  const events = await escalationEvents(record.id);
  assert.deepEqual(
    events.map((e) => e.message.slice(0, e.message.indexOf(' at pass'))),
    steps.map((e) => `migration ${record.id} step ${e.seq}: ${e.kind}${e.value !== undefined ? ` (${e.value})` : ''}`),
    'one event per step, in order',
  );
  return steps.map((e) => e.kind);
}

/** Starts a migration the plan accepts though it predicts no convergence, and follows it to its end. */
async function escalatedMigration(t: TestContext, input: { to: string; policy: MigrationPolicyInput }) {
  const response = await requestMigration(harness.fleet, vmId, { targetHostId: input.to, policy: input.policy });
  assert.equal(response.statusCode, 202, response.body);
  const { workflowId } = response.json<{ workflowId: string }>();
  // The record has the plan even when planning outlasted the route's wait on a loaded machine.
  const { record, trace } = await followMigration(harness.fleet, workflowId);
  const plan = record.plan!;
  t.diagnostic(planText(plan));
  assert.equal(plan.prediction.converges, false, planText(plan));
  t.diagnostic(`progress: ${trace.join(' | ')}`);
  for (const step of record.escalations) t.diagnostic(stepText(step));
  return { plan, record };
}

test('escalation forbidden: the plan predicts non-convergence and the request is refused with 422, nothing moves', async (t) => {
  const { fleet } = harness;
  const before = await storedVm(fleet, vmId);
  const response = await requestMigration(fleet, vmId, {
    targetHostId: 'host-2',
    policy: { bandwidthMiBps: CAP_MIBPS, escalation: 'forbidden', ...LONG_DEADLINE },
  });
  t.diagnostic(response.body);
  assert.equal(response.statusCode, 422, response.body);
  const body = response.json<{ error: string; message: string }>();
  assert.equal(body.error, 'MigrationRefused');
  assert.match(body.message, /pre-copy will not converge: .*the policy forbids escalation/);
  // The link is the cap, or the probe's figure where that was lower.
  const [, dirty, link] = /the guest dirties ([\d.]+) MiB\/s against a ([\d.]+) MiB\/s link/.exec(body.message) ?? [];
  assert.ok(Number(dirty) > Number(link) && Number(link) <= CAP_MIBPS, body.message);
  assert.match(body.message, /memory 128 MiB, dirty rate [\d.]+ MiB\/s, link [\d.]+ MiB\/s at [\d.]+ ms RTT/);
  const workflowId = /\(migration (migrate-[^)]+)\)$/.exec(body.message)?.[1];
  assert.ok(workflowId, body.message);

  // Nothing moved: no job on the source, nothing on the target, the VM as it was.
  const name = GUEST.name;
  assert.equal(migrationJobSample(await fleet.libvirt['host-1']!.domainGetJobStats({ name })).state, 'none');
  assert.deepEqual(await domainsOf(fleet, vmId), ['host-1:running']);
  assert.deepEqual(await storedVm(fleet, vmId), before);
  const listed = await fleet.inject({ method: 'GET', url: `/v1/migrations?vmId=${vmId}` });
  const rows = listed.json<{ migrations: MigrationRecord[] }>().migrations;
  assert.deepEqual(
    rows.map((r) => [r.id, r.state, r.finalHostId]),
    [[workflowId, 'refused', 'host-1']],
  );
  const plan = rows[0]!.plan!;
  t.diagnostic(planText(plan));
  assert.equal(plan.prediction.converges, false);
  assert.ok(plan.inputs.dirtyRateBytesPerSecond > CAP_MIBPS * MIB, planText(plan));
  assert.equal(rows[0]!.escalations.length, 0);
});

test('escalation allowed without post-copy: raised, throttled, then aborted; it runs on its source only', async (t) => {
  const { fleet } = harness;
  const before = await storedVm(fleet, vmId);
  const { plan, record } = await escalatedMigration(t, {
    to: 'host-2',
    policy: { ...LADDER, allowAutoConverge: true },
  });
  assert.equal(plan.mitigation, 'auto-converge');
  assert.equal(plan.deadlineMs, 60_000);
  assert.deepEqual([record.state, record.finalHostId], ['failed', 'host-1'], record.error);
  const kinds = await assertLadder(record, 'abort');
  t.diagnostic(`steps: ${kinds.join(' → ')}`);
  // The deadline, or the ceiling reached once the throttle stopped rising: either way the reason says which.
  const abort = record.escalations.at(-1)!;
  assert.match(abort.reason, /completion deadline passed|the policy allows no post-copy/);
  assert.ok(record.error?.includes(`convergence control aborted the migration: ${abort.reason}`), record.error);

  assert.deepEqual(await domainsOf(fleet, vmId), ['host-1:running']);
  assert.deepEqual(await storedVm(fleet, vmId), before);
  // The workload writes what its throttled seconds left unwritten before its next heartbeat: generous wait.
  const beats = await heartbeatsOn(fleet, { hostId: 'host-1', vmId, count: 1 });
  const later = await heartbeatsOn(fleet, { hostId: 'host-1', vmId, count: beats.length + 2 });
  assert.ok(later.at(-1)! > beats.at(-1)!, 'the guest runs on on host-1');
});

test('escalation allowed with post-copy: downtime raised to the ceiling, then post-copy completes on host-2', async (t) => {
  const { fleet } = harness;
  const before = await storedVm(fleet, vmId);
  const lastOnSource = (await heartbeatsOn(fleet, { hostId: 'host-1', vmId, count: 1 })).at(-1)!;
  // Without auto-converge, so that post-copy comes from the stall: a rising throttle would hold it off until the
  // deadline (the unit tests cover that path), and a throttled guest's workload falls behind its heartbeat.
  const { plan, record } = await escalatedMigration(t, {
    to: 'host-2',
    policy: { ...LADDER, ...LONG_DEADLINE, allowAutoConverge: false, allowPostCopy: true },
  });
  assert.equal(plan.mitigation, 'post-copy');
  assert.equal(plan.parameters.postCopy, true);
  assert.deepEqual([record.state, record.finalHostId], ['completed', 'host-2'], record.error);
  const kinds = await assertLadder(record, 'post-copy');
  assert.deepEqual(kinds, ['raise-downtime', 'raise-downtime', 'post-copy']);
  assert.match(record.escalations[2]!.reason, /^pre-copy stalled at the 400 ms ceiling: .*; switching to post-copy$/);
  t.diagnostic(`steps: ${kinds.join(' → ')}; measured ${JSON.stringify(record.result?.measured ?? null)}`);

  assert.deepEqual(await domainsOf(fleet, vmId), ['host-2:running']);
  const vm = await storedVm(fleet, vmId);
  assert.deepEqual([vm.state, vm.hostId, vm.generation], ['running', 'host-2', before.generation + 1]);
  await t.test('the guest lives on on host-2, its counter going on', { todo: POST_COPY_TODO }, async () => {
    const seen = await consoleOn(fleet, { hostId: 'host-2', vmId, count: 3, timeoutMs: TARGET_CONSOLE_WAIT_MS });
    assert.equal(seen.panic, undefined, `the guest’s kernel on host-2: ${seen.panic}`);
    const onTarget = seen.heartbeats;
    assert.ok(onTarget[0]! > lastOnSource, `the counter went on on host-2 (${onTarget[0]} after ${lastOnSource})`);
    assert.deepEqual(
      onTarget,
      onTarget.map((_, i) => onTarget[0]! + i),
    );
  });
});
