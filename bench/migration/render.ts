/** The migration benchmark's results file, and the docs/benchmarks.md section written from it. */
import type { MigrationMode, MigrationParameters } from '../../domain/migration';
import { runLine } from '../results';
import type { RunMetadata } from '../run-metadata';
import { percentile } from '../stats';

export type MigrationMethod = 'libvirt-defaults' | 'novacron';
export type GuestLoad = 'idle' | 'busy';
export type LinkKind = 'veth' | 'tbf-100mbit';

export interface NovacronPlanFigures {
  mode: MigrationMode;
  mitigation: string;
  deadlineMs: number;
  parameters: MigrationParameters;
  /** JSON has no Infinity: a prediction with no finite figure holds null. */
  prediction: {
    converges: boolean;
    passes: number;
    totalMs: number | null;
    downtimeMs: number | null;
    bytes: number;
    reason?: string;
  };
  inputs: {
    dirtyRateBytesPerSecond: number;
    linkBandwidthBytesPerSecond: number;
    linkRttMs: number;
    spareCpus?: number;
  };
}

/** From the workflow's history: where its time went around the job. */
export interface WorkflowTimeline {
  totalMs: number;
  /** Start to the recorded plan: target choice, link probe and dirty rate side by side, the plan. */
  planningMs: number;
  /** Lock, slot, source description and target preparation. */
  beforeJobMs: number;
  /** The migrateDomain activity, scheduled to completed. */
  jobActivityMs: number;
  /** Inspecting both hosts, the fenced commit, the source's cleanup and the recorded result. */
  afterJobMs: number;
  activities: Record<string, { count: number; totalMs: number }>;
}

export interface MigrationSample {
  method: MigrationMethod;
  from: string;
  to: string;
  outcome: 'completed' | 'not-converged' | 'failed' | 'refused' | 'cancelled';
  reason?: string;
  /** The driver call (defaults) or the API request to the workflow's result (NovaCron). */
  wallMs: number;
  /** The libvirt migration call's wall time on the source. */
  jobMs?: number;
  /** libvirt's completed-job `time_elapsed`, `downtime`, `data_processed`, `memory_iteration`, `setup_time`. */
  libvirtTotalMs?: number;
  downtimeMs?: number;
  bytes?: number;
  passes?: number;
  setupMs?: number;
  /** A job stopped at its deadline: the newest sample it gave while it ran. */
  lastRunning?: { pass: number; dataRemainingBytes: number };
  workflowMs?: number;
  /** workflowMs − jobMs. */
  overheadMs?: number;
  timeline?: WorkflowTimeline;
  plan?: NovacronPlanFigures;
  escalations?: string[];
  loadAvg1: number;
  /** Whether the guest's heartbeat went on after the migration; a dead guest was replaced before the next one. */
  guestSurvived: boolean;
  guestFailure?: string;
}

/** What a migration measures, before the guest is checked. */
export type MeasuredSample = Omit<MigrationSample, 'guestSurvived' | 'guestFailure'>;

export interface MigrationCaseResult {
  guest: GuestLoad;
  link: LinkKind;
  /** domdirtyrate-calc over 1 s just before the case. */
  dirtyRateBytesPerSecond: number;
  samples: MigrationSample[];
}

export interface MigrationResults {
  run: RunMetadata;
  benchmark: 'migration';
  domainType: string;
  guest: { vcpus: number; memoryMib: number; workingSetMiB: number; dirtyMiBps: Record<GuestLoad, number> };
  repetitions: number;
  linkCapMbit: number;
  /** The deadline both methods run under: the plan's for this guest's memory. */
  deadlineMs: number;
  /** The agents ran inside their hosts' network namespaces, so the plan's link probe crossed the migration's link. */
  agentsInHostNamespaces: boolean;
  /** `profile`: the shipped config's (the datacenter profile pins datacenter); else NOVACRON_DWCP_MODE. */
  agentDwcpMode: string;
  cases: MigrationCaseResult[];
}

const MIB = 1024 * 1024;
const median = (values: number[]): number => percentile(values, 50);
const seconds = (ms: number): string =>
  ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
const spread = (values: number[], unit: (v: number) => string): string => {
  if (values.length === 0) return '–';
  const [lo, hi] = [Math.min(...values), Math.max(...values)];
  return values.length === 1 ? unit(values[0]!) : `${unit(median(values))} (${unit(lo)}–${unit(hi)})`;
};
const mibs = (bytes: number): string => `${(bytes / MIB).toFixed(bytes < 10 * MIB ? 1 : 0)} MiB`;
const pct = (v: number): string => `${v > 0 ? '+' : ''}${Math.round(v)} %`;
const LINK_NAMES: Record<LinkKind, string> = { veth: 'veth, uncapped', 'tbf-100mbit': 'tbf 100 Mbit/s' };

