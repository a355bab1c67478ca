/**
 * The failover report against a real PostgreSQL: written step by step, every step safe to retry, and frozen once
 * finished, so a late retry cannot rewrite how a failover ended.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { createTestDatabase, type TestDatabase } from '../test/support/services';
import { listEvents } from './events';
import {
  createFailover,
  FailoverStoreError,
  finishFailover,
  getFailover,
  listHostFailovers,
  recordFailoverVm,
  updateFailover,
  type FailoverConfirmation,
} from './failovers';

let db: TestDatabase;

before(async () => {
  db = await createTestDatabase();
});

after(async () => {
  await db.drop();
});

const confirmation: FailoverConfirmation = {
  mode: 'signed',
  asked: 3,
  needed: 2,
  accepted: 2,
  votes: [
    { witnessHostId: 'w1', verdict: 'unreachable', agentReachable: false, libvirtReachable: false, accepted: true },
    { witnessHostId: 'w2', verdict: 'unreachable', agentReachable: false, libvirtReachable: false, accepted: true },
    {
      witnessHostId: 'w3',
      verdict: 'alive',
      agentReachable: true,
      libvirtReachable: true,
      runningDomains: ['a'],
      accepted: false,
      refusedReason: 'vote too old',
    },
  ],
  confirmedAt: '2030-01-01T00:00:05.000Z',
};

test('a failover report is opened once, filled in step by step, and frozen when it finishes', async () => {
  const id = `failover-${randomUUID()}`;
  const suspectedAt = new Date(Date.now() - 5_000);
  const opened = await createFailover(db.pool, { id, hostId: 'h1', suspectToken: 7, suspectedAt });
  assert.equal(opened.state, 'running');
  assert.equal(opened.suspectToken, 7);
  assert.equal(opened.suspectedAt, suspectedAt.toISOString());
  assert.deepEqual(opened.vms, []);
  assert.ok(opened.detectionMs! >= 4_000, `detection ${opened.detectionMs} ms after a 5 s old suspicion`);
  assert.equal(opened.totalMs, undefined);
  const again = await createFailover(db.pool, { id, hostId: 'h1', suspectToken: 8, suspectedAt: new Date() });
  assert.deepEqual(again, opened, 'a retried create returns the first row');

  await updateFailover(db.pool, { id, patch: { graceEndedAt: '2030-01-01T00:00:01.000Z' } });
  await updateFailover(db.pool, { id, patch: { confirmation } });
  await updateFailover(db.pool, { id, patch: { fencedAt: '2030-01-01T00:00:06.000Z', fencedToken: 8 } });
  const vm = (name: string, outcome: 'restarted' | 'failed' | 'not-ha') => ({
    vmId: `vm-${name}`,
    name,
    haPriority: 50,
    outcome,
  });
  await recordFailoverVm(db.pool, { id, vm: vm('a', 'failed') });
  await recordFailoverVm(db.pool, { id, vm: vm('b', 'not-ha') });
  await recordFailoverVm(db.pool, { id, vm: { ...vm('a', 'restarted'), targetHostId: 'h2', durationMs: 900 } });

  const finished = await finishFailover(db.pool, { id, state: 'completed', reason: 'all HA guests restarted' });
  assert.equal(finished.state, 'completed');
  assert.equal(finished.graceEndedAt, '2030-01-01T00:00:01.000Z');
  assert.deepEqual(finished.confirmation, confirmation);
  assert.equal(finished.fencedToken, 8);
  assert.deepEqual(
    finished.vms.map((v) => [v.name, v.outcome, v.targetHostId]),
    [
      ['a', 'restarted', 'h2'],
      ['b', 'not-ha', undefined],
    ],
    'the retried guest replaced its first outcome in place',
  );
  assert.equal(finished.reason, 'all HA guests restarted');
  assert.ok(finished.finishedAt);
  assert.equal(finished.totalMs, Date.parse(finished.finishedAt) - suspectedAt.getTime());

  // Late retries change nothing.
  assert.deepEqual(await finishFailover(db.pool, { id, state: 'failed', reason: 'late' }), finished);
  await updateFailover(db.pool, { id, patch: { reason: 'late' } });
  await recordFailoverVm(db.pool, { id, vm: vm('c', 'failed') });
  assert.deepEqual(await getFailover(db.pool, id), finished);

  const kinds = (await listEvents(db.pool, { hostId: 'h1', limit: 10 }))
    .filter((e) => e.workflowId === id)
    .map((e) => e.kind);
  assert.deepEqual(kinds, ['failover.finished', 'failover.started']);
});

test("a host's failovers are listed newest first, and an unknown failover is refused", async () => {
  const ids = [`older-${randomUUID()}`, `newer-${randomUUID()}`];
  for (const id of ids) {
    await createFailover(db.pool, { id, hostId: 'h9', suspectToken: 1, suspectedAt: new Date() });
  }
  await createFailover(db.pool, {
    id: `other-${randomUUID()}`,
    hostId: 'h8',
    suspectToken: 1,
    suspectedAt: new Date(),
  });
  assert.deepEqual(
    (await listHostFailovers(db.pool, { hostId: 'h9' })).map((f) => f.id),
    [...ids].reverse(),
  );
  assert.deepEqual(
    (await listHostFailovers(db.pool, { hostId: 'h9', limit: 1 })).map((f) => f.id),
    [ids[1]],
  );
  assert.equal(await getFailover(db.pool, 'nowhere'), undefined);
  const notFound = (err: unknown) => err instanceof FailoverStoreError && err.code === 'FailoverNotFound';
  await assert.rejects(updateFailover(db.pool, { id: 'nowhere', patch: { reason: 'x' } }), notFound);
  await assert.rejects(finishFailover(db.pool, { id: 'nowhere', state: 'aborted' }), notFound);
});
