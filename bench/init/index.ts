/**
 * Boot benchmark: the same component set run level-parallel and sequentially, interleaved in one run so both see
 * the same machine load; plus the full stack's time to /ready after Temporal is up (cold and warm bundle cache).
 */
import path from 'node:path';
import { clusterInitInput } from '../../domain/cluster-init';
import { loadConfig } from '../../config/load-config';
import { freePort } from '../../test/support/ports';
import {
  readResults,
  runLine,
  writeResults,
  type Benchmark,
  type BenchRunInput,
  type BenchRunOutput,
} from '../results';
import type { RunMetadata } from '../run-metadata';
import { withBenchServices } from '../services';
import { summarize, type Summary } from '../stats';
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

async function run(input: BenchRunInput): Promise<BenchRunOutput> {
  return withBenchServices({ name: 'init' }, async ({ config, client, scratch }) => {
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

    const results: Omit<InitResults, 'run'> = {
      benchmark: 'init',
      iterations: ITERATIONS,
      components,
      initializeClusterWallMs: { levelParallel: parallel, sequential },
      initializeClusterReportMs: {
        levelParallel: summarize(samples['level-parallel'].reportMs),
        sequential: summarize(samples.sequential.reportMs),
      },
      sequentialOverParallelP50: Number((sequential.p50 / parallel.p50).toFixed(2)),
      stackReadyAfterTemporalMs: { firstStart: stackFirst, restart: stackRestart },
    };
    const file = await writeResults({ dir: input.outDir, name: 'init.json', recorder: input.recorder, results });
    return { file, publish: true };
  });
}

interface InitResults {
  run: RunMetadata;
  benchmark: 'init';
  iterations: number;
  components: Array<{ name: string; phase: string; level: number }>;
  initializeClusterWallMs: { levelParallel: Summary; sequential: Summary };
  initializeClusterReportMs: { levelParallel: Summary; sequential: Summary };
  sequentialOverParallelP50: number;
  stackReadyAfterTemporalMs: { firstStart: number; restart: number };
}

function render(file: string, r: InitResults): string {
  const wall = r.initializeClusterWallMs;
  const report = r.initializeClusterReportMs;
  const levels = new Set(r.components.map((c) => `${c.phase}:${c.level}`)).size;
  const phases = new Set(r.components.map((c) => c.phase)).size;
  return [
    runLine({ file, run: r.run }),
    '',
    `${r.iterations} interleaved iterations of each mode after one warm-up. The ${r.components.length} shipped ` +
      `components form ${levels} levels over ${phases} phases.`,
    '',
    '| measure | level-parallel | sequential | sequential / parallel |',
    '| --- | ---: | ---: | ---: |',
    `| \`initializeCluster\` start→result, p50 (p90) | ${wall.levelParallel.p50} ms (${wall.levelParallel.p90} ms) | ` +
      `${wall.sequential.p50} ms (${wall.sequential.p90} ms) | ${r.sequentialOverParallelP50} |`,
    `| boot report \`totalMs\`, p50 | ${report.levelParallel.p50} ms | ${report.sequential.p50} ms | ` +
      `${(report.sequential.p50 / report.levelParallel.p50).toFixed(2)} |`,
    '',
    '| `startStack`, as `npm start` runs it (embedded PostgreSQL and Temporal, worker and API as child processes, local ' +
      'hypervisors starting beside them when the machine has libvirt) | time to `/ready` 200 after Temporal is up |',
    '| --- | ---: |',
    `| first start, fresh data dir | ${r.stackReadyAfterTemporalMs.firstStart} ms |`,
    `| restart, existing data dir | ${r.stackReadyAfterTemporalMs.restart} ms |`,
  ].join('\n');
}

export const initBenchmark: Benchmark = {
  name: 'init',
  run,
  publishedResults: async (outDir) => path.join(outDir, 'init.json'),
  sections: [
    {
      doc: 'docs/benchmarks.md',
      name: 'init',
      render: async (file) => render(file, await readResults<InitResults>(file)),
    },
  ],
};
