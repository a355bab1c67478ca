/**
 * A host agent process serves Prometheus metrics where it was told (port 0: one it picks and logs): the process
 * metrics, and its lease renewals and inventory reports as they happen, labelled with its host id.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { assertHypervisorBinaries, startLocalHypervisors, type LocalHypervisors } from '../../native/libvirt/harness';
import { startAgentProcess } from '../support/fleet';
import type { ChildHandle } from '../support/processes';
import { createTestDatabase, scratchDir, type TestDatabase } from '../support/services';

let db: TestDatabase;
let hypervisors: LocalHypervisors;
let agent: ChildHandle | undefined;

before(async () => {
  assertHypervisorBinaries();
  db = await createTestDatabase();
  hypervisors = await startLocalHypervisors({ count: 1, baseDir: scratchDir('hv') });
});

after(async () => {
  if (agent && agent.child.exitCode === null && agent.child.signalCode === null) agent.child.kill('SIGTERM');
  await agent?.exited;
  await hypervisors?.stop();
  await db?.drop();
});

/** The value of one sample of a counter the agent labels with its host id, 0 while it has none. */
function sample(text: string, name: string, outcome: string, hostId: string): number {
  const line = new RegExp(`^${name}\\{outcome="${outcome}",host_id="${hostId}",service="host-agent"\\} (\\d+)$`, 'm');
  return Number(line.exec(text)?.[1] ?? 0);
}

test('a host agent serves its metrics on the port it picked and logged', async () => {
  const hypervisor = hypervisors.hosts[0]!;
  agent = startAgentProcess({
    hypervisor,
    databaseUrl: db.url,
    imageRoot: path.join(scratchDir('images'), hypervisor.hostId),
    // Info level for the line that names the port; loopback, as a test binds nothing wider.
    env: { NOVACRON_LOG_LEVEL: 'info', NOVACRON_AGENT_METRICS_LISTEN_HOST: '127.0.0.1' },
  });
  const [, url] = await agent.waitForOutput(/"metrics":"(http:\/\/127\.0\.0\.1:\d+\/metrics)"/, 120_000);
  assert.ok(url);

  // Renewals every 500 ms and reports every second (TEST_FLEET_ENV): a few of each within seconds.
  const deadline = Date.now() + 60_000;
  let text: string;
  for (;;) {
    const response = await fetch(url);
    assert.equal(response.status, 200);
    text = await response.text();
    const renewed = sample(text, 'novacron_host_lease_renewals_total', 'renewed', hypervisor.hostId);
    const reported = sample(text, 'novacron_inventory_reports_total', 'reported', hypervisor.hostId);
    if (renewed >= 2 && reported >= 2) break;
    assert.ok(Date.now() < deadline, `after 60 s: ${renewed} renewals, ${reported} reports\n${text.slice(0, 2000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.match(
    text,
    new RegExp(
      `^novacron_process_resident_memory_bytes\\{host_id="${hypervisor.hostId}",service="host-agent"\\} \\d+$`,
      'm',
    ),
  );
});
