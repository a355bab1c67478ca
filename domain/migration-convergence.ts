/**
 * Convergence control of a running pre-copy migration: it reads libvirt's job samples and decides when to raise the
 * max downtime, when to wait on QEMU's auto-converge throttle, when to switch to post-copy and when to abort.
 *
 * It judges only at pass boundaries, on the data remaining as a new pass begins. Within a pass that figure falls as
 * pages go out and jumps back at the next bitmap sync; Nova judged progress on that saw-tooth, failed migrations
 * that were still progressing (bug 1644248) and dropped its detector. VDSM counts QEMU passes and KubeVirt's VEP 248
 * samples at iteration boundaries; this follows them. Pure data in, pure data out: the workflow holds the state.
 */
import type {
  MigrationEscalation,
  MigrationJobSample,
  MigrationPlan,
  MigrationPolicy,
  MigrationProgress,
} from './migration';
import { mib, mibPerSecond } from './migration-plan';

/** A pass gains when the remainder falls by this much below the best so far (KubeVirt VEP 248's 4 %). */
export const PASS_GAIN_FRACTION = 0.04;

/** Each raise multiplies the max downtime by this, up to the policy's ceiling. */
export const DOWNTIME_STEP_FACTOR = 2;

/**
 * Passes beyond policy.stallPasses that auto-converge gets before the next step: QEMU raises its throttle only after
 * two bitmap syncs in a row above its trigger, so a throttle that has not risen for that long has stopped rising.
 */
export const AUTO_CONVERGE_GRACE_PASSES = 2;

export type ConvergenceStage = 'raising-downtime' | 'auto-converging' | 'post-copy' | 'aborted';

/** Plain data, so a workflow can keep it in its state and a query can show it. */
export interface ConvergenceState {
  stage: ConvergenceStage;
  startedAtMs: number;
  deadlineMs: number;
  downtimeMs: number;
  downtimeCeilingMs: number;
  stallPasses: number;
  autoConvergeArmed: boolean;
  postCopyArmed: boolean;
  /** The pass of the last boundary judged; unset before the first sample of a running job. */
  pass?: number;
  bestRemainingBytes?: number;
  /** The newest sample's figures, from which the next pass's boundary is reconstructed. */
  lastSeen?: { pass: number; processedBytes: number; remainingBytes: number };
  passesWithoutGain: number;
  /** QEMU's throttle at the last boundary, to tell a rising one. */
  throttlePercent: number;
  throttleRecorded: boolean;
  escalations: MigrationEscalation[];
}

export type ConvergenceAction =
  | { kind: 'set-downtime'; downtimeMs: number; escalation: MigrationEscalation }
  /** QEMU's auto-converge throttle seen for the first time: nothing to do but record it. */
  | { kind: 'record'; escalation: MigrationEscalation }
  | { kind: 'start-post-copy'; escalation: MigrationEscalation }
  | { kind: 'abort'; escalation: MigrationEscalation };

export interface ConvergenceStep {
  state: ConvergenceState;
  actions: ConvergenceAction[];
}

export function createConvergenceState(input: {
  plan: MigrationPlan;
  policy: MigrationPolicy;
  startedAtMs: number;
}): ConvergenceState {
  const { plan, policy } = input;
  return {
    stage: 'raising-downtime',
    startedAtMs: input.startedAtMs,
    deadlineMs: plan.deadlineMs,
    downtimeMs: plan.parameters.maxDowntimeMs,
    downtimeCeilingMs: Math.max(policy.downtimeCeilingMs, plan.parameters.maxDowntimeMs),
    stallPasses: policy.stallPasses,
    autoConvergeArmed: plan.parameters.autoConverge,
    postCopyArmed: plan.parameters.postCopy,
    passesWithoutGain: 0,
    throttlePercent: 0,
    throttleRecorded: false,
    escalations: [],
  };
}

type EscalationFields = Pick<MigrationEscalation, 'kind' | 'reason'> & { value?: number };

