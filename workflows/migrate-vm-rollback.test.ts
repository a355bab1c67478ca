/**
 * migrateVm's settlement on the real Temporal server with mocked activities: a cancel signal, Temporal
 * cancellation and a convergence abort each leave the VM on exactly one host, the one the simulated hypervisors say
 * it runs on; a job that completed despite the abort is committed to the target rather than undone.
 */
import { DefaultLogger, Runtime } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { MigrationPolicyInput, MigrationResult } from '../domain/migration';
import {
  argsOf,
  connectWorkflowTestEnv,
  failureOf,
  MiB,
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

test('a cancel signal mid-migration aborts the job and leaves the VM on the source, released', async () => {
  const calls: Calls = [];
  const sim = newSim();
  const result = await withMigrationWorkers(env, { calls, sim }, async (h) => {
    const handle = await h.start();
    await waitUntil('a job sample', () => sim.samples >= 1);
    await handle.signal('cancel', { reason: 'operator changed their mind' });
    return handle.result();
  });
  assert.equal(result.outcome, 'cancelled');
  assert.equal(result.finalHostId, result.sourceHostId);
  assert.match(result.reason ?? '', /operator changed their mind.*runs on src-/);
  assert.equal(sim.source, 'running');
  assert.equal(sim.target, 'absent');
  const order = names(calls);
  assert.ok(order.includes('migrateDomain:cancelled'), order.join(', '));
  assert.ok(!order.includes('commitMigration'), order.join(', '));
  assert.ok(order.indexOf('migrateDomain:cancelled') < order.indexOf('resumeMigrationSource'), order.join(', '));
  const [release] = argsOf<{ state: string; hostId: string }>(calls, 'releaseMigration');
  assert.deepEqual([release!.state, release!.hostId], ['running', result.sourceHostId]);
  const [finish] = argsOf<{ outcome: string }>(calls, 'finishMigration');
  assert.equal(finish!.outcome, 'cancelled');
});

test('convergence control aborts a stalled migration it may not escalate, and the VM stays on the source', async () => {
  const calls: Calls = [];
  const sim = newSim();
  const policy: MigrationPolicyInput = { downtimeCeilingMs: 300, allowAutoConverge: false, stallPasses: 1 };
  const stalled = (n: number) => runningSample(n, { pass: n, dataRemainingBytes: 100 * MiB });
  const error = await withMigrationWorkers(env, { calls, sim, policy, sample: stalled }, async (h) =>
    (await h.start({ policy })).result().then(
      () => undefined,
      (err: unknown) => err,
    ),
  );
  const failure = failureOf(error);
  assert.equal(failure.type, 'MigrationAborted');
  assert.match(failure.message, /^convergence control aborted the migration: pre-copy stalled .* runs on src-/);
  const [detail] = failure.details as [MigrationResult];
  assert.equal(detail.outcome, 'failed');
  assert.equal(detail.finalHostId, detail.sourceHostId);
  assert.deepEqual(
    detail.escalations.map((e) => e.kind),
    ['abort'],
  );
  assert.equal(sim.source, 'running');
  const order = names(calls);
  assert.ok(order.indexOf('abortMigrationJob') < order.indexOf('releaseMigration'), order.join(', '));
  assert.ok(!order.includes('commitMigration'));
});

test('a job that finishes despite the cancel is committed to the target', async () => {
  const calls: Calls = [];
  const sim = { ...newSim(), finishDespiteAbort: true };
  const { result, status } = await withMigrationWorkers(env, { calls, sim }, async (h) => {
    const handle = await h.start();
    await waitUntil('a job sample', () => sim.samples >= 1);
    await handle.cancel();
    const outcome = await handle.result();
    return { result: outcome, status: (await handle.describe()).status.name };
  });
  assert.equal(status, 'COMPLETED');
  assert.equal(result.outcome, 'completed');
  assert.equal(result.finalHostId, result.targetHostId);
  assert.match(result.reason ?? '', /already completed/);
  const order = names(calls);
  assert.ok(order.includes('commitMigration'), order.join(', '));
  assert.ok(!order.includes('releaseMigration'), order.join(', '));
  assert.ok(!order.includes('discardMigrationTarget'), order.join(', '));
});

test('Temporal cancellation rolls back to the source and ends CANCELLED', async () => {
  const calls: Calls = [];
  const sim = newSim();
  const status = await withMigrationWorkers(env, { calls, sim }, async (h) => {
    const handle = await h.start();
    await waitUntil('a job sample', () => sim.samples >= 1);
    await handle.cancel();
    await handle.result().catch(() => undefined);
    return (await handle.describe()).status.name;
  });
  assert.equal(status, 'CANCELLED');
  assert.equal(sim.source, 'running');
  const [finish] = argsOf<{ outcome: string; finalHostId: string }>(calls, 'finishMigration');
  assert.equal(finish!.outcome, 'cancelled');
});
