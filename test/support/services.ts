/**
 * Access to the real services `npm test` started (test/run.ts): each test file gets its own PostgreSQL database,
 * migrated, and the shared Temporal server's address. Running a test file alone needs `npm test -- FILE`.
 */
import { Client, Connection } from '@temporalio/client';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Pool } from 'pg';
import { deepMerge, loadConfig } from '../../config/load-config';
import type { NovacronConfig } from '../../config/schema';
import { migrate } from '../../store/migrate';
import { createPool } from '../../store/pool';

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run tests through \`npm test\` (test/run.ts starts the services)`);
  return value;
}

export function testTemporalAddress(): string {
  return required('NOVACRON_TEST_TEMPORAL_ADDRESS');
}

export function scratchDir(prefix: string): string {
  return mkdtempSync(path.join(process.env.NOVACRON_TEST_SCRATCH ?? os.tmpdir(), `${prefix}-`));
}

export interface TestDatabase {
  url: string;
  pool: Pool;
  drop(): Promise<void>;
}

/** A fresh, migrated database, so test files never see each other's rows. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = required('NOVACRON_TEST_DATABASE_URL');
  const name = `novacron_t_${randomBytes(6).toString('hex')}`;
  const admin = new Pool({ connectionString: adminUrl, max: 1 });
  await admin.query(`CREATE DATABASE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const pool = createPool({ databaseUrl: url.toString(), applicationName: 'novacron-test', max: 5 });
  await migrate(pool);
  return {
    url: url.toString(),
    pool,
    async drop() {
      await pool.end();
      try {
        // Plain first: it ends an autovacuum worker in the database itself, which FORCE may not as a non-superuser
        // (CI's role: "must be a member of the role whose process is being terminated").
        await admin.query(`DROP DATABASE IF EXISTS ${name}`);
      } catch (err) {
        // 55006: a connection the test left behind (a child process's pool); FORCE ends it.
        if ((err as { code?: string }).code !== '55006') throw err;
        await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await admin.end();
      }
    },
  };
}

/** Config as a test process sees it: no env leakage, a scratch data dir, random ports, quiet logs. */
export function testConfig(
  input: { databaseUrl?: string; taskQueue?: string; overrides?: Record<string, unknown> } = {},
): NovacronConfig {
  const base: Record<string, unknown> = {
    system: {
      dataDir: scratchDir('data'),
      logLevel: 'silent',
      minResources: { cpus: 1, memoryMib: 64, diskFreeMib: 16 },
    },
    api: { port: 0 },
    monitoring: { workerMetricsPort: 0 },
    temporal: {
      address: testTemporalAddress(),
      taskQueue: input.taskQueue ?? `test-${randomBytes(4).toString('hex')}`,
    },
    clusterInit: { retry: { initialIntervalMs: 50, maximumIntervalMs: 200 } },
    ...(input.databaseUrl ? { storage: { databaseUrl: input.databaseUrl } } : {}),
  };
  return loadConfig({ env: {}, overrides: deepMerge(base, input.overrides ?? {}) });
}

export async function temporalClient(): Promise<{ client: Client; connection: Connection }> {
  const connection = await Connection.connect({ address: testTemporalAddress() });
  return { client: new Client({ connection }), connection };
}
