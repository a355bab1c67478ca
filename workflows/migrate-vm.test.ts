/**
 * migrateVm on the real Temporal server with mocked activities (test/support/migration-workflow-harness.ts): the
 * saga's steps in order, the progress query, a refusal, convergence control's escalations, the slot queue, and a
 * control worker that dies mid-migration while the job runs on.
 */
import { DefaultLogger, Runtime } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type {
  MigrationEscalation,
  MigrationPolicyInput,
  MigrationProgress,
  MigrationResult,
} from '../domain/migration';
import type { MigrationControlActivities } from '../activities/migration-control-activities';
import {
  argsOf,
  connectWorkflowTestEnv,
  failureOf,
  MiB,
  migrationHarness,
  names,
  newSim,
  runningSample,
  withMigrationWorkers,
  type Calls,
  type WorkflowTestEnv,
} from '../test/support/migration-workflow-harness';
import { waitUntil } from '../test/support/wait';

let env: WorkflowTestEnv;

before(async () => {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  env = await connectWorkflowTestEnv();
});

after(async () => {
  await env.close();
});

test('migrateVm plans, locks, prepares, migrates under sampling, confirms on both hosts and commits', async () => {
  const calls: Calls = [];
  const sim = newSim();
  const { result, midJob } = await withMigrationWorkers(env, { calls, sim }, async (h) => {
    const handle = await h.start();
    await waitUntil('two job samples', () => sim.samples >= 2);
    const progress = await handle.query<MigrationProgress>('migrationProgress');
    sim.finish = true;
    return { result: await handle.result(), midJob: progress };
  });
  const order = names(calls).filter((n) => !['sampleMigrationJob', 'updateMigrationProgress'].includes(n));
  assert.deepEqual(order.slice(0, 2), ['openMigration', 'chooseMigrationTarget']);
  assert.deepEqual(new Set(order.slice(2, 4)), new Set(['probeLink', 'measureDirtyRate']));
  assert.deepEqual(order.slice(4), [
    'recordLinkProbe',
    'recordMigrationPlan',
    'lockVmForMigration',
    'acquireMigrationSlot',
    'describeMigrationSource',
    'prepareMigrationTarget',
    'migrateDomain',
    ...(order.includes('inspect:source') && order.indexOf('inspect:source') < order.indexOf('inspect:target')
      ? ['inspect:source', 'inspect:target']
      : ['inspect:target', 'inspect:source']),
    'commitMigration',
    'cleanupMigrationSource',
    'finishMigration',
  ]);
  assert.equal(midJob.phase, 'precopy');
  assert.ok((midJob.dataRemainingBytes ?? 0) > 0 && (midJob.dataProcessedBytes ?? 0) > 0, JSON.stringify(midJob));
  assert.ok(midJob.etaMs !== undefined && midJob.etaMs > 0, `an ETA while the job runs: ${JSON.stringify(midJob)}`);

  const [job] = argsOf<{
    p2p: boolean;
    destUri: string;
    migrateUri: string;
    targetConsoleLogPath: string;
    parameters: { maxDowntimeMs: number };
  }>(calls, 'migrateDomain');
  assert.equal(job!.p2p, false, 'no peer libvirt URI: managed direct');
  assert.match(job!.destUri, /^qemu\+unix:/);
  assert.equal(job!.migrateUri, 'tcp://127.0.0.1');
  assert.match(job!.targetConsoleLogPath, /^\/var\/lib\/dst-\w+\/consoles\//, "the target's own console log");
  assert.equal(job!.parameters.maxDowntimeMs, 300);
  const [prepare] = argsOf<{ storagePool: string; disks: unknown[] }>(calls, 'prepareMigrationTarget');
  assert.equal(prepare!.storagePool, 'nfs');
  assert.equal(prepare!.disks.length, 1);
  const [commit] = argsOf<{ expectedGeneration: number; targetHostId: string }>(calls, 'commitMigration');
  assert.equal(commit!.expectedGeneration, 7, 'the commit matches the generation the lock saw');

  assert.equal(result.outcome, 'completed');
  assert.equal(result.finalHostId, result.targetHostId);
  assert.deepEqual(result.measured, { totalMs: 480, downtimeMs: 21, bytes: 270 * MiB, passes: 3, jobMs: 450 });
  assert.equal(result.plan?.mode, 'datacenter');
  const [finish] = argsOf<{ outcome: string; finalHostId: string; result: MigrationResult }>(calls, 'finishMigration');
  assert.equal(finish!.outcome, 'completed');
  assert.equal(finish!.finalHostId, result.targetHostId);
  const phases = argsOf<{ progress: MigrationProgress }>(calls, 'updateMigrationProgress').map((p) => p.progress.phase);
  assert.deepEqual([...new Set(phases)], ['planning', 'preparing', 'precopy', 'committing']);
  assert.equal(calls.filter(([n]) => n === 'releaseMigration').length, 0);
});

test('a plan that cannot finish in time is refused before anything is locked, with its figures', async () => {
  const calls: Calls = [];
  const error = await withMigrationWorkers(env, { calls, sim: newSim(), probeMbps: 8 }, async (h) =>
    (await h.start()).result().then(
      () => undefined,
      (err: unknown) => err,
    ),
  );
  const failure = failureOf(error);
  assert.equal(failure.type, 'MigrationRefused');
  assert.match(failure.message, /memory 256 MiB/);
  assert.match(failure.message, /link 1\.0 MiB\/s at 0\.3 ms RTT \(datacenter\)/);
  const [finish] = argsOf<{ outcome: string; finalHostId: string }>(calls, 'finishMigration');
  assert.equal(finish!.outcome, 'refused');
  assert.ok(!names(calls).includes('lockVmForMigration'), names(calls).join(', '));
  assert.ok(names(calls).includes('recordMigrationPlan'), 'the refused plan is recorded');
});

test('a plateau escalates in order: downtime raised twice to the ceiling, then post-copy', async () => {
  const calls: Calls = [];
  const sim = newSim();
  const plateau = (n: number) =>
    runningSample(n, {
      pass: n,
      dataRemainingBytes: 100 * MiB,
      memoryDirtyRateBytesPerSecond: 200 * MiB,
      memoryBytesPerSecond: 100 * MiB,
      ...(sim.finish ? { phase: 'postcopy' as const } : {}),
    });
  const policy: MigrationPolicyInput = {
    maxDowntimeMs: 300,
    downtimeCeilingMs: 1200,
    allowAutoConverge: false,
    allowPostCopy: true,
    stallPasses: 1,
  };
  const result = await withMigrationWorkers(env, { calls, sim, policy, sample: plateau }, async (h) =>
    (await h.start({ policy })).result(),
  );
  const steering = names(calls).filter((n) => ['setMigrationDowntime', 'startMigrationPostCopy'].includes(n));
  assert.deepEqual(steering, ['setMigrationDowntime', 'setMigrationDowntime', 'startMigrationPostCopy']);
  assert.deepEqual(
    argsOf<{ downtimeMs: number }>(calls, 'setMigrationDowntime').map((a) => a.downtimeMs),
    [600, 1200],
  );
  const recorded = argsOf<{ escalation: MigrationEscalation }>(calls, 'recordMigrationEscalation').map(
    (a) => a.escalation,
  );
  assert.deepEqual(
    recorded.map((e) => `${e.seq}:${e.kind}:${e.value ?? ''}`),
    ['1:raise-downtime:600', '2:raise-downtime:1200', '3:post-copy:'],
  );
  assert.equal(result.outcome, 'completed');
  assert.deepEqual(
    result.escalations.map((e) => e.kind),
    ['raise-downtime', 'raise-downtime', 'post-copy'],
  );
});

test('a migration waits in the queue until a slot frees, and says so', async () => {
  const calls: Calls = [];
  const sim = newSim();
  let attempts = 0;
  let free = false;
  const control: Partial<MigrationControlActivities> = {
    async acquireMigrationSlot(arg) {
      calls.push(['acquireMigrationSlot', arg]);
      attempts++;
      return { acquired: free, waitingBehind: free ? 0 : 1 };
    },
  };
  const { queued, result } = await withMigrationWorkers(
    env,
    { calls, sim, control, finishAfterSamples: 2 },
    async (h) => {
      const handle = await h.start();
      await waitUntil('three slot attempts', () => attempts >= 3);
      const progress = await handle.query<MigrationProgress>('migrationProgress');
      assert.ok(!names(calls).includes('describeMigrationSource'), 'nothing is prepared while queued');
      free = true;
      return { queued: progress, result: await handle.result() };
    },
  );
  assert.equal(queued.phase, 'queued');
  assert.equal(result.outcome, 'completed');
  const order = names(calls);
  assert.ok(order.lastIndexOf('acquireMigrationSlot') < order.indexOf('describeMigrationSource'));
  assert.ok(
    argsOf<{ progress: MigrationProgress }>(calls, 'updateMigrationProgress').some(
      (p) => p.progress.phase === 'queued',
    ),
    'the migrations row shows the wait',
  );
});

test('a control worker that dies mid-migration leaves the job running; the next one re-attaches and commits', async () => {
  const calls: Calls = [];
  const sim = newSim();
  const harness = await migrationHarness(env, { calls, sim });
  const result = await harness.withHosts(async () => {
    const first = await harness.controlWorker();
    const handle = await first.runUntil(async () => {
      const started = await harness.start();
      await waitUntil('two job samples', () => sim.samples >= 2);
      return started;
    });
    // The first worker has shut down: no workflow code runs, but the job goes on on the source's agent.
    assert.ok(sim.jobRunning, 'the host activity outlives the control worker');
    const samplesBefore = sim.samples;
    const second = await harness.controlWorker();
    return second.runUntil(async () => {
      await waitUntil('sampling to resume', () => sim.samples > samplesBefore);
      sim.finish = true;
      return handle.result();
    });
  });
  assert.equal(result.outcome, 'completed');
  assert.equal(result.finalHostId, result.targetHostId);
  assert.equal(names(calls).filter((n) => n === 'migrateDomain').length, 1, 'one job, never restarted');
  assert.equal(names(calls).filter((n) => n === 'commitMigration').length, 1);
});
