/**
 * The control worker: polls `novacron-control`, runs every workflow and the control activities (store, checks,
 * placement). Clients are built once here and handed to the activity factories.
 */
import { Client, Connection, WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker, type InjectedSinks } from '@temporalio/worker';
import type { Logger } from 'pino';
import { createControlActivities } from '../activities';
import { ConfigError, loadConfig } from '../config/load-config';
import { inventoryStalenessBoundMs, type NovacronConfig } from '../config/schema';
import { createLogger, temporalLoggerFrom } from '../observability/logger';
import {
  activityMetricsInterceptor,
  createMetrics,
  createFailoverMetrics,
  createMigrationMetrics,
  serveMetrics,
} from '../observability/metrics';
import { migrate } from '../store/migrate';
import { createPool } from '../store/pool';
import { planBoot } from '../domain/component-graph';
import { CLUSTER_COMPONENTS } from '../workflows/cluster-components';
import type { WorkflowMetricsSinks } from '../workflows/interceptors';
import { connectWithRetry, temporalTarget } from './temporal-clients';
import { loadWorkflowBundle } from './workflow-bundle';

export interface ControlWorkerHandle {
  metricsUrl: string;
  /** Resolves when the worker stops (shutdown or fatal error). */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

let runtimeInstalled = false;
// Long enough for an embedded server's first start, short enough that a wrong address fails visibly.
const TEMPORAL_CONNECT_TIMEOUT_MS = 120_000;

export async function startControlWorker(input: {
  config: NovacronConfig;
  logger: Logger;
}): Promise<ControlWorkerHandle> {
  const { config, logger } = input;
  if (!config.storage.databaseUrl) {
    throw new ConfigError(
      'invalid config: storage.databaseUrl: the control worker needs DATABASE_URL (npm start sets it)',
    );
  }
  // Registration-time validation: a broken component graph stops the worker before it polls anything.
  planBoot(CLUSTER_COMPONENTS);

  if (!runtimeInstalled) {
    Runtime.install({
      logger: config.system.logLevel === 'silent' ? new DefaultLogger('ERROR') : temporalLoggerFrom(logger),
    });
    runtimeInstalled = true;
  }
  const metrics = createMetrics({ service: 'control-worker' });
  const pool = createPool({
    databaseUrl: config.storage.databaseUrl,
    max: config.storage.poolSize,
    applicationName: 'novacron-control-worker',
  });
  await migrate(pool);

  const target = temporalTarget(config);
  const connectionOptions = { address: target.address, ...(target.tls ? { tls: target.tls } : {}) };
  // The client connection first: its failures carry the server's gRPC status, so bad credentials fail at once,
  // where the native connection's transport errors carry only text. Once it is up, the native one connects.
  const clientConnection = await connectWithRetry({
    what: `Temporal at ${target.address}`,
    connect: () => Connection.connect(connectionOptions),
    timeoutMs: TEMPORAL_CONNECT_TIMEOUT_MS,
    onWait: (message) => logger.info(message),
  });
  const nativeConnection = await NativeConnection.connect(connectionOptions);

  const workflowBundle = await loadWorkflowBundle({ log: (msg) => logger.info(msg) });

  const sinks: InjectedSinks<WorkflowMetricsSinks> = {
    workflowMetrics: {
      finished: {
        fn(info, { outcome, durationMs }) {
          const labels = { workflow_type: info.workflowType, task_queue: info.taskQueue, outcome };
          metrics.workflowCompletions.inc(labels);
          metrics.workflowDuration.observe(labels, durationMs / 1000);
          logger.info(
            { workflowId: info.workflowId, runId: info.runId, workflowType: info.workflowType, outcome, durationMs },
            'workflow finished',
          );
        },
      },
    },
  };

  const worker = await Worker.create({
    connection: nativeConnection,
    namespace: target.namespace,
    taskQueue: config.temporal.taskQueue,
    workflowBundle,
    activities: createControlActivities({
      config,
      pool,
      temporal: clientConnection,
      migrationMetrics: createMigrationMetrics(metrics.registry),
      failoverMetrics: createFailoverMetrics(metrics.registry),
    }),
    interceptors: { activity: [activityMetricsInterceptor(metrics)] },
    sinks,
    identity: `control-worker@${config.system.nodeId}:${process.pid}`,
    shutdownGraceTime: '5s',
  });
  const metricsServer = await serveMetrics({
    registry: metrics.registry,
    host: config.api.host,
    port: config.monitoring.workerMetricsPort,
  });

  const done = worker.run().finally(async () => {
    await metricsServer.close();
    await clientConnection.close();
    await nativeConnection.close();
    await pool.end();
  });
  await ensureFleetMonitor({
    config,
    client: new Client({ connection: clientConnection, namespace: target.namespace }),
  });
  logger.info(
    { taskQueue: config.temporal.taskQueue, temporal: target.address, metrics: metricsServer.url },
    'control worker polling',
  );
  return {
    metricsUrl: metricsServer.url,
    done,
    async shutdown() {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await done;
    },
  };
}

/** One fleet monitor per control task queue; every worker starts it, and all but the first find it running. */
async function ensureFleetMonitor(input: { config: NovacronConfig; client: Client }): Promise<void> {
  const { config } = input;
  try {
    await input.client.workflow.start('fleetMonitor', {
      workflowId: `fleet-monitor-${config.temporal.taskQueue}`,
      taskQueue: config.temporal.taskQueue,
      args: [
        { intervalMs: Math.min(config.fleet.monitorIntervalMs, Math.floor(inventoryStalenessBoundMs(config) / 4)) },
      ],
    });
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
  }
}

async function main(): Promise<void> {
  let config: NovacronConfig;
  try {
    config = loadConfig();
  } catch (err) {
    process.stderr.write(`novacron control worker: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const logger = createLogger({ service: 'control-worker', config });
  const handle = await startControlWorker({ config, logger });
  const stop = () => void handle.shutdown();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  await handle.done;
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`novacron control worker: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
