/** The API process: connects to PostgreSQL and Temporal once, serves the app, and drains on SIGTERM. */
import { Client, Connection } from '@temporalio/client';
import type { Logger } from 'pino';
import { ConfigError, loadConfig } from '../config/load-config';
import type { NovacronConfig } from '../config/schema';
import { createLogger } from '../observability/logger';
import { createMetrics } from '../observability/metrics';
import { createPool } from '../store/pool';
import { connectWithRetry, temporalTarget } from '../workers/temporal-clients';
import { buildApp } from './app';
import { workflowIdSchema } from './schemas';

export interface ApiServerHandle {
  url: string;
  close(): Promise<void>;
}

export async function startApiServer(input: {
  config: NovacronConfig;
  logger: Logger;
  /** The cluster boot readiness follows: the one the stack starts for this node (NOVACRON_BOOT_WORKFLOW_ID). */
  bootWorkflowId?: string;
}): Promise<ApiServerHandle> {
  const { config, logger } = input;
  if (!config.storage.databaseUrl) {
    throw new ConfigError('invalid config: storage.databaseUrl: the API needs DATABASE_URL (npm start sets it)');
  }
  const pool = createPool({
    databaseUrl: config.storage.databaseUrl,
    max: config.storage.poolSize,
    applicationName: 'novacron-api',
  });
  const target = temporalTarget(config);
  const connection = await connectWithRetry({
    what: `Temporal at ${target.address}`,
    connect: () => Connection.connect({ address: target.address, ...(target.tls ? { tls: target.tls } : {}) }),
    timeoutMs: 120_000,
    onWait: (message) => logger.info(message),
  });
  const temporal = new Client({ connection, namespace: target.namespace });
  const metrics = createMetrics({ service: 'api' });
  const built = await buildApp({
    config,
    temporal,
    pool,
    metrics,
    logger,
    ...(input.bootWorkflowId ? { bootWorkflowId: input.bootWorkflowId } : {}),
    onClose: async () => {
      await connection.close();
      await pool.end();
    },
  });
  const address = await built.app.listen({ host: config.api.host, port: config.api.port });
  return { url: address, close: () => built.close() };
}

async function main(): Promise<void> {
  let config: NovacronConfig;
  try {
    config = loadConfig();
  } catch (err) {
    process.stderr.write(`novacron api: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const boot = workflowIdSchema.optional().safeParse(process.env.NOVACRON_BOOT_WORKFLOW_ID || undefined);
  if (!boot.success) {
    process.stderr.write(`novacron api: NOVACRON_BOOT_WORKFLOW_ID: ${boot.error.issues[0]?.message}\n`);
    process.exit(2);
  }
  const logger = createLogger({ service: 'api', config });
  const server = await startApiServer({ config, logger, ...(boot.data ? { bootWorkflowId: boot.data } : {}) });
  const stop = () => {
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`novacron api: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