/** The end-to-end time a user waits: the driver call for libvirt's defaults, the workflow for NovaCron. */
export function totalOf(sample: MeasuredSample): number {
  return sample.method === 'novacron' ? (sample.workflowMs ?? sample.wallMs) : sample.wallMs;
}

const completed = (samples: MigrationSample[]) => samples.filter((s) => s.outcome === 'completed');
const pick = (samples: MigrationSample[], key: keyof MigrationSample): number[] =>
  samples.flatMap((s) => (typeof s[key] === 'number' ? [s[key]] : []));

function caseName(c: MigrationCaseResult): string {
  return `${c.guest} (${mibs(c.dirtyRateBytesPerSecond)}/s), ${LINK_NAMES[c.link]}`;
}

function failures(samples: MigrationSample[]): string {
  const failed = samples.filter((s) => s.outcome !== 'completed');
  if (failed.length === 0) return '';
  const left = failed.flatMap((s) =>
    s.lastRunning ? [`${mibs(s.lastRunning.dataRemainingBytes)} left at pass ${s.lastRunning.pass}`] : [],
  );
  const outcomes = [...new Set(failed.map((s) => s.outcome))].join(', ');
  return `; ${failed.length} ${outcomes} after ${spread(pick(failed, 'wallMs'), seconds)}${left.length ? ` (${left.join(', ')})` : ''}`;
}

function deaths(samples: MigrationSample[]): string {
  const died = samples.filter((s) => !s.guestSurvived).length;
  return died === 0 ? '' : `; the guest died after ${died}`;
}

function methodRow(c: MigrationCaseResult, method: MigrationMethod): string {
  const all = c.samples.filter((s) => s.method === method);
  const done = completed(all);
  return [
    caseName(c),
    method === 'novacron' ? 'NovaCron migrateVm' : 'libvirt defaults',
    `${done.length}/${all.length}${failures(all)}${deaths(all)}`,
    spread(done.map(totalOf), seconds),
    spread(pick(done, 'libvirtTotalMs'), seconds),
    spread(pick(done, 'downtimeMs'), seconds),
    spread(pick(done, 'bytes'), mibs),
    spread(pick(done, 'passes'), String),
  ].join(' | ');
}

function planRow(c: MigrationCaseResult): string | undefined {
  const runs = c.samples.filter((s) => s.method === 'novacron' && s.plan);
  const plan = runs[0]?.plan;
  if (!plan) return undefined;
  const p = plan.parameters;
  const params =
    `${plan.mode}: ${p.bandwidthMiBps ? `${p.bandwidthMiBps} MiB/s` : 'unlimited'}, ${p.parallelConnections} ` +
    `stream${p.parallelConnections > 1 ? 's' : ''}, ${p.maxDowntimeMs} ms${p.autoConverge ? ', auto-converge' : ''}` +
    `${plan.mitigation !== 'none' ? `; relies on ${plan.mitigation}` : ''}`;
  const inputs = `dirty ${spread(
    runs.map((s) => s.plan!.inputs.dirtyRateBytesPerSecond),
    (v) => `${mibs(v)}/s`,
  )}; link ${spread(
    runs.map((s) => (s.plan!.inputs.linkBandwidthBytesPerSecond * 8) / 1e6),
    (v) => `${Math.round(v)} Mbit/s`,
  )}, RTT ${spread(
    runs.map((s) => s.plan!.inputs.linkRttMs),
    (v) => `${v.toFixed(1)} ms`,
  )}`;
  const done = completed(runs);
  const error = (predicted: (s: MigrationSample) => number | null, measured: keyof MigrationSample) => {
    const errors = done.flatMap((s) => {
      const want = predicted(s);
      const got = s[measured];
      return want !== null && typeof got === 'number' && got > 0 ? [((want - got) / got) * 100] : [];
    });
    const predictedValues = runs.flatMap((s) => (predicted(s) === null ? [] : [predicted(s)!]));
    if (predictedValues.length === 0) return 'none (no finite prediction)';
    return `${spread(predictedValues, seconds)}; error ${errors.length ? spread(errors, pct) : '–'}`;
  };
  const converges = runs.every((s) => s.plan!.prediction.converges) ? '' : ' (predicted not to converge)';
  const overhead = pick(done, 'overheadMs');
  const planning = done.flatMap((s) => (s.timeline ? [s.timeline.planningMs] : []));
  const rest = done.flatMap((s) =>
    s.timeline && s.overheadMs !== undefined ? [s.overheadMs - s.timeline.planningMs] : [],
  );
  const steps = runs.map((s) => (s.escalations?.length ? s.escalations.join(', ') : 'none'));
  return [
    caseName(c),
    params,
    inputs,
    [...new Set(steps)].join('; '),
    `${error((s) => s.plan!.prediction.totalMs, 'libvirtTotalMs')}${converges}`,
    error((s) => s.plan!.prediction.downtimeMs, 'downtimeMs'),
    spread(overhead, seconds),
    `${spread(planning, seconds)} / ${spread(rest, seconds)}`,
  ].join(' | ');
}

