/** The fleet benchmark's results file, and the docs/benchmarks.md section written from it. */
import { runLine } from '../results';
import type { RunMetadata } from '../run-metadata';
import type { Summary } from '../stats';

export type Sampled = Summary & { samples: number[] };

export interface FleetResults {
  run: RunMetadata;
  benchmark: 'fleet';
  hosts: number;
  domainType: string;
  settings: {
    leaseTtlSeconds: number;
    heartbeatIntervalMs: number;
    monitorIntervalMs: number;
    stalenessBoundMs: number;
  };
  drift: {
    rounds: number;
    loadAvg1AtStart: number;
    stateMismatchMs: Sampled;
    missingVmMs: Sampled;
    unknownVmMs: Sampled;
  };
  lease: { rounds: number; loadAvg1AtStart: number; downAfterKillMs: Sampled; upAfterRestartMs: Sampled };
  bulk: {
    vms: number;
    guest: { vcpus: number; memoryMib: number; disks: Array<{ name: string; sizeMib: number }> };
    allRunningMs: number;
    allDeletedMs: number;
    perHost: Record<string, number>;
    stepMs: Record<string, Summary>;
    loadAvg1: { atStart: number; afterCreate: number; afterDelete: number };
  };
}

/** Milliseconds under a second, then seconds to the precision the figure can bear. */
const seconds = (ms: number): string =>
  ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
const row = (what: string, s: Summary): string =>
  `| ${what} | ${s.n} | ${seconds(s.p50)} | ${seconds(s.min)} | ${seconds(s.max)} |`;

export function renderFleet(file: string, r: FleetResults): string {
  const { settings, drift, lease, bulk } = r;
  const steps = Object.entries(bulk.stepMs).map(([name, s]) => `${name} ${seconds(s.p50)} / ${seconds(s.max)}`);
  return [
    runLine({ file, run: r.run }),
    '',
    `${r.hosts} harness hosts (${r.domainType}), each with its host agent as a separate process, a control worker ` +
      `and the API on this machine; lease TTL ${settings.leaseTtlSeconds} s, heartbeat every ` +
      `${settings.heartbeatIntervalMs} ms, monitor tick ${settings.monitorIntervalMs} ms, staleness bound ` +
      `${settings.stalenessBoundMs / 1000} s. Drift latency runs from just before the \`virsh\` call to the ` +
      "finding's `detectedAt`; host down, from the agent's SIGKILL to the API showing the host `down`.",
    '',
    '| measure | n | p50 | min | max |',
    '| --- | ---: | ---: | ---: | ---: |',
    row('drift: guest destroyed behind NovaCron’s back → `state-mismatch` recorded', drift.stateMismatchMs),
    row('drift: guest undefined → `missing-vm` recorded', drift.missingVmMs),
    row('drift: guest defined on another host → `unknown-vm` recorded', drift.unknownVmMs),
    row('agent SIGKILLed → host `down`', lease.downAfterKillMs),
    row('agent restarted → host `up` with a new lease and inventory', lease.upAfterRestartMs),
    '',
    `1-minute load average when the drift rounds started: ${drift.loadAvg1AtStart}; when the agent kills started: ` +
      `${lease.loadAvg1AtStart}.`,
    '',
    `${bulk.vms} VMs (${bulk.guest.vcpus} vCPU, ${bulk.guest.memoryMib} MiB, a ${bulk.guest.disks[0]?.sizeMib ?? 0} MiB ` +
      `qcow2 disk, no OS) requested at once through the API: all running ${seconds(bulk.allRunningMs)} after the ` +
      `first request, placed ${Object.values(bulk.perHost).join(' / ')} per host; all deleted at once in ` +
      `${seconds(bulk.allDeletedMs)}. vmCreate step p50 / max: ${steps.join(', ')}. 1-minute load average ` +
      `${bulk.loadAvg1.atStart} before the burst, ${bulk.loadAvg1.afterCreate} once all ran, ` +
      `${bulk.loadAvg1.afterDelete} after the deletes.`,
  ].join('\n');
}
