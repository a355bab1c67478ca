/**
 * A control worker killed with SIGKILL in the middle of initializeCluster: after a restart the same workflow
 * completes. The data-dir check is held failing (its parent path is a file) until the kill, so the kill lands
 * mid-workflow every time rather than by luck of timing.
 */
import type { Client, Connection } from '@temporalio/client';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { isolatedEnv, startEntry } from '../support/processes';
import {
  createTestDatabase,
  scratchDir,
  temporalClient,
  testTemporalAddress,
  type TestDatabase,
} from '../support/services';
import type { BootReport } from '../../workflows/initialize-cluster';

let db: TestDatabase;
let client: Client;
let connection: Connection;

before(async () => {
  db = await createTestDatabase();
  ({ client, connection } = await temporalClient());
});

after(async () => {
  await connection.close();
  await db.drop();
});

test('initializeCluster survives SIGKILL of its worker and completes after a restart', async () => {
  const scratch = scratchDir('crash');
  const blocker = path.join(scratch, 'blocker');
  writeFileSync(blocker, 'a file where the data dir parent should be');
  const taskQueue = `crash-${Date.now()}`;
  const env = isolatedEnv({
    DATABASE_URL: db.url,
    TEMPORAL_ADDRESS: testTemporalAddress(),
    NOVACRON_DATA_DIR: path.join(blocker, 'data'),
    NOVACRON_TEMPORAL_TASK_QUEUE: taskQueue,
    NOVACRON_MONITORING_WORKER_METRICS_PORT: '0',
    NOVACRON_LOG_LEVEL: 'warn',
    NOVACRON_SYSTEM_MIN_RESOURCES_MEMORY_MIB: '64',
    NOVACRON_SYSTEM_MIN_RESOURCES_DISK_FREE_MIB: '16',
  });

  const first = startEntry('workers/control-worker.ts', env);
  const handle = await client.workflow.start('initializeCluster', {
    workflowId: `crash-init-${Date.now()}`,
    taskQueue,
    args: [
      {
        nodeId: 'crash-node',
        retry: { maximumAttempts: 100, initialIntervalMs: 200, backoffCoefficient: 1.5, maximumIntervalMs: 1000 },
        componentTimeoutMs: 5000,
      },
    ],
  });

  // Wait until the data-dir check has failed at least once on the first worker.
  let attempt = 0;
  for (let i = 0; i < 600 && attempt < 2; i++) {
    const description = await handle.describe();
    const pending = description.raw.pendingActivities?.find((a) => a.activityType?.name === 'checkDataDir');
    attempt = pending?.attempt ?? 0;
    if (attempt < 2) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(attempt >= 2, `checkDataDir retried on the first worker (attempt ${attempt}); output:\n${first.output()}`);
  first.child.kill('SIGKILL');
  assert.equal((await first.exited).signal, 'SIGKILL');
  assert.equal((await handle.describe()).status.name, 'RUNNING', 'the workflow outlives its worker');

  rmSync(blocker);
  const second = startEntry('workers/control-worker.ts', env);
  try {
    const report = (await handle.result()) as BootReport;
    assert.ok(report.status === 'ready' || report.status === 'degraded', JSON.stringify(report));
    const dataDir = report.components.find((c) => c.name === 'data-dir')!;
    assert.equal(dataDir.status, 'ok');
    // The attempt that succeeded is at least the one that was pending when the first worker died.
    assert.ok(dataDir.attempts >= attempt, `data-dir attempts ${dataDir.attempts} < ${attempt} seen before the kill`);

    // The history proves two different worker processes completed workflow tasks.
    const events = (await handle.fetchHistory()).events ?? [];
    const identities = new Set(
      events.map((e) => e.workflowTaskCompletedEventAttributes?.identity).filter((id): id is string => Boolean(id)),
    );
    assert.ok(identities.has(`control-worker@novacron-1:${first.child.pid}`), [...identities].join(', '));
    assert.ok(identities.has(`control-worker@novacron-1:${second.child.pid}`), [...identities].join(', '));
    const boots = await db.pool.query('SELECT status FROM cluster_boots WHERE workflow_id = $1', [handle.workflowId]);
    assert.equal(boots.rowCount, 1);
  } finally {
    second.child.kill('SIGTERM');
    await second.exited;
  }
});
