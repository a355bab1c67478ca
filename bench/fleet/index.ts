/**
 * Fleet benchmark, on the VM lifecycle test's own set-up (test/support/fleet.ts: harness hypervisors, a host agent
 * process on each, a control worker and the API): how long drift made behind NovaCron's back takes to be recorded,
 * how long a killed agent's host takes to be marked down, and how long N VMs requested at once take to run and to
 * be deleted. The test checks that these things happen; this measures how fast.
 *
 *   NOVACRON_BENCH_FLEET_VMS=50 NOVACRON_BENCH_ITERATIONS=5 npm run bench -- fleet
 */
import os from 'node:os';
import path from 'node:path';
import { detectDomainType } from '../../native/libvirt';
import { migrate } from '../../store/migrate';
import { createPool } from '../../store/pool';
import { startFleet, TEST_FLEET_OVERRIDES, waitForHostsUp, type Fleet } from '../../test/support/fleet';
import {
  clearDrift,
  createAtOnce,
  deleteAtOnce,
  makeDrift,
  stepDurations,
  TINY_GUEST,
} from '../../test/support/fleet-scenarios';
import { readResults, writeResults, type Benchmark, type BenchRunInput } from '../results';
import { withBenchServices } from '../services';
import { summarize } from '../stats';
import { renderFleet, type FleetResults, type Sampled } from './render';

const HOSTS = ['host-1', 'host-2', 'host-3'];
const VMS = Number(process.env.NOVACRON_BENCH_FLEET_VMS ?? 50);
const ROUNDS = Number(process.env.NOVACRON_BENCH_ITERATIONS ?? 5);
const STALENESS_BOUND_MS = TEST_FLEET_OVERRIDES.fleet.stalenessBoundMs.datacenter;
/** A finding later than this is a failed run, not a sample: five bounds is far past anything seen under load. */
const DRIFT_TIMEOUT_MS = STALENESS_BOUND_MS * 5;
const LEASE_TTL_MS = TEST_FLEET_OVERRIDES.dwcp.consensus.leaseTtlSeconds * 1000;

const loadAvg1 = (): number => Math.round((os.loadavg()[0] ?? 0) * 100) / 100;
const sampled = (values: number[]): Sampled => ({ ...summarize(values), samples: values });
const log = (line: string): void => {
  process.stdout.write(`  ${line}\n`);
};

async function measureDrift(fleet: Fleet): Promise<FleetResults['drift']> {
  const latency: Record<'stateMismatch' | 'missingVm' | 'unknownVm', number[]> = {
    stateMismatch: [],
    missingVm: [],
    unknownVm: [],
  };
  const loadAtStart = loadAvg1();
  for (let round = 0; round < ROUNDS; round++) {
    // Each round drifts a different pair of hosts, so no one agent's report phase decides the figures.
    const vmHost = HOSTS[round % HOSTS.length]!;
    const rogueHost = HOSTS[(round + 1) % HOSTS.length]!;
    const found = await makeDrift(fleet, { name: `drift-${round}`, vmHost, rogueHost, timeoutMs: DRIFT_TIMEOUT_MS });
    for (const kind of ['stateMismatch', 'missingVm', 'unknownVm'] as const) latency[kind].push(found[kind].latencyMs);
    log(
      `drift ${round + 1}/${ROUNDS}: state-mismatch ${found.stateMismatch.latencyMs} ms, ` +
        `missing-vm ${found.missingVm.latencyMs} ms, unknown-vm ${found.unknownVm.latencyMs} ms`,
    );
    await clearDrift(fleet, found, { rogueHost, timeoutMs: DRIFT_TIMEOUT_MS });
  }
  return {
    rounds: ROUNDS,
    loadAvg1AtStart: loadAtStart,
    stateMismatchMs: sampled(latency.stateMismatch),
    missingVmMs: sampled(latency.missingVm),
    unknownVmMs: sampled(latency.unknownVm),
  };
}