/** libvirt's `setup_time` of the defaults' completed jobs: what the plan's fixed MIGRATION_SETUP_MS stands for. */
function setupLine(r: MigrationResults): string[] {
  const setup = r.cases.flatMap((c) => pick(completed(c.samples), 'setupMs'));
  if (setup.length === 0) return [];
  return [
    `libvirt's own \`setup_time\` in the completed jobs that report it: ${spread(setup, seconds)} over ` +
      `${setup.length} jobs; the plan counts a fixed \`MIGRATION_SETUP_MS\` (domain/migration-plan.ts) for setup, ` +
      'connection and libvirt’s phases beyond the passes and the downtime.',
    '',
  ];
}

/** Migrations after which the guest was dead, by case and method: they say whether a figure is a live guest's. */
function guestDeaths(r: MigrationResults): string[] {
  const dead = r.cases.flatMap((c) => c.samples.filter((s) => !s.guestSurvived).map((s) => ({ c, s })));
  if (dead.length === 0)
    return ['After every migration the guest’s heartbeat went on in its new host’s console log.', ''];
  const total = r.cases.reduce((n, c) => n + c.samples.length, 0);
  const byCase = r.cases.flatMap((c) => {
    const died = c.samples.filter((s) => !s.guestSurvived);
    if (died.length === 0) return [];
    const by = (m: MigrationMethod) => died.filter((s) => s.method === m).length;
    return [
      `${caseName(c)}: ${died.length} (${by('libvirt-defaults')} after libvirt's defaults, ${by('novacron')} after NovaCron's)`,
    ];
  });
  const causes = [...new Set(dead.map(({ s }) => (s.guestFailure ?? '').replace(/ \(on host-\d+\)$/, '')))];
  return [
    `**The guest died after ${dead.length} of ${total} migrations** (its heartbeat stopped; ${causes.join('; ')}): ` +
      `${byCase.join('; ')}. Each dead guest was replaced by a fresh one of the same spec before the next migration, ` +
      'so every sample starts from a live guest; the sample that killed one is counted with its figures.',
    '',
  ];
}

export interface GoalVerdict {
  goal: string;
  figure: string;
  met: boolean | undefined;
}

/** The issue's goals, judged on the run's medians; `met` is undefined where the run has no figure to judge. */
export function goalVerdicts(r: MigrationResults): GoalVerdict[] {
  const verdicts: GoalVerdict[] = [];
  for (const c of r.cases) {
    const runs = (m: MigrationMethod) => c.samples.filter((s) => s.method === m);
    const nova = completed(runs('novacron'));
    const defaults = runs('libvirt-defaults');
    if (c.guest === 'busy') {
      const ours = nova.length ? median(nova.map(totalOf)) : undefined;
      const theirsDone = completed(defaults);
      let figure: string;
      let met: boolean | undefined;
      if (ours === undefined) {
        figure = `NovaCron completed none of ${runs('novacron').length}`;
        met = false;
      } else if (theirsDone.length === 0) {
        figure = `NovaCron ${seconds(ours)}; libvirt's defaults completed none of ${defaults.length} within ${seconds(r.deadlineMs)}`;
        met = true;
      } else {
        const theirs = median(theirsDone.map(totalOf));
        const jobs = median(pick(nova, 'jobMs'));
        figure =
          `${(theirs / ours).toFixed(2)}× end to end (${seconds(theirs)} against ${seconds(ours)}); ` +
          `${(theirs / jobs).toFixed(2)}× job against job`;
        met = theirs / ours >= 1.5;
      }
      verdicts.push({ goal: `≥ 1.5× faster than libvirt's defaults, ${caseName(c)}`, figure, met });
    }
    const downtimes = pick(nova, 'downtimeMs');
    verdicts.push({
      goal: `downtime ≤ 300 ms, ${caseName(c)}`,
      figure: downtimes.length ? `max ${seconds(Math.max(...downtimes))}, median ${seconds(median(downtimes))}` : '–',
      met: downtimes.length ? Math.max(...downtimes) <= 300 : undefined,
    });
    const overhead = pick(nova, 'overheadMs');
    verdicts.push({
      goal: `orchestration overhead < 300 ms, ${caseName(c)}`,
      figure: overhead.length ? `median ${seconds(median(overhead))}` : '–',
      met: overhead.length ? median(overhead) < 300 : undefined,
    });
    const errors = nova.flatMap((s) =>
      s.plan?.prediction.totalMs != null && s.libvirtTotalMs
        ? [((s.plan.prediction.totalMs - s.libvirtTotalMs) / s.libvirtTotalMs) * 100]
        : [],
    );
    const unconverged = nova.some((s) => s.plan && !s.plan.prediction.converges)
      ? ' (the plan predicted no convergence without its mitigation)'
      : '';
    verdicts.push({
      goal: `predicted total within 25 %, ${caseName(c)}`,
      figure: errors.length ? `median error ${pct(median(errors))}${unconverged}` : 'no completed migration to compare',
      met: errors.length ? Math.abs(median(errors)) <= 25 : undefined,
    });
  }
  return verdicts;
}

