// Exercises the real embedded server binary: first use builds it (several minutes), later runs reuse the cache.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { freePort } from '../../test/support/ports';
import { ensureTemporalBinary, startTemporalDevServer } from './index';

const BUILD_TIMEOUT_MS = 30 * 60_000;
const TEST_TIMEOUT_MS = 3 * 60_000;

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}

const logs: string[] = [];
const onLog = (line: string) => {
  logs.push(line);
};

void describe('startTemporalDevServer', () => {
  before(
    async () => {
      await ensureTemporalBinary({ log: (msg) => process.stderr.write(`${msg}\n`) });
    },
    { timeout: BUILD_TIMEOUT_MS },
  );

  void test('in-memory server serves the default namespace and the Web UI', { timeout: TEST_TIMEOUT_MS }, async () => {
    const uiPort = await freePort();
    const server = await startTemporalDevServer({ port: 0, uiPort, onLog });
    try {
      assert.match(server.address, /^127\.0\.0\.1:\d+$/);
      assert.equal(server.uiUrl, `http://127.0.0.1:${uiPort}`);

      const connection = await Connection.connect({ address: server.address });
      try {
        const res = await connection.workflowService.describeNamespace({ namespace: 'default' });
        assert.equal(res.namespaceInfo?.name, 'default');
      } finally {
        await connection.close();
      }

      const page = await fetch(`${server.uiUrl}/`);
      assert.equal(page.status, 200);
      assert.match(await page.text(), /<html/i);
    } finally {
      await server.stop();
    }
    assert.ok(processGone(server.pid), 'server process should have exited');
  });

  void test('a second server can run alongside the first', { timeout: TEST_TIMEOUT_MS }, async () => {
    const [a, b] = await Promise.all([
      startTemporalDevServer({ port: 0, onLog }),
      startTemporalDevServer({ port: 0, onLog }),
    ]);
    try {
      assert.notEqual(a.address, b.address);
      assert.equal(a.uiUrl, undefined);
      for (const server of [a, b]) {
        const connection = await Connection.connect({ address: server.address });
        try {
          const res = await connection.workflowService.describeNamespace({ namespace: 'default' });
          assert.equal(res.namespaceInfo?.name, 'default');
        } finally {
          await connection.close();
        }
      }
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  void test('a taken gRPC port fails fast with the reason', { timeout: TEST_TIMEOUT_MS }, async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const address = blocker.address();
    assert.ok(address && typeof address !== 'string');
    try {
      await assert.rejects(
        startTemporalDevServer({ port: address.port }),
        /gRPC port \d+ on 127\.0\.0\.1 is not available/,
      );
    } finally {
      blocker.close();
    }
  });

  void test(
    'a database file keeps namespaces and workflows across restarts',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'novacron-temporal-'));
      const dbFile = path.join(dir, 'nested', 'temporal.db');
      const workflowId = `persist-check-${Date.now()}`;
      try {
        const first = await startTemporalDevServer({ port: 0, dbFile, namespaces: ['persist-check'], onLog });
        let runId: string;
        try {
          const connection = await Connection.connect({ address: first.address });
          try {
            const client = new Client({ connection, namespace: 'persist-check' });
            // No worker polls this queue: the execution just has to be recorded, not run.
            const handle = await client.workflow.start('neverExecuted', { taskQueue: 'no-worker-here', workflowId });
            runId = handle.firstExecutionRunId;
          } finally {
            await connection.close();
          }
        } finally {
          await first.stop();
        }

        // The namespace is deliberately not passed again: it must come back from the file, not from the flag.
        const second = await startTemporalDevServer({ port: 0, dbFile, onLog });
        try {
          const connection = await Connection.connect({ address: second.address });
          try {
            const ns = await connection.workflowService.describeNamespace({ namespace: 'persist-check' });
            assert.equal(ns.namespaceInfo?.name, 'persist-check');
            const client = new Client({ connection, namespace: 'persist-check' });
            const description = await client.workflow.getHandle(workflowId).describe();
            assert.equal(description.runId, runId);
            assert.equal(description.type, 'neverExecuted');
            assert.equal(description.status.name, 'RUNNING');
          } finally {
            await connection.close();
          }
        } finally {
          await second.stop();
        }
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});