function escalation(
  state: ConvergenceState,
  sample: MigrationJobSample,
  nowMs: number,
  fields: EscalationFields,
): MigrationEscalation {
  const step: MigrationEscalation = {
    seq: state.escalations.length + 1,
    kind: fields.kind,
    pass: sample.pass,
    dataRemainingBytes: sample.dataRemainingBytes,
    reason: fields.reason,
    atMs: nowMs,
  };
  if (fields.value !== undefined) step.value = fields.value;
  return step;
}

function seconds(ms: number): string {
  return `${Math.round(ms / 1000)} s`;
}

/** The figures every stall reason carries: what is left, the best seen, and what the downtime lets through. */
function stallFigures(state: ConvergenceState, sample: MigrationJobSample): string {
  const rate = sample.memoryBytesPerSecond;
  const fits = (rate * state.downtimeMs) / 1000;
  return (
    `${mib(sample.dataRemainingBytes)} left at pass ${sample.pass} (best ${mib(state.bestRemainingBytes ?? 0)}), ` +
    `no ${Math.round(PASS_GAIN_FRACTION * 100)} % gain for ${state.passesWithoutGain} passes; ` +
    `the ${state.downtimeMs} ms downtime lets ${mib(fits)} through at ${mibPerSecond(rate)}, ` +
    `the guest dirties ${mibPerSecond(sample.memoryDirtyRateBytesPerSecond)}`
  );
}

/** The next step of the ladder, once a stage has run out of passes without gain. */
function escalate(state: ConvergenceState, sample: MigrationJobSample, nowMs: number): ConvergenceStep {
  const figures = stallFigures(state, sample);
  if (state.stage === 'raising-downtime' && state.downtimeMs < state.downtimeCeilingMs) {
    const downtimeMs = Math.min(state.downtimeCeilingMs, Math.round(state.downtimeMs * DOWNTIME_STEP_FACTOR));
    const step = escalation(state, sample, nowMs, {
      kind: 'raise-downtime',
      value: downtimeMs,
      reason: `${figures}: max downtime ${state.downtimeMs} → ${downtimeMs} ms`,
    });
    return {
      state: { ...state, downtimeMs, passesWithoutGain: 0, escalations: [...state.escalations, step] },
      actions: [{ kind: 'set-downtime', downtimeMs, escalation: step }],
    };
  }
  if (state.stage === 'raising-downtime' && state.autoConvergeArmed) {
    // QEMU throttles on its own once pre-copy struggles: the step is to give it passes, not to send anything.
    return { state: { ...state, stage: 'auto-converging', passesWithoutGain: 0 }, actions: [] };
  }
  const throttled = state.throttlePercent > 0 ? `, with the guest throttled to ${state.throttlePercent} %` : '';
  const stalled = `pre-copy stalled at the ${state.downtimeCeilingMs} ms ceiling${throttled}: ${figures}`;
  if (state.postCopyArmed) {
    const step = escalation(state, sample, nowMs, { kind: 'post-copy', reason: `${stalled}; switching to post-copy` });
    return {
      state: { ...state, stage: 'post-copy', escalations: [...state.escalations, step] },
      actions: [{ kind: 'start-post-copy', escalation: step }],
    };
  }
  const allows = state.autoConvergeArmed ? 'no post-copy' : 'neither auto-converge nor post-copy';
  const step = escalation(state, sample, nowMs, { kind: 'abort', reason: `${stalled}; the policy allows ${allows}` });
  return {
    state: { ...state, stage: 'aborted', escalations: [...state.escalations, step] },
    actions: [{ kind: 'abort', escalation: step }],
  };
}

/**
 * The remainder as the sample's pass began. A sample lands at the poll's pace, seconds into a pass on a slow link or
 * a loaded worker, when the pass has already sent part of what its sync found: read as the boundary, that sent part
 * looked like a gain, and a sample taken near a pass's end set a best remainder no real boundary would reach again
 * (seen on libvirt at 8 MiB/s: 2.5 MiB "left at pass 6" of a guest whose passes each began with 30 MiB). When the
 * previous sample was of the pass just before, that pass still had to send what it had left, so everything sent
 * beyond that belongs to this pass: remaining now plus that is what it began with. Zero pages cost almost nothing
 * on the wire, so the correction may fall short (never over): further back there is nothing to go on.
 */
