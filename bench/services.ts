/**
 * The real services a benchmark runs against, started for that run alone: an embedded PostgreSQL and a Temporal
 * dev server in a scratch directory, a config pointing at them, and (unless the benchmark brings its own) a control
 * worker. Benchmarks do not share `npm test`'s services: a test run on the same machine must not skew them, nor
 * they it.
 */
import { Client, Connection } from '@temporalio/client';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { deepMerge, loadConfig } from '../config/load-config';
import type { NovacronConfig } from '../config/schema';
import { startTemporalDevServer } from '../native/temporal';
import { startEmbeddedPostgres } from '../store/embedded-postgres';
import { freePort } from '../test/support/ports';
import { startControlWorker } from '../workers/control-worker';

/** Things to stop, last started first, whatever happened in between. */
export class Cleanups {
  private readonly steps: Array<() => Promise<unknown>> = [];

  add(step: () => Promise<unknown>): void {
    this.steps.push(step);
  }

  async run(): Promise<void> {
    // A failing stop must not keep the others from running; the benchmark's own error is the one worth reporting.
    for (const step of this.steps.splice(0).reverse()) await step().catch(() => undefined);
  }
}

export interface BenchServices {
  scratch: string;
  config: NovacronConfig;
  client: Client;
  cleanups: Cleanups;
  /** A fresh directory under the run's scratch directory. */
  scratchDir: (prefix: string) => string;
}

/**
 * Runs `body` with the services up and stops them afterwards. `overrides` go over the benchmark defaults (silent
 * logs, the scratch data dir, the services' addresses); `controlWorker: false` leaves starting it to the caller.
 */
export async function withBenchServices<T>(
  input: { name: string; overrides?: Record<string, unknown>; controlWorker?: boolean },
  body: (services: BenchServices) => Promise<T>,
): Promise<T> {
  const scratch = mkdtempSync(path.join(os.tmpdir(), `novacron-bench-${input.name}-`));
  const cleanups = new Cleanups();
  try {
    const pg = await startEmbeddedPostgres({ dataDir: path.join(scratch, 'pg'), port: await freePort() });
    cleanups.add(() => pg.stop());
    const temporal = await startTemporalDevServer({ port: 0 });
    cleanups.add(() => temporal.stop());
    const config = loadConfig({
      env: {},
      overrides: deepMerge(
        {
          system: { dataDir: path.join(scratch, 'data'), logLevel: 'silent' },
          temporal: { address: temporal.address, taskQueue: `bench-${input.name}` },
          storage: { databaseUrl: pg.databaseUrl },
          monitoring: { workerMetricsPort: 0 },
        },
        input.overrides ?? {},
      ),
    });
    if (input.controlWorker !== false) {
      const worker = await startControlWorker({ config, logger: pino({ level: 'silent' }) });
      cleanups.add(() => worker.shutdown());
    }
    const connection = await Connection.connect({ address: temporal.address });
    cleanups.add(() => connection.close());
    return await body({
      scratch,
      config,
      client: new Client({ connection }),
      cleanups,
      scratchDir: (prefix) => mkdtempSync(path.join(scratch, `${prefix}-`)),
    });
  } finally {
    await cleanups.run();
    rmSync(scratch, { recursive: true, force: true });
  }
}
