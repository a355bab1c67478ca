/** Host agents as real child processes against harness hypervisors, for the VM lifecycle integration tests. */
import type { Pool } from 'pg';
import type { LocalHypervisor } from '../../native/libvirt/harness';
import { isolatedEnv, startEntry, type ChildHandle } from './processes';
import { scratchDir, testTemporalAddress } from './services';

/** Short enough that a killed agent's host goes down within seconds. */
export const TEST_FLEET_ENV = {
  NOVACRON_DWCP_CONSENSUS_LEASE_TTL_SECONDS: '3',
  NOVACRON_FLEET_HEARTBEAT_INTERVAL_MS: '500',
  NOVACRON_FLEET_MONITOR_INTERVAL_MS: '250',
  NOVACRON_FLEET_STALENESS_BOUND_MS_DATACENTER: '4000',
};

/** The same settings as config overrides, for in-process control workers. */
export const TEST_FLEET_OVERRIDES = {
  dwcp: { consensus: { leaseTtlSeconds: 3 } },
  fleet: {
    heartbeatIntervalMs: 500,
    monitorIntervalMs: 250,
    stalenessBoundMs: { datacenter: 4000 },
    // Harness hosts each report this machine's 2 CPUs; 50 one-vCPU guests on 3 of them need a deep overcommit.
    cpuOvercommit: 32,
  },
};

/** One development CA per test process, so every agent a test starts trusts the others' DWCP certificates. */
let testPkiDir: string | undefined;
function sharedPkiDir(): string {
  testPkiDir ??= scratchDir('pki');
  return testPkiDir;
}

export function startAgentProcess(input: {
  hypervisor: LocalHypervisor;
  databaseUrl: string;
  imageRoot: string;
  env?: Record<string, string>;
}): ChildHandle {
  return startEntry(
    'workers/host-agent.ts',
    isolatedEnv({
      ...TEST_FLEET_ENV,
      DATABASE_URL: input.databaseUrl,
      TEMPORAL_ADDRESS: testTemporalAddress(),
      NOVACRON_DATA_DIR: scratchDir('agent-data'),
      NOVACRON_LOG_LEVEL: 'warn',
      NOVACRON_AGENT_HOST_ID: input.hypervisor.hostId,
      NOVACRON_AGENT_LIBVIRT_URI: input.hypervisor.uri,
      NOVACRON_AGENT_IMAGE_ROOT: input.imageRoot,
      NOVACRON_AGENT_DWCP_PORT: '0',
      NOVACRON_AGENT_METRICS_PORT: '0',
      NOVACRON_AGENT_PKI_DIR: sharedPkiDir(),
      ...input.env,
    }),
  );
}

/** Waits until each host is registered with a live lease and has reported its inventory. */
export async function waitForHostsUp(pool: Pool, hostIds: string[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await pool.query<{ id: string }>(
      `SELECT h.id FROM hosts h JOIN leases l ON l.resource = 'host:' || h.id
       JOIN inventory_reports r ON r.host_id = h.id
       WHERE h.state = 'up' AND l.expires_at > now() AND h.id = ANY($1)`,
      [hostIds],
    );
    if (result.rowCount === hostIds.length) return;
    if (Date.now() > deadline) {
      throw new Error(`hosts not up after ${timeoutMs} ms: up ${result.rows.map((r) => r.id).join(', ') || 'none'}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}