export function boundaryRemainingBytes(
  lastSeen: ConvergenceState['lastSeen'],
  sample: Pick<MigrationJobSample, 'pass' | 'dataProcessedBytes' | 'dataRemainingBytes'>,
): number {
  if (!lastSeen || lastSeen.pass !== sample.pass - 1) return sample.dataRemainingBytes;
  const sentThisPass = sample.dataProcessedBytes - lastSeen.processedBytes - lastSeen.remainingBytes;
  return sample.dataRemainingBytes + Math.max(0, sentThisPass);
}

/** Judges one pass boundary: tracks the best remainder and counts the passes that did not gain on it. */
function judgeBoundary(state: ConvergenceState, sample: MigrationJobSample, nowMs: number): ConvergenceStep {
  const remaining = sample.dataRemainingBytes;
  const throttle = sample.autoConvergeThrottlePercent ?? 0;
  const judged = { ...state, pass: sample.pass, throttlePercent: throttle };
  if (state.pass === undefined || state.bestRemainingBytes === undefined) {
    return { state: { ...judged, bestRemainingBytes: remaining }, actions: [] };
  }
  const gained = remaining <= state.bestRemainingBytes * (1 - PASS_GAIN_FRACTION);
  const throttleRose = state.stage === 'auto-converging' && throttle > state.throttlePercent;
  if (gained || throttleRose) {
    const best = Math.min(state.bestRemainingBytes, remaining);
    return { state: { ...judged, bestRemainingBytes: best, passesWithoutGain: 0 }, actions: [] };
  }
  // Several passes between two samples are several passes without gain: the count is in QEMU passes, as VDSM's.
  const stalled = {
    ...judged,
    bestRemainingBytes: Math.min(state.bestRemainingBytes, remaining),
    passesWithoutGain: state.passesWithoutGain + (sample.pass - state.pass),
  };
  const allowed = state.stallPasses + (state.stage === 'auto-converging' ? AUTO_CONVERGE_GRACE_PASSES : 0);
  return stalled.passesWithoutGain >= allowed ? escalate(stalled, sample, nowMs) : { state: stalled, actions: [] };
}

/**
 * One job sample. The deadline (plan.deadlineMs after startedAtMs) switches to post-copy when the policy armed it, as
 * KubeVirt does past its completion timeout: a rising auto-converge throttle counts as progress, so a guest that
 * rewrites its working set faster than a pass can keep the ladder from ever reaching post-copy on its own. Without
 * post-copy the deadline aborts, in any stage but post-copy: there the target already runs the guest and the source
 * holds pages it still lacks, so aborting would lose the guest; QEMU finishes post-copy at the link's pace, and
 * KubeVirt likewise never aborts it.
 */
