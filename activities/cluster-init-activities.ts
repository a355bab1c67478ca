/**
 * The checks behind each cluster boot component. Each probes the real thing (files, PostgreSQL, the Temporal
 * namespace) and returns what it saw, so the boot report says more than "ok".
 */
import { activityInfo, ApplicationFailure, cancellationSignal, heartbeat } from '@temporalio/activity';
import type { Connection } from '@temporalio/client';
import { randomUUID } from 'node:crypto';
import { mkdir, open, readFile, statfs, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Pool } from 'pg';
import { configSchema, type NovacronConfig } from '../config/schema';
import { recordAudit } from '../store/audit-log';
import { BOOT_RECORD_STATUSES, recordClusterBoot } from '../store/cluster-boots';
import { LATEST_MIGRATION_VERSION, schemaVersion } from '../store/migrate';

export interface ComponentCheckInput {
  workflowId: string;
  component: string;
}

export interface ComponentCheckResult {
  attempt: number;
  durationMs: number;
  detail: Record<string, string | number | boolean>;
}

export interface RecordClusterBootInput {
  workflowId: string;
  nodeId: string;
  report: { status: string };
}

export interface ClusterInitDeps {
  config: NovacronConfig;
  pool: Pool;
  temporal: Connection;
}

const MiB = 1024 * 1024;

async function timed(check: () => Promise<ComponentCheckResult['detail']>): Promise<ComponentCheckResult> {
  const started = performance.now();
  heartbeat();
  const detail = await check();
  return { attempt: activityInfo().attempt, durationMs: Math.round(performance.now() - started), detail };
}

export function createClusterInitActivities(deps: ClusterInitDeps) {
  const { config, pool, temporal } = deps;

  return {
    async checkConfig(_input: ComponentCheckInput): Promise<ComponentCheckResult> {
      return timed(async () => {
        const result = configSchema.safeParse(config);
        if (!result.success) {
          throw ApplicationFailure.nonRetryable(
            `config no longer validates: ${result.error.issues[0]?.message}`,
            'ConfigInvalid',
          );
        }
        const ports = [config.api.port, config.monitoring.workerMetricsPort].filter((p) => p !== 0);
        if (new Set(ports).size !== ports.length) {
          throw ApplicationFailure.nonRetryable(
            'api.port and monitoring.workerMetricsPort must differ',
            'ConfigInvalid',
          );
        }
        return { profile: config.system.profile, dwcpMode: config.dwcp.mode, nodeId: config.system.nodeId };
      });
    },

    async checkDataDir(input: ComponentCheckInput): Promise<ComponentCheckResult> {
      return timed(async () => {
        const dir = config.system.dataDir;
        try {
          await mkdir(dir, { recursive: true });
          const probe = path.join(
            dir,
            `.write-probe-${input.workflowId.replace(/[^a-zA-Z0-9_-]/g, '_')}-${randomUUID()}`,
          );
          const token = randomUUID();
          const handle = await open(probe, 'w');
          try {
            await handle.writeFile(token);
            await handle.sync();
          } finally {
            await handle.close();
          }
          const readBack = await readFile(probe, 'utf8');
          await unlink(probe);
          if (readBack !== token) throw new Error('read back different bytes than written');
        } catch (err) {
          // Retryable: a volume that is still mounting or a directory an operator is fixing can recover.
          throw ApplicationFailure.retryable(
            `data dir ${dir} is not writable: ${(err as Error).message}`,
            'DataDirNotWritable',
          );
        }
        return { dataDir: dir };
      });
    },

    async checkResources(_input: ComponentCheckInput): Promise<ComponentCheckResult> {
      return timed(async () => {
        const fsStats = await statfs(config.system.dataDir);
        const found = {
          cpus: os.availableParallelism(),
          memoryMib: Math.floor(os.totalmem() / MiB),
          diskFreeMib: Math.floor((fsStats.bavail * fsStats.bsize) / MiB),
        };
        const wanted = config.system.minResources;
        const short = (Object.keys(wanted) as Array<keyof typeof wanted>).filter((k) => found[k] < wanted[k]);
        if (short.length > 0) {
          throw ApplicationFailure.nonRetryable(
            `below the ${config.system.profile} profile: ${short.map((k) => `${k} ${found[k]} < ${wanted[k]}`).join(', ')}`,
            'InsufficientResources',
          );
        }
        return found;
      });
    },

    async checkPostgres(_input: ComponentCheckInput): Promise<ComponentCheckResult> {
      return timed(async () => {
        const version = await pool.query<{ server_version: string }>('SHOW server_version');
        const schema = await schemaVersion(pool);
        if (schema < LATEST_MIGRATION_VERSION) {
          throw ApplicationFailure.retryable(
            `schema at migration ${schema}, expected ${LATEST_MIGRATION_VERSION}`,
            'MigrationsPending',
          );
        }
        return { serverVersion: version.rows[0]?.server_version ?? 'unknown', schemaVersion: schema };
      });
    },

    async checkTemporalNamespace(_input: ComponentCheckInput): Promise<ComponentCheckResult> {
      return timed(async () => {
        const response = await temporal.workflowService.describeNamespace({ namespace: config.temporal.namespace });
        return {
          namespace: response.namespaceInfo?.name ?? config.temporal.namespace,
          state: String(response.namespaceInfo?.state ?? 'unknown'),
        };
      });
    },

    async checkAuditLog(input: ComponentCheckInput): Promise<ComponentCheckResult> {
      return timed(async () => {
        const written = await recordAudit(pool, {
          actor: `node:${config.system.nodeId}`,
          action: 'cluster.init',
          workflowId: input.workflowId,
          outcome: 'accepted',
          idempotencyKey: `${input.workflowId}:${input.component}`,
        });
        return { written };
      });
    },

    async checkOnnxRuntime(_input: ComponentCheckInput): Promise<ComponentCheckResult> {
      return timed(async () => {
        const ort = await import('onnxruntime-node');
        const backends = ort.listSupportedBackends().filter((b) => b.bundled);
        if (!backends.some((b) => b.name === 'cpu')) {
          throw ApplicationFailure.nonRetryable(
            'onnxruntime-node has no bundled CPU backend',
            'OnnxRuntimeUnavailable',
          );
        }
        return { backends: backends.map((b) => b.name).join(',') };
      });
    },

    async checkControlTaskQueue(_input: ComponentCheckInput): Promise<ComponentCheckResult> {
      return timed(async () => {
        const signal = cancellationSignal();
        const response = await temporal.workflowService.describeTaskQueue({
          namespace: config.temporal.namespace,
          taskQueue: { name: config.temporal.taskQueue },
          taskQueueType: 2, // TASK_QUEUE_TYPE_ACTIVITY: the pollers that would run the rest of the cluster's work
        });
        if (signal.aborted) throw new Error('cancelled');
        const pollers = response.pollers?.length ?? 0;
        if (pollers === 0) throw ApplicationFailure.retryable('no worker polls the control task queue', 'NoPollers');
        return { taskQueue: config.temporal.taskQueue, pollers };
      });
    },

    async recordClusterBoot(input: RecordClusterBootInput): Promise<void> {
      const status = BOOT_RECORD_STATUSES.find((s) => s === input.report.status);
      if (!status) {
        throw ApplicationFailure.nonRetryable(
          `cannot record a boot in status ${input.report.status}`,
          'InvalidBootStatus',
        );
      }
      await recordClusterBoot(pool, {
        workflowId: input.workflowId,
        nodeId: input.nodeId,
        status,
        report: input.report,
      });
    },
  };
}

export type ClusterInitActivities = ReturnType<typeof createClusterInitActivities>;
