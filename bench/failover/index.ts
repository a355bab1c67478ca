/**
 * Host failover benchmark, on the failover integration test's set-up (test/support/failover-fleet.ts: three
 * networked harness hosts, failover on, a short lease and grace): how long after a host's agent dies its HA guest
 * runs on another host, and where that time goes according to the failover report. The test checks that failover
 * happens, never twice and only when it should; this measures how fast.
 *
 *   NOVACRON_BENCH_FAILOVER_RUNS=10 npm run bench -- failover
 *
 * Any other number of runs writes failover-partial.json and leaves the docs as they are.
 */
import path from 'node:path';
import { configSchema, type NovacronConfig } from '../../config/schema';
import { detectDomainType } from '../../native/libvirt';
import type { FailoverReport } from '../../store/failovers';
import { migrate } from '../../store/migrate';
import { createPool } from '../../store/pool';
import {
  bringBack,
  FAILOVER_HOSTS,
  FAILOVER_TIMEOUT_MS,
  failoversOf,
  finishedFailover,
  FAILOVER_AGENT_ENV,
  guestOn,
  runningOn,
} from '../../test/support/failover-fleet';
import { FLEET_SHARED_POOL, startFleet, TEST_FLEET_OVERRIDES, type Fleet } from '../../test/support/fleet';
import { readResults, writeResults, type Benchmark, type BenchRunInput } from '../results';
import { loadAverage } from '../run-metadata';
import { withBenchServices } from '../services';
import { renderFailover, type FailoverPhases, type FailoverResults, type FailoverRunSample } from './render';