export function observeJobSample(
  state: ConvergenceState,
  input: { sample: MigrationJobSample; nowMs: number },
): ConvergenceStep {
  const { sample, nowMs } = input;
  if (state.stage === 'aborted' || state.stage === 'post-copy' || sample.state !== 'running') {
    return { state, actions: [] };
  }
  if (sample.phase === 'postcopy') return { state: { ...state, stage: 'post-copy' }, actions: [] };
  const actions: ConvergenceAction[] = [];
  let next = state;
  const throttle = sample.autoConvergeThrottlePercent ?? 0;
  if (throttle > 0 && !next.throttleRecorded) {
    const step = escalation(next, sample, nowMs, {
      kind: 'auto-converge',
      value: throttle,
      reason:
        `QEMU throttles the guest's vCPUs to ${throttle} % to slow its dirtying ` +
        `(${mibPerSecond(sample.memoryDirtyRateBytesPerSecond)} against ${mibPerSecond(sample.memoryBytesPerSecond)} ` +
        `sent), ${mib(sample.dataRemainingBytes)} left at pass ${sample.pass}`,
    });
    next = { ...next, throttleRecorded: true, escalations: [...next.escalations, step] };
    actions.push({ kind: 'record', escalation: step });
  }
  const elapsedMs = nowMs - next.startedAtMs;
  if (elapsedMs >= next.deadlineMs) {
    const passed =
      `the ${seconds(next.deadlineMs)} completion deadline passed (${seconds(elapsedMs)} since the start) ` +
      `with ${mib(sample.dataRemainingBytes)} left at pass ${sample.pass}`;
    if (next.postCopyArmed) {
      const step = escalation(next, sample, nowMs, { kind: 'post-copy', reason: `${passed}; switching to post-copy` });
      next = { ...next, stage: 'post-copy', escalations: [...next.escalations, step] };
      return { state: next, actions: [...actions, { kind: 'start-post-copy', escalation: step }] };
    }
    const step = escalation(next, sample, nowMs, { kind: 'abort', reason: passed });
    next = { ...next, stage: 'aborted', escalations: [...next.escalations, step] };
    return { state: next, actions: [...actions, { kind: 'abort', escalation: step }] };
  }
  // Pass 0 is QEMU's setup, before its first bitmap sync: libvirt then reports nothing remaining. Taken as the first
  // boundary, that 0 became the best remainder, which no later pass could gain on: every pass was a stall.
  if (sample.pass < 1) return { state: next, actions };
  const lastSeen = {
    pass: sample.pass,
    processedBytes: sample.dataProcessedBytes,
    remainingBytes: sample.dataRemainingBytes,
  };
  if (next.pass !== undefined && sample.pass <= next.pass) {
    return { state: sample.pass === next.pass ? { ...next, lastSeen } : next, actions };
  }
  const atBoundary = { ...sample, dataRemainingBytes: boundaryRemainingBytes(next.lastSeen, sample) };
  const judged = judgeBoundary(next, atBoundary, nowMs);
  return { state: { ...judged.state, lastSeen }, actions: [...actions, ...judged.actions] };
}

/**
 * Time left, from the remainder and the rate it goes out at. In pre-copy the guest dirties pages behind the copy,
 * and a geometric series of passes, each sending what the last one let the guest dirty, sums to remaining ÷
 * (throughput − dirty rate); undefined when the guest dirties as fast as the link sends. Post-copy sends each page
 * once. `recentThroughputBytesPerSecond`, when the caller has measured one, replaces QEMU's instantaneous rate.
 */
export function migrationEtaMs(input: {
  sample: MigrationJobSample;
  recentThroughputBytesPerSecond?: number;
}): number | undefined {
  const { sample } = input;
  if (sample.state === 'completed') return 0;
  if (sample.state !== 'running') return undefined;
  const throughput = input.recentThroughputBytesPerSecond ?? sample.memoryBytesPerSecond;
  const net = sample.phase === 'postcopy' ? throughput : throughput - sample.memoryDirtyRateBytesPerSecond;
  if (!(net > 0)) return undefined;
  return Math.round((sample.dataRemainingBytes / net) * 1000);
}

export type SampleProgress = Pick<
  MigrationProgress,
  | 'dataTotalBytes'
  | 'dataProcessedBytes'
  | 'dataRemainingBytes'
  | 'dirtyRateBytesPerSecond'
  | 'pass'
  | 'throughputBytesPerSecond'
  | 'etaMs'
>;

/** The MigrationProgress fields a job sample fills; the workflow adds its own ids, phase, elapsed time and steps. */
export function progressFromSample(input: {
  sample: MigrationJobSample;
  recentThroughputBytesPerSecond?: number;
}): SampleProgress {
  const { sample } = input;
  const progress: SampleProgress = {
    dataTotalBytes: sample.dataTotalBytes,
    dataProcessedBytes: sample.dataProcessedBytes,
    dataRemainingBytes: sample.dataRemainingBytes,
    dirtyRateBytesPerSecond: sample.memoryDirtyRateBytesPerSecond,
    pass: sample.pass,
    throughputBytesPerSecond: input.recentThroughputBytesPerSecond ?? sample.memoryBytesPerSecond,
  };
  const etaMs = migrationEtaMs(input);
  if (etaMs !== undefined) progress.etaMs = etaMs;
  return progress;
}
