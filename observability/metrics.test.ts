import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createHostAgentMetrics, createMetrics, serveMetrics } from './metrics';

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