async function measureLease(fleet: Fleet): Promise<FleetResults['lease']> {
  const down: number[] = [];
  const rejoin: number[] = [];
  const loadAtStart = loadAvg1();
  for (let round = 0; round < ROUNDS; round++) {
    const hostId = HOSTS[round % HOSTS.length]!;
    await waitForHostsUp(fleet.pool, [hostId], 60_000);
    down.push(await fleet.killAgentUntilDown(hostId, LEASE_TTL_MS * 20));
    const restarted = Date.now();
    fleet.startAgent(hostId);
    await waitForHostsUp(fleet.pool, [hostId], 120_000);
    rejoin.push(Date.now() - restarted);
    log(
      `lease ${round + 1}/${ROUNDS}: ${hostId} down ${down.at(-1)} ms after SIGKILL, up ${rejoin.at(-1)} ms after restart`,
    );
  }
  return {
    rounds: ROUNDS,
    loadAvg1AtStart: loadAtStart,
    downAfterKillMs: sampled(down),
    upAfterRestartMs: sampled(rejoin),
  };
}

async function measureBulk(fleet: Fleet): Promise<FleetResults['bulk']> {
  const timeoutMs = Math.max(300_000, VMS * 6_000);
  const loadAtStart = loadAvg1();
  const { started, allRunningMs } = await createAtOnce(fleet, { count: VMS, namePrefix: 'bench-', timeoutMs });
  const loadAfterCreate = loadAvg1();
  const rows = await fleet.pool.query<{ id: string; host_id: string; state: string }>(
    "SELECT id, host_id, state FROM vms WHERE name LIKE 'bench-%'",
  );
  const running = (await fleet.allDomains()).filter((d) => d.name.startsWith('bench-') && d.state === 'running');
  // A benchmark that lost a VM measured something else: stop rather than publish it.
  if (rows.rowCount !== VMS || running.length !== VMS || rows.rows.some((r) => r.state !== 'running')) {
    throw new Error(`${VMS} VMs requested: ${rows.rowCount} rows, ${running.length} running domains`);
  }
  const perHost = Object.fromEntries(HOSTS.map((h) => [h, rows.rows.filter((r) => r.host_id === h).length]));
  log(`${VMS} VMs running ${allRunningMs} ms after the first request (${JSON.stringify(perHost)})`);
  const steps = await stepDurations(fleet, started);
  const allDeletedMs = await deleteAtOnce(fleet, { vmIds: started.map((s) => s.vmId), timeoutMs });
  log(`${VMS} VMs deleted in ${allDeletedMs} ms`);
  return {
    vms: VMS,
    guest: TINY_GUEST,
    allRunningMs,
    allDeletedMs,
    perHost,
    stepMs: Object.fromEntries(Object.entries(steps).map(([name, values]) => [name, summarize(values)])),
    loadAvg1: { atStart: loadAtStart, afterCreate: loadAfterCreate, afterDelete: loadAvg1() },
  };
}

async function run(input: BenchRunInput): Promise<{ file: string; publish: boolean }> {
  return withBenchServices(
    { name: 'fleet', overrides: TEST_FLEET_OVERRIDES, controlWorker: false },
    async ({ config, cleanups, scratchDir }) => {
      const pool = createPool({ databaseUrl: config.storage.databaseUrl!, applicationName: 'novacron-bench', max: 5 });
      cleanups.add(() => pool.end());
      await migrate(pool);
      const fleet = await startFleet({ config, pool, hostIds: HOSTS, scratchDir });
      cleanups.add(() => fleet.stop());
      // Quiet fleet first, then the lease kills, then the burst of VMs, whose load outlasts it.
      const drift = await measureDrift(fleet);
      const lease = await measureLease(fleet);
      const bulk = await measureBulk(fleet);
      const results: Omit<FleetResults, 'run'> = {
        benchmark: 'fleet',
        hosts: HOSTS.length,
        domainType: detectDomainType(),
        settings: {
          leaseTtlSeconds: TEST_FLEET_OVERRIDES.dwcp.consensus.leaseTtlSeconds,
          heartbeatIntervalMs: TEST_FLEET_OVERRIDES.fleet.heartbeatIntervalMs,
          monitorIntervalMs: TEST_FLEET_OVERRIDES.fleet.monitorIntervalMs,
          stalenessBoundMs: STALENESS_BOUND_MS,
        },
        drift,
        lease,
        bulk,
      };
      const file = await writeResults({ dir: input.outDir, name: 'fleet.json', recorder: input.recorder, results });
      return { file, publish: true };
    },
  );
}

export const fleetBenchmark: Benchmark = {
  name: 'fleet',
  run,
  publishedResults: async (outDir) => path.join(outDir, 'fleet.json'),
  sections: [
    {
      doc: 'docs/benchmarks.md',
      name: 'fleet',
      render: async (file) => renderFleet(file, await readResults<FleetResults>(file)),
    },
  ],
};
