/** The host failover benchmark's results file, and the docs/benchmarks.md section written from it. */
import type { FailoverState, FailoverVmOutcome } from '../../store/failovers';
import { runLine } from '../results';
import type { LoadAverage, RunMetadata } from '../run-metadata';
import { percentile } from '../stats';

/** The failover settings a run used, or the shipped ones it is set against. */
export interface FailoverSettings {
  leaseTtlSeconds: number;
  heartbeatIntervalMs: number;
  selfFenceMarginMs: number;
  graceMs: number;
  monitorIntervalMs: number;
  witnessProbeTimeoutMs: number;
}

/** Where the time went, from the failover report's timestamps and the kill's wall-clock time. */
export interface FailoverPhases {
  /** Kill → the lease's expiry (`suspectedAt`). */
  killToExpiryMs: number;
  /** Expiry → the host monitor opening the failover (`startedAt`): its tick. */
  expiryToStartedMs: number;
  /** Expiry → `confirmation.confirmedAt`: the grace, then the witnesses' votes. */
  expiryToConfirmedMs?: number;
  /** Expiry → `graceEndedAt`. */
  expiryToGraceEndedMs?: number;
  /** `graceEndedAt` → `confirmedAt`: the witnesses alone. */
  votesMs?: number;
  confirmedToFencedMs?: number;
  /** `fencedAt` → the guest's `restartedAt`: relocation and start on the target. */
  fencedToRestartedMs?: number;
  /** `restartedAt` → the benchmark's poll seeing it running, within the poll's resolution. */
  restartedToSeenMs?: number;
}

export interface FailoverRunSample {
  /** 1-based, in the order run. */
  index: number;
  victimHostId: string;
  vmId: string;
  killedAt: string;
  /** The load average just before the kill. */
  loadAverage: LoadAverage;
  status: 'completed' | 'failed';
  error?: string;
  /** Kill → libvirt showing the guest running on another host, on the monotonic clock. */
  killToRunningMs?: number;
  /** Start of the last poll that did not see it → end of the one that did: how precise killToRunningMs is. */
  pollResolutionMs?: number;
  /** Where libvirt showed it running. */
  runningOn?: string[];
  failoverId?: string;
  failoverState?: FailoverState;
  /** The report's outcome for this guest. */
  outcome?: FailoverVmOutcome['outcome'];
  targetHostId?: string;
  /** The report's own figure: restartedAt − suspectedAt. */
  reportDurationMs?: number;
  confirmation?: { asked: number; needed: number; accepted: number };
  phases?: FailoverPhases;
}

export interface FailoverResults {
  run: RunMetadata;
  benchmark: 'failover';
  hosts: number;
  domainType: string;
  guest: { vcpus: number; memoryMib: number; diskMib: number; storagePool: string };
  runsAsked: number;
  /** A run with no guest running elsewhere within this is recorded as failed. */
  boundMs: number;
  /** How long the benchmark sleeps between polls of libvirt on every host. */
  pollIntervalMs: number;
  settings: FailoverSettings;
  shippedDefaults: FailoverSettings;
  goals: { p50Ms: number; p99Ms: number };
  runs: FailoverRunSample[];
}

const seconds = (ms: number): string =>
  ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
const knownMs = (ms: number): string => (Number.isFinite(ms) ? seconds(ms) : 'failed');
const completed = (r: FailoverResults) => r.runs.filter((s) => s.status === 'completed');

/** Failed runs count as slower than any bound: a percentile that lands on one is not met. */
export function totals(r: FailoverResults): number[] {
  return r.runs.map((s) => (s.status === 'completed' ? s.killToRunningMs! : Number.POSITIVE_INFINITY));
}

const setting = (ms: number): string => (ms < 1000 ? `${ms} ms` : `${ms / 1000} s`);

export function settingsText(s: FailoverSettings): string {
  return (
    `lease TTL ${s.leaseTtlSeconds} s, heartbeat ${setting(s.heartbeatIntervalMs)}, self-fence margin ` +
    `${setting(s.selfFenceMarginMs)}, grace ${setting(s.graceMs)}, monitor tick ${setting(s.monitorIntervalMs)}, ` +
    `witness probe timeout ${setting(s.witnessProbeTimeoutMs)}`
  );
}