const verdictText = (met: boolean | undefined): string => (met === undefined ? 'no figure' : met ? 'met' : 'not met');

export function renderMigration(file: string, r: MigrationResults): string {
  const loaded = Math.max(...r.run.loadAverage.start, ...r.run.loadAverage.end) > r.run.machine.cpus;
  const rows = r.cases.flatMap((c) => [methodRow(c, 'libvirt-defaults'), methodRow(c, 'novacron')]);
  const plans = r.cases.flatMap((c) => planRow(c) ?? []);
  return [
    runLine({ file, run: r.run }),
    '',
    ...(loaded
      ? [
          `**The machine was loaded during this run** (load average above its ${r.run.machine.cpus} cores, other ` +
            'work running beside it): the figures are what a busy host gives, and a rerun on a quiet machine is due.',
          '',
        ]
      : []),
    `Two harness hosts (${r.domainType}) with network namespaces and links of their own, ` +
      `${r.agentsInHostNamespaces ? "each host's agent inside its host's namespace (so the plan's link probe crosses the migration's link)" : 'agents in the root namespace'}, ` +
      `${r.agentDwcpMode === 'profile' ? 'with the shipped config, whose datacenter profile pins the mode to datacenter whatever the probe finds' : `with dwcp.mode ${r.agentDwcpMode}`}; ` +
      `one test guest (${r.guest.vcpus} vCPU, ${r.guest.memoryMib} MiB) on the shared pool, idle ` +
      `(${r.guest.dirtyMiBps.idle} MiB/s asked) and busy (${r.guest.dirtyMiBps.busy} MiB/s asked over a ` +
      `${r.guest.workingSetMiB} MiB working set; the rate in each row is domdirtyrate-calc's). Each case runs ` +
      `${r.repetitions} migrations per method, interleaved, alternating direction, on the uncapped veth pairs through ` +
      `the bridge and with both hosts' links capped at ${r.linkCapMbit} Mbit/s by tc tbf. libvirt's defaults: ` +
      '`virsh migrate --live --p2p` with nothing set (only `--unsafe` for the harness disks and the target’s own ' +
      `console log path), bounded by the same ${seconds(r.deadlineMs)} deadline NovaCron's plan gives this guest. ` +
      'NovaCron: `POST /v1/vms/:id/migrate` with the default policy. Total: the driver call for the defaults, the ' +
      "workflow's own time for NovaCron; libvirt job, downtime, bytes and passes are libvirt's completed-job figures. " +
      'Figures are median (min–max), medians by nearest rank.',
    '',
    '| case | method | completed | total | libvirt job | downtime | on the wire | passes |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((row) => `| ${row} |`),
    '',
    ...setupLine(r),
    "The plan against what happened (NovaCron's runs): predicted total against libvirt's `time_elapsed`, predicted " +
      'downtime against libvirt’s `downtime`, error = (predicted − measured) / measured. Overhead = workflow time − ' +
      'the libvirt migration call, split into planning (the link probe and dirty-rate measurement, side by side, ' +
      'and the plan) and the rest (lock, slot, target preparation, commit, the result).',
    '',
    '| case | plan | plan inputs | convergence control | predicted total | predicted downtime | overhead | planning / rest |',
    '| --- | --- | --- | --- | --- | --- | ---: | ---: |',
    ...plans.map((row) => `| ${row} |`),
    '',
    ...guestDeaths(r),
    '| goal | this run | verdict |',
    '| --- | --- | --- |',
    ...goalVerdicts(r).map((v) => `| ${v.goal} | ${v.figure} | ${verdictText(v.met)} |`),
  ].join('\n');
}
