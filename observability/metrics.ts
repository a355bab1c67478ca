/**
 * Prometheus metrics shared by the API and the workers. Each process owns one registry; the Temporal interceptors
 * below count workflow and activity outcomes with their durations.
 */
import type { ActivityInboundCallsInterceptor, ActivityExecuteInput, Next } from '@temporalio/worker';
import type { Context as ActivityContext } from '@temporalio/activity';
import { CancelledFailure } from '@temporalio/common';
import http from 'node:http';
import { collectDefaultMetrics, Counter, Histogram, Registry } from 'prom-client';
import type { EscalationKind, MigrationResult } from '../domain/migration';

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export interface NovacronMetrics {
  registry: Registry;
  activityExecutions: Counter<'activity_type' | 'task_queue' | 'outcome'>;
  activityDuration: Histogram<'activity_type' | 'task_queue' | 'outcome'>;
  workflowCompletions: Counter<'workflow_type' | 'task_queue' | 'outcome'>;
  workflowDuration: Histogram<'workflow_type' | 'task_queue' | 'outcome'>;
  workflowStarts: Counter<'workflow_type'>;
  httpRequests: Counter<'method' | 'route' | 'status'>;
  httpDuration: Histogram<'method' | 'route' | 'status'>;
}

export function createMetrics(input: { service: string; labels?: Record<string, string> }): NovacronMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ ...input.labels, service: input.service });
  collectDefaultMetrics({ register: registry, prefix: 'novacron_' });
  return {
    registry,
    activityExecutions: new Counter({
      name: 'novacron_activity_executions_total',
      help: 'Activity attempts by type and outcome',
      labelNames: ['activity_type', 'task_queue', 'outcome'],
      registers: [registry],
    }),
    activityDuration: new Histogram({
      name: 'novacron_activity_duration_seconds',
      help: 'Activity attempt duration',
      labelNames: ['activity_type', 'task_queue', 'outcome'],
      buckets: DURATION_BUCKETS,
      registers: [registry],
    }),
    workflowCompletions: new Counter({
      name: 'novacron_workflow_completions_total',
      help: 'Workflow runs finished on this worker, by type and outcome',
      labelNames: ['workflow_type', 'task_queue', 'outcome'],
      registers: [registry],
    }),
    workflowDuration: new Histogram({
      name: 'novacron_workflow_duration_seconds',
      help: 'Workflow run duration from start to close',
      labelNames: ['workflow_type', 'task_queue', 'outcome'],
      buckets: DURATION_BUCKETS,
      registers: [registry],
    }),
    workflowStarts: new Counter({
      name: 'novacron_workflow_starts_total',
      help: 'Workflows started through the API',
      labelNames: ['workflow_type'],
      registers: [registry],
    }),
    httpRequests: new Counter({
      name: 'novacron_http_requests_total',
      help: 'API requests by route and status',
      labelNames: ['method', 'route', 'status'],
      registers: [registry],
    }),
    httpDuration: new Histogram({
      name: 'novacron_http_request_duration_seconds',
      help: 'API request duration',
      labelNames: ['method', 'route', 'status'],
      buckets: DURATION_BUCKETS,
      registers: [registry],
    }),
  };
}

/** A host agent's own loops: the lease that is its heartbeat, and the inventory reports drift detection reads. */
export interface HostAgentMetrics {
  /** renewed, reacquired (it had expired), lost (another agent holds it: this one stops), failed (no answer). */
  leaseRenewals: Counter<'outcome'>;
  /** reported, or failed (libvirt or the store did not answer). */
  inventoryReports: Counter<'outcome'>;
  inventoryReportDuration: Histogram<'outcome'>;
  /** Lease lapses on which the host's guests were stopped, by who stopped them: agent, or watchdog (its process). */
  selfFences: Counter<'by'>;
}