/** Nearest rank: the rank p99 falls on, so the docs can say when it is simply the slowest run. */
const p99Rank = (n: number): number => Math.max(1, Math.ceil(0.99 * n));

export interface GoalVerdict {
  goal: string;
  figure: string;
  met: boolean | undefined;
}

export function goalVerdicts(r: FailoverResults): GoalVerdict[] {
  const values = totals(r);
  const failed = r.runs.length - completed(r).length;
  const ofRuns = `over ${r.runs.length} runs${failed ? `, ${failed} failed` : ''}`;
  const judge = (p: 50 | 99, goalMs: number): GoalVerdict => {
    const goal = `kill → guest running elsewhere under ${seconds(goalMs)} at p${p}`;
    if (values.length === 0) return { goal, figure: 'no runs', met: undefined };
    const figure = percentile(values, p);
    const rank = p === 99 && p99Rank(values.length) === values.length ? ' (the slowest run)' : '';
    return { goal, figure: `p${p} ${knownMs(figure)}${rank} ${ofRuns}`, met: figure < goalMs };
  };
  return [judge(50, r.goals.p50Ms), judge(99, r.goals.p99Ms)];
}

const verdictText = (met: boolean | undefined): string => (met === undefined ? 'no figure' : met ? 'met' : 'not met');

const PHASES: Array<{ key: keyof FailoverPhases; what: string }> = [
  { key: 'killToExpiryMs', what: 'kill → lease expiry (`suspectedAt`)' },
  { key: 'expiryToStartedMs', what: 'lease expiry → failover opened by the host monitor (`startedAt`)' },
  { key: 'expiryToConfirmedMs', what: 'lease expiry → confirmed (`confirmedAt`): the grace, then the votes' },
  { key: 'expiryToGraceEndedMs', what: 'of which lease expiry → grace over (`graceEndedAt`)' },
  { key: 'votesMs', what: 'of which grace over → confirmed: the witnesses' },
  { key: 'confirmedToFencedMs', what: 'confirmed → fenced (`fencedAt`)' },
  { key: 'fencedToRestartedMs', what: 'fenced → guest started on the target (`restartedAt`)' },
  { key: 'restartedToSeenMs', what: '`restartedAt` → the poll seeing it running' },
];

function row(what: string, values: number[]): string {
  if (values.length === 0) return `| ${what} | 0 | – | – | – | – |`;
  return (
    `| ${what} | ${values.length} | ${seconds(percentile(values, 50))} | ${seconds(percentile(values, 99))} | ` +
    `${seconds(Math.min(...values))} | ${seconds(Math.max(...values))} |`
  );
}

function phaseRows(r: FailoverResults): string[] {
  const done = completed(r);
  const total = done.map((s) => s.killToRunningMs!);
  return [
    row('**kill → libvirt shows the guest running on another host**', total),
    ...PHASES.map(({ key, what }) =>
      row(
        what,
        done.flatMap((s) => (typeof s.phases?.[key] === 'number' ? [s.phases[key]] : [])),
      ),
    ),
    row(
      "the report's own `durationMs` (restartedAt − suspectedAt)",
      done.flatMap((s) => s.reportDurationMs ?? []),
    ),
  ];
}

function runRow(s: FailoverRunSample): string {
  const target = s.runningOn?.length ? s.runningOn.join(', ') : '–';
  const votes = s.confirmation ? `${s.confirmation.accepted}/${s.confirmation.needed}` : '–';
  const p = s.phases;
  const phase = (v: number | undefined) => (v === undefined ? '–' : seconds(v));
  return [
    s.index,
    `${s.victimHostId} → ${target}`,
    s.status === 'completed' ? seconds(s.killToRunningMs!) : `failed: ${s.error ?? 'no reason recorded'}`,
    phase(p?.killToExpiryMs),
    phase(p?.expiryToConfirmedMs),
    phase(p?.confirmedToFencedMs),
    phase(p?.fencedToRestartedMs),
    `${s.failoverState ?? '–'} / ${s.outcome ?? '–'}`,
    votes,
    s.loadAverage.map((v) => v.toFixed(2)).join(' / '),
  ].join(' | ');
}

