/**
 * Migration records and slots against a real PostgreSQL: the record a workflow keeps from plan to result, and
 * per-host limits on concurrent migrations under concurrent requests, first come first served.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { migrationPolicySchema, type MigrationPlan, type MigrationResult } from '../domain/migration';
import { createTestDatabase, type TestDatabase } from '../test/support/services';
import { listEvents } from './events';
import {
  acquireMigrationSlot,
  createMigrationRecord,
  finishMigrationRecord,
  getMigration,
  listMigrations,
  recordMigrationEscalation,
  recordMigrationPlan,
  SLOT_LOCK_KEY,
  updateMigrationProgress,
} from './migration-records';
import { VmStoreError } from './vms';

let db: TestDatabase;

before(async () => {
  db = await createTestDatabase();
});

after(async () => {
  await db.drop();
});

const policy = migrationPolicySchema.parse({});
const refusedWith = (code: VmStoreError['code']) => (err: unknown) => err instanceof VmStoreError && err.code === code;

const plan: MigrationPlan = {
  mode: 'datacenter',
  parameters: { parallelConnections: 2, maxDowntimeMs: 300, autoConverge: true, postCopy: false },
  prediction: { converges: true, passes: 3, totalMs: 1234.5, downtimeMs: 42, bytes: 300_000_000 },
  mitigation: 'none',
  deadlineMs: 60_000,
  inputs: {
    memoryBytes: 268_435_456,
    dirtyRateBytesPerSecond: 1_000_000,
    linkBandwidthBytesPerSecond: 1_000_000_000,
    linkRttMs: 0.2,
    mode: 'datacenter',
  },
};

async function open(workflowId: string, sourceHostId: string, vmId = randomUUID()): Promise<string> {
  await createMigrationRecord(db.pool, { workflowId, vmId, sourceHostId, policy });
  return vmId;
}

test('a record keeps the plan, progress, escalations and measured result, and a retry changes nothing', async () => {
  const vmId = await open('rec-1', 'src-a');
  const again = await createMigrationRecord(db.pool, {
    workflowId: 'rec-1',
    vmId: randomUUID(),
    sourceHostId: 'other',
    policy: { ...policy, maxDowntimeMs: 999 },
  });
  assert.equal(again.vmId, vmId, 'the retry returns the first row');
  assert.equal(again.state, 'planning');
  assert.equal(again.policy.maxDowntimeMs, 300);
  assert.deepEqual(again.escalations, []);

  await recordMigrationPlan(db.pool, { workflowId: 'rec-1', targetHostId: 'dst-a', plan });
  await updateMigrationProgress(db.pool, {
    workflowId: 'rec-1',
    progress: { workflowId: 'rec-1', vmId, sourceHostId: 'src-a', phase: 'precopy', pass: 2, escalations: [] },
  });
  const escalation = {
    seq: 1,
    kind: 'raise-downtime' as const,
    pass: 4,
    dataRemainingBytes: 10_000_000,
    value: 500,
    reason: 'two passes without gain',
    atMs: 3000,
  };
  assert.equal(await recordMigrationEscalation(db.pool, { workflowId: 'rec-1', escalation }), true);
  assert.equal(await recordMigrationEscalation(db.pool, { workflowId: 'rec-1', escalation }), false);
  const planned = await getMigration(db.pool, 'rec-1');
  assert.equal(planned?.state, 'planning');
  assert.equal(planned?.targetHostId, 'dst-a');
  assert.deepEqual(planned?.plan, plan);
  assert.equal(planned?.progress?.pass, 2);
  assert.deepEqual(planned?.escalations, [escalation]);
  const events = (await listEvents(db.pool, { vmId, limit: 10 })).filter((e) => e.kind === 'migration.escalation');
  assert.equal(events.length, 1);
  assert.match(events[0]!.message, /raise-downtime \(500\) at pass 4/);

  const result: MigrationResult = {
    workflowId: 'rec-1',
    vmId,
    outcome: 'completed',
    finalHostId: 'dst-a',
    sourceHostId: 'src-a',
    targetHostId: 'dst-a',
    plan,
    escalations: [escalation],
    measured: { totalMs: 1500, downtimeMs: 61, bytes: 310_000_000, passes: 4, jobMs: 1400 },
    workflowMs: 2500,
  };
  const finish = { workflowId: 'rec-1', outcome: 'completed' as const, finalHostId: 'dst-a', result };
  assert.equal(await finishMigrationRecord(db.pool, finish), true);
  assert.equal(await finishMigrationRecord(db.pool, { ...finish, outcome: 'failed', error: 'late' }), false);
  // A late sample (a retried activity after the commit) leaves the finished record's progress alone.
  await updateMigrationProgress(db.pool, {
    workflowId: 'rec-1',
    progress: { workflowId: 'rec-1', vmId, sourceHostId: 'src-a', phase: 'precopy', pass: 9, escalations: [] },
  });
  const finished = await getMigration(db.pool, 'rec-1');
  assert.equal(finished?.progress?.pass, 2);
  assert.equal(finished?.state, 'completed');
  assert.equal(finished?.finalHostId, 'dst-a');
  assert.equal(finished?.error, undefined);
  assert.deepEqual(finished?.result, result);
  assert.ok(finished?.finishedAt);
  // The plain columns a predictor's training query reads.
  const { rows } = await db.pool.query(
    `SELECT predicted_total_ms, predicted_downtime_ms, measured_total_ms, measured_downtime_ms, bytes_transferred
     FROM migrations WHERE id = 'rec-1'`,
  );
  assert.deepEqual(rows[0], {
    predicted_total_ms: 1234.5,
    predicted_downtime_ms: 42,
    measured_total_ms: 1500,
    measured_downtime_ms: 61,
    bytes_transferred: '310000000',
  });
});

test('a refused migration keeps the plan it was refused with', async () => {
  const vmId = await open('rec-refused', 'src-r');
  await finishMigrationRecord(db.pool, {
    workflowId: 'rec-refused',
    outcome: 'refused',
    finalHostId: 'src-r',
    error: 'does not converge',
    result: {
      workflowId: 'rec-refused',
      vmId,
      outcome: 'refused',
      finalHostId: 'src-r',
      sourceHostId: 'src-r',
      plan,
      escalations: [],
      workflowMs: 10,
    },
  });
  const refused = await getMigration(db.pool, 'rec-refused');
  assert.equal(refused?.state, 'refused');
  assert.equal(refused?.error, 'does not converge');
  assert.deepEqual(refused?.plan, plan);
});

test('migrations list newest first, by VM and by state', async () => {
  const vmId = randomUUID();
  for (const id of ['list-1', 'list-2', 'list-3']) await open(id, 'src-l', vmId);
  await finishMigrationRecord(db.pool, { workflowId: 'list-2', outcome: 'failed', finalHostId: 'src-l', error: 'x' });
  assert.deepEqual(
    (await listMigrations(db.pool, { vmId })).map((m) => m.id),
    ['list-3', 'list-2', 'list-1'],
  );
  assert.deepEqual(
    (await listMigrations(db.pool, { vmId, state: 'failed' })).map((m) => m.id),
    ['list-2'],
  );
  assert.deepEqual(
    (await listMigrations(db.pool, { vmId, limit: 1 })).map((m) => m.id),
    ['list-3'],
  );
  assert.equal(await getMigration(db.pool, 'list-none'), undefined);
});

test('writes to a migration that was never recorded are refused', async () => {
  const missing = 'never-opened';
  await assert.rejects(
    recordMigrationPlan(db.pool, { workflowId: missing, targetHostId: 'x', plan }),
    refusedWith('MigrationNotFound'),
  );
  await assert.rejects(
    updateMigrationProgress(db.pool, {
      workflowId: missing,
      progress: { workflowId: missing, vmId: randomUUID(), sourceHostId: 'x', phase: 'precopy', escalations: [] },
    }),
    refusedWith('MigrationNotFound'),
  );
  await assert.rejects(
    finishMigrationRecord(db.pool, { workflowId: missing, outcome: 'failed', finalHostId: 'x' }),
    refusedWith('MigrationNotFound'),
  );
  await assert.rejects(
    acquireMigrationSlot(db.pool, {
      workflowId: missing,
      sourceHostId: 'x',
      targetHostId: 'y',
      maxOutgoing: 1,
      maxIncoming: 1,
    }),
    refusedWith('MigrationNotFound'),
  );
});

async function runningCounts(prefix: string): Promise<{ bySource: number[]; byTarget: number[] }> {
  const count = async (column: string) =>
    (
      await db.pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM migrations WHERE id LIKE $1 AND state = 'running' GROUP BY ${column}`,
        [`${prefix}%`],
      )
    ).rows.map((r) => Number(r.n));
  return { bySource: await count('source_host_id'), byTarget: await count('target_host_id') };
}

test('ten migrations asking at once never exceed either host limit, and all run in turn', async () => {
  const limits = { maxOutgoing: 2, maxIncoming: 1 };
  const asks = Array.from({ length: 10 }, (_, i) => ({
    workflowId: `ten-${i}`,
    sourceHostId: `ten-src-${i % 2}`,
    targetHostId: `ten-dst-${i % 3}`,
    ...limits,
  }));
  for (const ask of asks) await open(ask.workflowId, ask.sourceHostId);
  const pending = new Set(asks.map((a) => a.workflowId));
  for (let round = 0; pending.size > 0; round++) {
    assert.ok(round < 20, `still waiting after 20 rounds: ${[...pending].join(', ')}`);
    const answers = await Promise.all(
      asks.filter((a) => pending.has(a.workflowId)).map((a) => acquireMigrationSlot(db.pool, a)),
    );
    assert.ok(
      answers.some((a) => a.acquired),
      `round ${round}: some migration gets a slot when none runs`,
    );
    const { bySource, byTarget } = await runningCounts('ten-');
    assert.ok(Math.max(...bySource) <= limits.maxOutgoing, `outgoing ${bySource.join(',')}`);
    assert.ok(Math.max(...byTarget) <= limits.maxIncoming, `incoming ${byTarget.join(',')}`);
    for (const running of await listMigrations(db.pool, { state: 'running' })) {
      if (!running.id.startsWith('ten-')) continue;
      assert.ok(running.startedAt);
      await finishMigrationRecord(db.pool, { workflowId: running.id, outcome: 'completed', finalHostId: 'x' });
      pending.delete(running.id);
    }
  }
});

test('waiting migrations get their slots in the order they asked, whoever asks again first', async () => {
  const ask = (i: number) =>
    acquireMigrationSlot(db.pool, {
      workflowId: `fifo-${i}`,
      sourceHostId: 'fifo-src',
      targetHostId: 'fifo-dst',
      maxOutgoing: 1,
      maxIncoming: 1,
    });
  for (let i = 0; i < 5; i++) await open(`fifo-${i}`, 'fifo-src');
  assert.deepEqual(await ask(0), { acquired: true, waitingBehind: 0 });
  for (let i = 1; i < 5; i++) assert.deepEqual(await ask(i), { acquired: false, waitingBehind: i });
  assert.equal((await getMigration(db.pool, 'fifo-3'))?.state, 'queued');
  assert.deepEqual(await ask(0), { acquired: true, waitingBehind: 0 }, 'a retry by the holder keeps its slot');

  for (let head = 1; head < 5; head++) {
    await finishMigrationRecord(db.pool, {
      workflowId: `fifo-${head - 1}`,
      outcome: 'completed',
      finalHostId: 'fifo-dst',
    });
    for (let later = 4; later > head; later--) {
      assert.deepEqual(await ask(later), { acquired: false, waitingBehind: later - head }, `fifo-${later}`);
    }
    assert.deepEqual(await ask(head), { acquired: true, waitingBehind: 0 }, `fifo-${head} is next`);
  }
  await assert.rejects(ask(0), refusedWith('MigrationFinished'));
});

test('a migration waiting for a full target does not hold up its source going elsewhere', async () => {
  const limits = { maxOutgoing: 2, maxIncoming: 1 };
  for (const id of ['hol-run', 'hol-wait', 'hol-other']) await open(id, 'hol-src');
  const ask = (workflowId: string, targetHostId: string) =>
    acquireMigrationSlot(db.pool, { workflowId, sourceHostId: 'hol-src', targetHostId, ...limits });
  assert.equal((await ask('hol-run', 'hol-full')).acquired, true);
  assert.deepEqual(await ask('hol-wait', 'hol-full'), { acquired: false, waitingBehind: 1 });
  assert.deepEqual(await ask('hol-other', 'hol-free'), { acquired: true, waitingBehind: 0 });
  // The source is now at its limit: the waiter stays queued even once its target frees.
  await finishMigrationRecord(db.pool, { workflowId: 'hol-run', outcome: 'completed', finalHostId: 'hol-full' });
  assert.equal((await ask('hol-wait', 'hol-full')).acquired, true);
});

test('a slot starts when it is granted: after the finish that freed it, though the request began before', async () => {
  const ask = (workflowId: string) =>
    acquireMigrationSlot(db.pool, {
      workflowId,
      sourceHostId: 'when-src',
      targetHostId: 'when-dst',
      maxOutgoing: 1,
      maxIncoming: 1,
    });
  for (const id of ['when-a', 'when-b']) await open(id, 'when-src');
  assert.equal((await ask('when-a')).acquired, true);
  // Another slot decision in progress: when-b's transaction begins, then waits for the lock.
  const holder = await db.pool.connect();
  try {
    await holder.query('BEGIN');
    await holder.query('SELECT pg_advisory_xact_lock($1)', [SLOT_LOCK_KEY]);
    const asked = ask('when-b');
    for (let i = 0; ; i++) {
      const waiting = await db.pool.query(`SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`);
      if (waiting.rowCount === 1) break;
      assert.ok(i < 200, 'when-b waits for the slot lock');
      await new Promise((r) => setTimeout(r, 10));
    }
    // A clear gap between when-b's transaction start and the finish, whatever the clock's resolution.
    await new Promise((r) => setTimeout(r, 50));
    await finishMigrationRecord(db.pool, { workflowId: 'when-a', outcome: 'completed', finalHostId: 'when-dst' });
    await holder.query('COMMIT');
    assert.equal((await asked).acquired, true);
  } finally {
    holder.release();
  }
  const order = await db.pool.query<{ after: boolean; started: string; finished: string }>(
    `SELECT b.started_at > a.finished_at AS after, b.started_at::text AS started, a.finished_at::text AS finished
     FROM migrations a, migrations b WHERE a.id = 'when-a' AND b.id = 'when-b'`,
  );
  const { after, started, finished } = order.rows[0]!;
  assert.ok(after, `when-b started ${started}, when-a finished ${finished}`);
});