const DEFAULT_RUNS = 10;
/** The grace the committed results were measured with (the integration test uses the product's default, 2 s). */
const GRACE_MS = 1000;
const RUNS = Number(process.env.NOVACRON_BENCH_FAILOVER_RUNS ?? DEFAULT_RUNS);
const POLL_INTERVAL_MS = 50;
/** What guestOn creates: all failover needs of a guest. */
const GUEST = { vcpus: 1, memoryMib: 64, diskMib: 16, storagePool: FLEET_SHARED_POOL };
/** The goals for kill → guest running elsewhere. */
const GOALS = { p50Ms: 10_000, p99Ms: 15_000 };
/** The test fleet's 3 s lease with failover on (the integration test gives its lease more slack), on the benchmark's own services. */
const OVERRIDES = {
  ...TEST_FLEET_OVERRIDES,
  failover: { ...TEST_FLEET_OVERRIDES.failover, enabled: true, graceMs: GRACE_MS, witnessProbeTimeoutMs: 1000 },
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (line: string): void => {
  process.stdout.write(`  ${line}\n`);
};
const message = (err: unknown): string => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

function settingsOf(config: NovacronConfig): FailoverResults['settings'] {
  return {
    leaseTtlSeconds: config.dwcp.consensus.leaseTtlSeconds,
    heartbeatIntervalMs: config.fleet.heartbeatIntervalMs,
    selfFenceMarginMs: config.failover.selfFenceMarginMs,
    graceMs: config.failover.graceMs,
    monitorIntervalMs: config.fleet.monitorIntervalMs,
    witnessProbeTimeoutMs: config.failover.witnessProbeTimeoutMs,
  };
}

/** The one host the guest runs on; anything else means the run would time something other than one failover. */
async function homeOf(fleet: Fleet, vmId: string): Promise<string> {
  const on = await runningOn(fleet, vmId);
  if (on.length !== 1) throw new Error(`the guest runs on ${on.length ? on.join(', ') : 'no host'}`);
  return on[0]!;
}

/** Whether the guest's domain runs on any host but `victim`, asking their libvirtds side by side. */
async function runsElsewhere(fleet: Fleet, input: { vmId: string; victim: string }): Promise<boolean> {
  const others = fleet.hostIds.filter((h) => h !== input.victim);
  const lists = await Promise.all(others.map((h) => fleet.libvirt[h]!.listAllDomains().catch(() => [])));
  return lists.some((domains) => domains.some((d) => d.uuid === input.vmId && d.state === 'running'));
}

/**
 * Polls the other hosts' libvirtds until the guest runs on one of them; times from `t0` (monotonic). The hosts are
 * asked side by side, so the resolution is one listing and the pause, not one listing per host.
 */
async function untilRunningElsewhere(
  fleet: Fleet,
  input: { vmId: string; victim: string; t0: number },
): Promise<{ killToRunningMs: number; pollResolutionMs: number; on: string[] }> {
  let previousPollStart = input.t0;
  for (;;) {
    const pollStart = performance.now();
    if (await runsElsewhere(fleet, input)) {
      const now = performance.now();
      return {
        killToRunningMs: now - input.t0,
        pollResolutionMs: now - previousPollStart,
        on: await runningOn(fleet, input.vmId),
      };
    }
    if (performance.now() - input.t0 > FAILOVER_TIMEOUT_MS) {
      throw new Error(`the guest ran on no other host within ${FAILOVER_TIMEOUT_MS} ms`);
    }
    previousPollStart = pollStart;
    await sleep(POLL_INTERVAL_MS);
  }
}

function phasesOf(report: FailoverReport, input: { vmId: string; killedAtMs: number; seenAtMs: number }) {
  const at = (iso: string | undefined) => (iso === undefined ? undefined : Date.parse(iso));
  const between = (from: number | undefined, to: number | undefined) =>
    from === undefined || to === undefined ? undefined : to - from;
  const vm = report.vms.find((v) => v.vmId === input.vmId);
  const expiry = at(report.suspectedAt)!;
  const confirmed = at(report.confirmation?.confirmedAt);
  const fenced = at(report.fencedAt);
  const restarted = at(vm?.restartedAt);
  const optional = {
    expiryToConfirmedMs: between(expiry, confirmed),
    expiryToGraceEndedMs: between(expiry, at(report.graceEndedAt)),
    votesMs: between(at(report.graceEndedAt), confirmed),
    confirmedToFencedMs: between(confirmed, fenced),
    fencedToRestartedMs: between(fenced, restarted),
    restartedToSeenMs: between(restarted, Math.round(input.seenAtMs)),
  };
  const phases: FailoverPhases = {
    killToExpiryMs: expiry - input.killedAtMs,
    expiryToStartedMs: at(report.startedAt)! - expiry,
    ...Object.fromEntries(Object.entries(optional).filter(([, v]) => v !== undefined)),
  };
  return { vm, phases };
}

/**
 * One failover: the agent SIGKILLed and the host's running guests destroyed at the same instant (libvirtd stays:
 * a harness host cannot be restarted alone), timed until libvirt shows the guest elsewhere, then the report read.
 */
async function failOver(
  fleet: Fleet,
  input: { index: number; vmId: string; victim: string; seen: Set<string> },
): Promise<FailoverRunSample> {
  const { vmId, victim } = input;
  const libvirt = fleet.libvirt[victim]!;
  const guests = (await libvirt.listAllDomains()).filter((d) => d.state === 'running');
  const load = loadAverage();
  const agent = fleet.agents[victim]!;
  const killedAtMs = Date.now();
  const t0 = performance.now();
  agent.child.kill('SIGKILL');
  // The agent's watchdog may stop a guest first: a guest no longer running is what the destroy was for.
  const destroyed = Promise.all(guests.map((d) => libvirt.domainDestroy({ name: d.name }).catch(() => undefined)));
  const base = {
    index: input.index,
    victimHostId: victim,
    vmId,
    killedAt: new Date(killedAtMs).toISOString(),
    loadAverage: load,
  };
  try {
    const [seen] = await Promise.all([untilRunningElsewhere(fleet, { vmId, victim, t0 }), destroyed, agent.exited]);
    const report = await finishedFailover(fleet, { hostId: victim, seen: input.seen });
    input.seen.add(report.id);
    const { vm, phases } = phasesOf(report, { vmId, killedAtMs, seenAtMs: killedAtMs + seen.killToRunningMs });
    const c = report.confirmation;
    return {
      ...base,
      status: 'completed',
      killToRunningMs: Math.round(seen.killToRunningMs),
      pollResolutionMs: Math.round(seen.pollResolutionMs),
      runningOn: seen.on,
      failoverId: report.id,
      failoverState: report.state,
      ...(vm ? { outcome: vm.outcome } : {}),
      ...(vm?.targetHostId ? { targetHostId: vm.targetHostId } : {}),
      ...(vm?.durationMs !== undefined ? { reportDurationMs: vm.durationMs } : {}),
      ...(c ? { confirmation: { asked: c.asked, needed: c.needed, accepted: c.accepted } } : {}),
      phases,
    };
  } catch (err) {
    const reports = await failoversOf(fleet, victim).catch(() => []);
    const latest = reports.find((f) => !input.seen.has(f.id));
    if (latest) input.seen.add(latest.id);
    return {
      ...base,
      status: 'failed',
      error: message(err),
      ...(latest ? { failoverId: latest.id, failoverState: latest.state } : {}),
    };
  }
}

/** After a failed run: the victim back, and a guest running on exactly one host, a fresh one if need be. */
async function recover(fleet: Fleet, input: { vmId: string; victim: string; index: number }): Promise<string> {
  await bringBack(fleet, input.victim);
  const on = await runningOn(fleet, input.vmId);
  if (on.length === 1) return input.vmId;
  if (on.length > 1) throw new Error(`the guest runs on ${on.join(', ')} at once`);
  log(`the guest runs nowhere: a fresh one on ${input.victim}`);
  return guestOn(fleet, { hostId: input.victim, name: `failover-bench-${input.index}` });
}

async function measure(fleet: Fleet): Promise<FailoverRunSample[]> {
  const samples: FailoverRunSample[] = [];
  const seen = new Set<string>();
  let vmId = await guestOn(fleet, { hostId: FAILOVER_HOSTS[0]!, name: 'failover-bench' });
  for (let index = 1; index <= RUNS; index++) {
    const victim = await homeOf(fleet, vmId);
    for (const f of await failoversOf(fleet, victim)) seen.add(f.id);
    const sample = await failOver(fleet, { index, vmId, victim, seen });
    samples.push(sample);
    log(
      sample.status === 'completed'
        ? `run ${index}/${RUNS}: ${victim} → ${sample.runningOn!.join(', ')} in ${sample.killToRunningMs} ms ` +
            `(${sample.failoverState}, ${sample.outcome}; ${JSON.stringify(sample.phases)})`
        : `run ${index}/${RUNS}: ${victim} failed: ${sample.error}`,
    );
    if (sample.status === 'completed') {
      await bringBack(fleet, victim);
      continue;
    }
    try {
      vmId = await recover(fleet, { vmId, victim, index });
    } catch (err) {
      // Without a fleet whole again the next run would measure the wreck of this one.
      log(`could not recover after run ${index}: ${message(err)}; stopping`);
      break;
    }
  }
  return samples;
}

async function run(input: BenchRunInput): Promise<{ file: string; publish: boolean }> {
  return withBenchServices(
    { name: 'failover', overrides: OVERRIDES, controlWorker: false },
    async ({ config, cleanups, scratchDir }) => {
      const pool = createPool({ databaseUrl: config.storage.databaseUrl!, applicationName: 'novacron-bench', max: 5 });
      cleanups.add(() => pool.end());
      await migrate(pool);
      const fleet = await startFleet({
        config,
        pool,
        hostIds: FAILOVER_HOSTS,
        scratchDir,
        network: true,
        agentEnv: FAILOVER_AGENT_ENV,
      });
      cleanups.add(() => fleet.stop());
      const runs = await measure(fleet);
      const results: Omit<FailoverResults, 'run'> = {
        benchmark: 'failover',
        hosts: FAILOVER_HOSTS.length,
        domainType: detectDomainType(),
        guest: GUEST,
        runsAsked: RUNS,
        boundMs: FAILOVER_TIMEOUT_MS,
        pollIntervalMs: POLL_INTERVAL_MS,
        settings: settingsOf(config),
        shippedDefaults: settingsOf(configSchema.parse({})),
        goals: GOALS,
        runs,
      };
      const partial = RUNS !== DEFAULT_RUNS;
      const name = partial ? 'failover-partial.json' : 'failover.json';
      const file = await writeResults({ dir: input.outDir, name, recorder: input.recorder, results });
      return { file, publish: !partial };
    },
  );
}

export const failoverBenchmark: Benchmark = {
  name: 'failover',
  run,
  publishedResults: async (outDir) => path.join(outDir, 'failover.json'),
  sections: [
    {
      doc: 'docs/benchmarks.md',
      name: 'failover',
      render: async (file) => renderFailover(file, await readResults<FailoverResults>(file)),
    },
  ],
};