/** What the shipped settings would change, from their difference alone: they were not run. */
function defaultsText(r: FailoverResults): string {
  const d = r.shippedDefaults;
  const s = r.settings;
  const ttlMs = (d.leaseTtlSeconds - s.leaseTtlSeconds) * 1000;
  const graceMs = d.graceMs - s.graceMs;
  return (
    `**The shipped defaults were not measured.** They are ${settingsText(d)}. The lease's expiry and the grace ` +
    `lie on the path of every failover, so those defaults would add about the difference in TTL and grace, ` +
    `${seconds(ttlMs)} + ${seconds(graceMs)} = ${seconds(ttlMs + graceMs)}, to every figure above; the slower ` +
    'heartbeat and monitor tick move when within those the lease is last renewed and the expiry is seen. With a ' +
    `${d.leaseTtlSeconds} s lease renewed every ${seconds(d.heartbeatIntervalMs)}, the lease expires at least ` +
    `${seconds(d.leaseTtlSeconds * 1000 - d.heartbeatIntervalMs)} after the kill, and nothing restarts before it.`
  );
}

export function renderFailover(file: string, r: FailoverResults): string {
  // The fleet itself loads the machine while it runs: only the load before it started says other work was there.
  const loaded = r.run.loadAverage.start[0] > r.run.machine.cpus;
  const failed = r.runs.filter((s) => s.status === 'failed');
  const resolution = completed(r).flatMap((s) => s.pollResolutionMs ?? []);
  const n = r.runs.length;
  return [
    runLine({ file, run: r.run }),
    '',
    ...(loaded
      ? [
          `**The machine was loaded when this run started** (1-minute load average ${r.run.loadAverage.start[0]} ` +
            `on ${r.run.machine.cpus} cores before the fleet started): the figures are what a busy host gives, and ` +
            'a rerun on a quiet machine is due.',
          '',
        ]
      : []),
    `${r.hosts} harness hosts (${r.domainType}) with network namespaces of their own, each agent inside its host's, ` +
      `failover on, with ${settingsText(r.settings)}. One HA guest (${r.guest.vcpus} vCPU, ${r.guest.memoryMib} MiB, ` +
      `a blank ${r.guest.diskMib} MiB disk on the \`${r.guest.storagePool}\` pool). Each run SIGKILLs the agent of ` +
      "the host the guest runs on and, at the same instant, destroys that host's running guests through its " +
      "libvirtd; the host's libvirtd stays up, as a harness host cannot be restarted alone, so the witnesses reach " +
      'it and see no guest running. The integration test (test/integration/host-failover.test.ts) kills the whole ' +
      'host, libvirtd included, and checks the outcome, not the time. The time runs from the kill to libvirt ' +
      `showing the guest running on another host (libvirt polled on every host every ${r.pollIntervalMs} ms plus ` +
      `the listing's own time, median resolution ${resolution.length ? seconds(percentile(resolution, 50)) : '–'}; ` +
      'monotonic clock); the phases come from the failover report (`GET /v1/hosts/:id/failovers`) against the ' +
      "kill's wall-clock time. Then the victim's agent is restarted and the fenced host readmitted, and the next " +
      `run kills the host the guest now runs on. ${r.runsAsked} runs asked, ${n} run; a run with no guest running ` +
      `elsewhere within ${seconds(r.boundMs)} is recorded as failed. Percentiles by nearest rank` +
      (n > 0 && p99Rank(n) === n ? `: with ${n} runs, p99 is the slowest run.` : '.'),
    '',
    '| measure | n | p50 | p99 | min | max |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...phaseRows(r),
    '',
    ...(failed.length
      ? [
          `**${failed.length} of ${n} runs failed**: ${failed.map((s) => `run ${s.index} (${s.victimHostId}): ${s.error}`).join('; ')}.`,
          '',
        ]
      : []),
    '| run | victim → running on | kill → running | kill → expiry | expiry → confirmed | confirmed → fenced | fenced → restarted | failover / guest outcome | votes accepted / needed | load average at the kill (1, 5, 15 min) |',
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |',
    ...r.runs.map((s) => `| ${runRow(s)} |`),
    '',
    '| goal | this run | settings | verdict |',
    '| --- | --- | --- | --- |',
    ...goalVerdicts(r).map((v) => `| ${v.goal} | ${v.figure} | ${settingsText(r.settings)} | ${verdictText(v.met)} |`),
    '',
    defaultsText(r),
  ].join('\n');
}
