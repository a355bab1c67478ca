/**
 * Boot benchmark: the same component set run level-parallel and sequentially, interleaved in one run so both see
 * the same machine load; plus the full stack's time to /ready after Temporal is up (cold and warm bundle cache).
 */
import { Client, Connection } from '@temporalio/client';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { clusterInitInput } from '../../domain/cluster-init';
import { loadConfig } from '../../config/load-config';
import { startTemporalDevServer } from '../../native/temporal';
import { startEmbeddedPostgres } from '../../store/embedded-postgres';
import { freePort } from '../../test/support/ports';
import { summarize } from '../stats';
import { startControlWorker } from '../../workers/control-worker';
import { startStack } from '../../workers/stack';
import type { BootReport } from '../../workflows/initialize-cluster';

const ITERATIONS = Number(process.env.NOVACRON_BENCH_ITERATIONS ?? 15);

async function measureStackReady(scratch: string, label: string): Promise<number> {
  const config = loadConfig({
    env: {},
    overrides: {
      system: { dataDir: path.join(scratch, 'stack'), logLevel: 'warn' },
      api: { port: await freePort() },
      temporal: { embedded: { port: await freePort(), uiPort: 0 } },
      storage: { embedded: { port: await freePort() } },
      monitoring: { workerMetricsPort: await freePort() },
    },
  });
  const stack = await startStack({
    config,
    env: {
      ...process.env,
      NOVACRON_DATA_DIR: config.system.dataDir,
      NOVACRON_API_PORT: String(config.api.port),
      NOVACRON_TEMPORAL_EMBEDDED_PORT: String(config.temporal.embedded.port),
      NOVACRON_MONITORING_WORKER_METRICS_PORT: String(config.monitoring.workerMetricsPort),
      NOVACRON_STORAGE_EMBEDDED_PORT: String(config.storage.embedded.port),
      NOVACRON_LOG_LEVEL: 'warn',
    },
    print: () => undefined,
  });
  const readyMs = stack.readyMs;
  await stack.stop();
  process.stdout.write(`  stack ready after Temporal (${label}): ${readyMs} ms\n`);
  return readyMs;
}

export async function runBench(input: { outDir: string }): Promise<string> {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'novacron-bench-init-'));
  const cleanups: Array<() => Promise<void>> = [];
  try {
    const pg = await startEmbeddedPostgres({ dataDir: path.join(scratch, 'pg'), port: await freePort() });
    cleanups.push(() => pg.stop());
    const temporal = await startTemporalDevServer({ port: 0 });
    cleanups.push(() => temporal.stop());
    const config = loadConfig({
      env: {},
      overrides: {
        system: { dataDir: path.join(scratch, 'data'), logLevel: 'silent' },
        temporal: { address: temporal.address, taskQueue: 'bench-init' },
        storage: { databaseUrl: pg.databaseUrl },
        monitoring: { workerMetricsPort: 0 },
      },
    });
    const worker = await startControlWorker({ config, logger: pino({ level: 'silent' }) });
    cleanups.push(() => worker.shutdown());
    const connection = await Connection.connect({ address: temporal.address });
    cleanups.push(() => connection.close());
    const client = new Client({ connection });

    const samples: Record<'level-parallel' | 'sequential', { wallMs: number[]; reportMs: number[] }> = {
      'level-parallel': { wallMs: [], reportMs: [] },
      sequential: { wallMs: [], reportMs: [] },
    };
    let components: Array<{ name: string; phase: string; level: number }> = [];
    // One warm-up run of each, then interleave so drift in machine load hits both modes alike.
    for (let i = -1; i < ITERATIONS; i++) {
      for (const execution of ['level-parallel', 'sequential'] as const) {
        const started = performance.now();
        const report = (await client.workflow.execute('initializeCluster', {
          workflowId: `bench-init-${execution}-${i}-${Date.now()}`,
          taskQueue: config.temporal.taskQueue,
          args: [{ ...clusterInitInput(config), execution }],
        })) as BootReport;
        const wallMs = performance.now() - started;
        if (report.status === 'failed') throw new Error(`boot failed: ${JSON.stringify(report)}`);
        components = report.components.map((c) => ({ name: c.name, phase: c.phase, level: c.level }));
        if (i >= 0) {
          samples[execution].wallMs.push(Math.round(wallMs));
          samples[execution].reportMs.push(report.totalMs ?? 0);
        }
      }
    }
    const parallel = summarize(samples['level-parallel'].wallMs);
    const sequential = summarize(samples.sequential.wallMs);
    process.stdout.write(
      `  initializeCluster wall time p50: level-parallel ${parallel.p50} ms, sequential ${sequential.p50} ms\n`,
    );

    const stackFirst = await measureStackReady(path.join(scratch, 'stack'), 'first start: fresh data dir');
    const stackRestart = await measureStackReady(path.join(scratch, 'stack'), 'restart: existing data dir');

    const result = {
      benchmark: 'init',
      at: new Date().toISOString(),
      machine: {
        cpus: os.availableParallelism(),
        memoryGiB: Math.round(os.totalmem() / 2 ** 30),
        node: process.version,
      },
      iterations: ITERATIONS,
      components,
      initializeClusterWallMs: { levelParallel: parallel, sequential },
      initializeClusterReportMs: {
        levelParallel: summarize(samples['level-parallel'].reportMs),
        sequential: summarize(samples.sequential.reportMs),
      },
      sequentialOverParallelP50: Number((sequential.p50 / parallel.p50).toFixed(2)),
      stackReadyAfterTemporalMs: { firstStart: stackFirst, restart: stackRestart },
      rerun: 'npm run bench -- init',
    };
    mkdirSync(input.outDir, { recursive: true });
    const file = path.join(input.outDir, 'init.json');
    writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
    return file;
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    rmSync(scratch, { recursive: true, force: true });
  }
}
