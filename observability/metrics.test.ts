import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Registry } from 'prom-client';
import type { MigrationPlan, MigrationResult } from '../domain/migration';
import { createHostAgentMetrics, createMetrics, createMigrationMetrics, serveMetrics } from './metrics';

describe('serveMetrics', () => {
  const metrics = createMetrics({ service: 'host-agent', labels: { host_id: 'host-7' } });
  const agent = createHostAgentMetrics(metrics.registry);
  let server: Awaited<ReturnType<typeof serveMetrics>>;

  before(async () => {
    server = await serveMetrics({ registry: metrics.registry, host: '127.0.0.1', port: 0 });
  });
  after(() => server.close());

  test('port 0 gets a real port, named in the url', () => {
    assert.match(server.url, /^http:\/\/127\.0\.0\.1:(\d+)\/metrics$/);
    assert.notEqual(server.url, 'http://127.0.0.1:0/metrics');
  });

  test('serves process metrics and the agent counters in Prometheus text, with the default labels', async () => {
    agent.leaseRenewals.inc({ outcome: 'renewed' });
    agent.leaseRenewals.inc({ outcome: 'renewed' });
    agent.leaseRenewals.inc({ outcome: 'failed' });
    agent.inventoryReports.inc({ outcome: 'reported' });
    const response = await fetch(server.url);
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await response.text();
    assert.match(text, /^novacron_process_cpu_user_seconds_total\{host_id="host-7",service="host-agent"\} /m);
    assert.match(
      text,
      /^novacron_host_lease_renewals_total\{outcome="renewed",host_id="host-7",service="host-agent"\} 2$/m,
    );
    assert.match(
      text,
      /^novacron_host_lease_renewals_total\{outcome="failed",host_id="host-7",service="host-agent"\} 1$/m,
    );
    assert.match(
      text,
      /^novacron_inventory_reports_total\{outcome="reported",host_id="host-7",service="host-agent"\} 1$/m,
    );
  });

  test('answers 404 off /metrics', async () => {
    const response = await fetch(server.url.replace(/\/metrics$/, '/'));
    assert.equal(response.status, 404);
    await response.text();
  });

  test('a port already taken fails with the address and the reason', async () => {
    const port = Number(new URL(server.url).port);
    await assert.rejects(
      serveMetrics({ registry: metrics.registry, host: '127.0.0.1', port }),
      new RegExp(`^Error: cannot serve metrics on 127\\.0\\.0\\.1:${port}: EADDRINUSE$`),
    );
    // The first server is untouched by the second one's failure.
    const response = await fetch(server.url);
    assert.equal(response.status, 200);
    await response.text();
  });
});

describe('createMigrationMetrics', () => {
  const plan = { mode: 'datacenter' } as MigrationPlan;
  const result = (overrides: Partial<MigrationResult>): MigrationResult => ({
    workflowId: 'migrate-vm-1',
    vmId: 'vm-1',
    outcome: 'completed',
    finalHostId: 'host-b',
    sourceHostId: 'host-a',
    targetHostId: 'host-b',
    escalations: [],
    workflowMs: 4200,
    ...overrides,
  });

  async function sample(registry: Registry, name: string, labels: Record<string, string>): Promise<number | undefined> {
    const metric = await registry.getSingleMetric(name)!.get();
    const match = metric.values.find(
      (v) =>
        (v as { metricName?: string }).metricName !== `${name}_bucket` &&
        Object.entries(labels).every(([k, value]) => v.labels[k] === value) &&
        Object.keys(v.labels).length === Object.keys(labels).length,
    );
    return match?.value;
  }

  test('counts outcomes by mode and observes duration, downtime and bytes of completed migrations', async () => {
    const registry = new Registry();
    const metrics = createMigrationMetrics(registry);
    metrics.observeResult(
      result({ plan, measured: { totalMs: 3000, downtimeMs: 21, bytes: 150 * 1024 * 1024, passes: 3, jobMs: 3100 } }),
    );
    metrics.observeResult(result({ outcome: 'refused', finalHostId: 'host-a', plan, workflowMs: 900 }));
    metrics.observeResult(result({ outcome: 'failed', finalHostId: 'host-a', workflowMs: 50 }));

    assert.equal(await sample(registry, 'novacron_migrations_total', { outcome: 'completed', mode: 'datacenter' }), 1);
    assert.equal(await sample(registry, 'novacron_migrations_total', { outcome: 'refused', mode: 'datacenter' }), 1);
    assert.equal(await sample(registry, 'novacron_migrations_total', { outcome: 'failed', mode: 'unplanned' }), 1);
    const text = await registry.metrics();
    assert.match(text, /^novacron_migration_duration_seconds_sum\{outcome="completed",mode="datacenter"\} 4\.2$/m);
    assert.match(
      text,
      /^novacron_migration_duration_seconds_bucket\{le="5",outcome="completed",mode="datacenter"\} 1$/m,
    );
    assert.match(
      text,
      /^novacron_migration_duration_seconds_bucket\{le="2.5",outcome="completed",mode="datacenter"\} 0$/m,
    );
    // Downtime and bytes come from libvirt's completed job only: the refused and failed runs have none.
    assert.match(text, /^novacron_migration_downtime_seconds_count\{mode="datacenter"\} 1$/m);
    assert.match(text, /^novacron_migration_downtime_seconds_bucket\{le="0.025",mode="datacenter"\} 1$/m);
    assert.match(text, /^novacron_migration_downtime_seconds_bucket\{le="0.01",mode="datacenter"\} 0$/m);
    assert.doesNotMatch(text, /^novacron_migration_downtime_seconds_count\{mode="unplanned"\}/m);
    assert.equal(await sample(registry, 'novacron_migration_bytes_total', { mode: 'datacenter' }), 150 * 1024 * 1024);
  });

  test('counts each escalation step by kind, and a result does not count its escalations again', async () => {
    const registry = new Registry();
    const metrics = createMigrationMetrics(registry);
    metrics.countEscalation('raise-downtime');
    metrics.countEscalation('raise-downtime');
    metrics.countEscalation('auto-converge');
    metrics.observeResult(
      result({
        plan,
        escalations: [
          { seq: 1, kind: 'raise-downtime', pass: 3, dataRemainingBytes: 1, reason: 'stalled', atMs: 1 },
          { seq: 2, kind: 'raise-downtime', pass: 5, dataRemainingBytes: 1, reason: 'stalled', atMs: 2 },
          { seq: 3, kind: 'auto-converge', pass: 7, dataRemainingBytes: 1, reason: 'stalled', atMs: 3 },
        ],
      }),
    );
    assert.equal(await sample(registry, 'novacron_migration_escalations_total', { kind: 'raise-downtime' }), 2);
    assert.equal(await sample(registry, 'novacron_migration_escalations_total', { kind: 'auto-converge' }), 1);
    assert.equal(await sample(registry, 'novacron_migration_escalations_total', { kind: 'post-copy' }), undefined);
  });
});