export function createHostAgentMetrics(registry: Registry): HostAgentMetrics {
  return {
    leaseRenewals: new Counter({
      name: 'novacron_host_lease_renewals_total',
      help: 'Host lease renewal attempts by outcome',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    inventoryReports: new Counter({
      name: 'novacron_inventory_reports_total',
      help: 'Libvirt inventory reports by outcome',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    inventoryReportDuration: new Histogram({
      name: 'novacron_inventory_report_duration_seconds',
      help: 'Time to list the libvirt inventory and record it',
      labelNames: ['outcome'],
      buckets: DURATION_BUCKETS,
      registers: [registry],
    }),
    selfFences: new Counter({
      name: 'novacron_agent_self_fences_total',
      help: "Times this host's NovaCron guests were stopped because its lease could not be renewed in time",
      labelNames: ['by'],
      registers: [registry],
    }),
  };
}

/** Seconds: from a small guest on a fast link to the largest deadlines (150 s per GiB of memory). */
const MIGRATION_DURATION_BUCKETS = [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];
/** Seconds: around QEMU's 300 ms default downtime and up to the 10 s a policy may allow. */
const MIGRATION_DOWNTIME_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10];

/** What the migration control activities record: each result once, each escalation step as it is taken. */
export interface MigrationMetrics {
  /** Outcome, duration, and for a migration libvirt completed, its downtime and bytes. */
  observeResult(result: MigrationResult): void;
  /** One convergence-control step; results do not count their escalations again. */
  countEscalation(kind: EscalationKind): void;
}

/**
 * Migrations by outcome; workflow duration by outcome and mode; libvirt's measured downtime and bytes by mode.
 * `mode` is the plan's (datacenter, hybrid, internet), or `unplanned` for a migration that ended before its plan.
 */
export function createMigrationMetrics(registry: Registry): MigrationMetrics {
  const migrations = new Counter({
    name: 'novacron_migrations_total',
    help: 'Live migrations finished, by outcome (completed, cancelled, failed, refused)',
    labelNames: ['outcome', 'mode'],
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'novacron_migration_duration_seconds',
    help: 'Live migration workflow time from start to its outcome',
    labelNames: ['outcome', 'mode'],
    buckets: MIGRATION_DURATION_BUCKETS,
    registers: [registry],
  });
  const downtime = new Histogram({
    name: 'novacron_migration_downtime_seconds',
    help: 'Guest downtime libvirt measured for a completed live migration',
    labelNames: ['mode'],
    buckets: MIGRATION_DOWNTIME_BUCKETS,
    registers: [registry],
  });
  const bytes = new Counter({
    name: 'novacron_migration_bytes_total',
    help: 'Bytes libvirt moved for completed live migrations',
    labelNames: ['mode'],
    registers: [registry],
  });
  const escalations = new Counter({
    name: 'novacron_migration_escalations_total',
    help: 'Convergence-control steps taken, by kind (raise-downtime, auto-converge, post-copy, abort)',
    labelNames: ['kind'],
    registers: [registry],
  });
  return {
    observeResult(result) {
      const mode = result.plan?.mode ?? 'unplanned';
      migrations.inc({ outcome: result.outcome, mode });
      duration.observe({ outcome: result.outcome, mode }, result.workflowMs / 1000);
      if (result.measured) {
        downtime.observe({ mode }, result.measured.downtimeMs / 1000);
        bytes.inc({ mode }, result.measured.bytes);
      }
    },
    countEscalation(kind) {
      escalations.inc({ kind });
    },
  };
}

/** Seconds: from the grace period and one witness round (a few seconds) to a storm of restarts (minutes). */
const FAILOVER_DURATION_BUCKETS = [1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600];

/** What failover records: each step's outcome as it is decided, and each failover's time once its VMs are handled. */
export interface FailoverMetrics {
  /** A host whose lease expired and which failover began to judge. */
  suspicions: Counter<'host_id'>;
  /** confirmed, not-confirmed (the witnesses did not agree it is down), withheld-storm (too many suspects at once). */
  confirmations: Counter<'outcome'>;
  /** fenced (the lease taken over, its token bumped), or refused (the store would not fence it). */
  fences: Counter<'outcome'>;
  /** Per guest: restarted, failed, not-restartable (local disks, or not running), withheld (seen running there). */
  restarts: Counter<'outcome'>;
  /** From the suspicion to the last VM's restart, by the failover's outcome. */
  failoverSeconds: Histogram<'outcome'>;
}

export function createFailoverMetrics(registry: Registry): FailoverMetrics {
  return {
    suspicions: new Counter({
      name: 'novacron_failover_suspicions_total',
      help: 'Hosts suspected of failure (lease expired), by host',
      labelNames: ['host_id'],
      registers: [registry],
    }),
    confirmations: new Counter({
      name: 'novacron_failover_confirmations_total',
      help: 'Suspicions judged, by outcome (confirmed, not-confirmed, withheld-storm)',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    fences: new Counter({
      name: 'novacron_failover_fences_total',
      help: 'Fence attempts on confirmed hosts, by outcome (fenced, refused)',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    restarts: new Counter({
      name: 'novacron_failover_vm_restarts_total',
      help: "A failed host's VMs, by outcome (restarted, failed, not-restartable, withheld)",
      labelNames: ['outcome'],
      registers: [registry],
    }),
    failoverSeconds: new Histogram({
      name: 'novacron_failover_duration_seconds',
      help: "Failover time from the suspicion to the last VM's restart, by outcome",
      labelNames: ['outcome'],
      buckets: FAILOVER_DURATION_BUCKETS,
      registers: [registry],
    }),
  };
}

export function activityOutcome(err: unknown): 'failed' | 'cancelled' {
  return err instanceof CancelledFailure ? 'cancelled' : 'failed';
}

/** Times every activity attempt on the worker; registered through WorkerOptions.interceptors.activity. */
export function activityMetricsInterceptor(metrics: NovacronMetrics) {
  return (ctx: ActivityContext): { inbound: ActivityInboundCallsInterceptor } => ({
    inbound: {
      async execute(input: ActivityExecuteInput, next: Next<ActivityInboundCallsInterceptor, 'execute'>) {
        const labels = { activity_type: ctx.info.activityType, task_queue: ctx.info.taskQueue };
        const stop = metrics.activityDuration.startTimer(labels);
        try {
          const result: unknown = await next(input);
          metrics.activityExecutions.inc({ ...labels, outcome: 'completed' });
          stop({ outcome: 'completed' });
          return result;
        } catch (err) {
          const outcome = activityOutcome(err);
          metrics.activityExecutions.inc({ ...labels, outcome });
          stop({ outcome });
          throw err;
        }
      },
    },
  });
}

/** Serves GET /metrics for processes that have no Fastify app (workers, agents). Port 0 picks a free port. */
export async function serveMetrics(input: {
  registry: Registry;
  host: string;
  port: number;
}): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.url === '/metrics') {
      input.registry
        .metrics()
        .then((text) => {
          res.writeHead(200, { 'content-type': input.registry.contentType });
          res.end(text);
        })
        .catch((err: unknown) => {
          res.writeHead(500);
          res.end(String(err));
        });
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found; try /metrics\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new Error(`cannot serve metrics on ${input.host}:${input.port}: ${err.code ?? err.message}`, { cause: err }),
      ),
    );
    server.listen(input.port, input.host, resolve);
  });
  const address = server.address() as { port: number };
  return {
    url: `http://${input.host}:${address.port}/metrics`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
