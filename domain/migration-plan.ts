/**
 * The migration plan, made before anything moves: a pre-copy prediction from the guest's memory and dirty rate and
 * the link, the libvirt parameters for the mode, and what the policy lets convergence control fall back on. Pure
 * and deterministic, so the workflow runs it in its sandbox and the unit tests run it alone.
 */
import type {
  MigrationMode,
  MigrationParameters,
  MigrationPlan,
  MigrationPlanInput,
  MigrationPlanOutcome,
  MigrationPrediction,
} from './migration';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

/**
 * Fixed cost of a migration beyond its passes and downtime: the target QEMU's start, the connection and capability
 * negotiation, libvirt's begin/prepare/confirm. An estimate: bench/ measures it (libvirt's completed-job
 * `setupTimeMs`), and this figure should follow what it finds.
 */
export const MIGRATION_SETUP_MS = 1000;

/**
 * Pre-copy is predicted to converge only while the link outpaces the dirty rate by more than this margin. Both rates
 * are measured over seconds and vary by more than the last 10 %, and within it each pass would shrink the remainder
 * by under 10 %: a prediction there rests on noise.
 */
export const DIRTY_RATE_MARGIN = 0.9;

/** The prediction's horizon; in the job itself the completion deadline is what ends a migration that never does. */
export const DEFAULT_MAX_PASSES = 30;

/**
 * Hypothesis (the migration benchmark tests it): one classic migration stream, one core copying and sending, moves
 * about 5 Gbit/s of guest memory, so multifd gains a channel per 5 Gbit/s of link and below that buys nothing.
 */
export const STREAM_BYTES_PER_SECOND = 625_000_000;

/** KubeVirt's multifd channel count; Nova notes about one core per channel, so more is CPU taken from guests. */
export const MAX_PARALLEL_CONNECTIONS = 8;

/** QEMU's own `multifd-channels` default: what a fat link gets when the source's spare CPU is not known. */
export const CHANNELS_WITHOUT_CPU_FIGURE = 2;

/** The completion deadline's floor, as in KubeVirt. */
export const MIN_DEADLINE_MS = 60_000;

export interface PrecopyInput {
  memoryBytes: number;
  /** Distinct bytes dirtied per second (domdirtyrate-calc). */
  dirtyRateBytesPerSecond: number;
  bandwidthBytesPerSecond: number;
  maxDowntimeMs: number;
  rttMs: number;
  maxPasses?: number;
}

export function mib(bytes: number): string {
  const value = bytes / MIB;
  return value >= 10 ? `${Math.round(value)} MiB` : `${value.toFixed(1)} MiB`;
}

export function mibPerSecond(bytesPerSecond: number): string {
  return `${mib(bytesPerSecond)}/s`;
}

function requireFigure(name: string, value: number): void {
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`${name} must be a finite number ≥ 0, got ${value}`);
}

/**
 * Pre-copy as passes. Pass 0 sends all of memory: zero pages cost QEMU almost nothing on the wire, but the plan has
 * no count of them, so a fresh guest's pass 0 is predicted slower than it will be. Each later pass sends what the
 * guest dirtied during the one before (its rate × that pass's duration, at most all of memory). The switchover
 * follows QEMU's own test, the remainder against bandwidth × max downtime; the predicted downtime adds one round
 * trip for the handshake that test leaves out. When it does not converge, downtime and total are what stopping the
 * guest after the last pass would cost.
 */
export function predictPrecopy(input: PrecopyInput): MigrationPrediction {
  const { memoryBytes, dirtyRateBytesPerSecond: dirty, bandwidthBytesPerSecond: bandwidth, rttMs } = input;
  requireFigure('memoryBytes', memoryBytes);
  requireFigure('dirtyRateBytesPerSecond', dirty);
  requireFigure('bandwidthBytesPerSecond', bandwidth);
  requireFigure('rttMs', rttMs);
  const maxPasses = input.maxPasses ?? DEFAULT_MAX_PASSES;
  if (bandwidth === 0) {
    return {
      converges: false,
      passes: 0,
      totalMs: Infinity,
      downtimeMs: Infinity,
      bytes: memoryBytes,
      reason: 'no link bandwidth was measured: nothing can be sent',
    };
  }
  const fitsInDowntime = (bandwidth * input.maxDowntimeMs) / 1000;
  let pending = memoryBytes;
  let passes = 0;
  let passesMs = 0;
  let bytes = 0;
  while (pending > fitsInDowntime && passes < maxPasses) {
    const passMs = (pending / bandwidth) * 1000;
    passesMs += passMs;
    bytes += pending;
    passes += 1;
    pending = Math.min(memoryBytes, (dirty * passMs) / 1000);
  }
  const downtimeMs = (pending / bandwidth) * 1000 + rttMs;
  const prediction = {
    passes,
    downtimeMs: Math.round(downtimeMs),
    bytes: Math.round(bytes + pending),
    totalMs: Math.round(MIGRATION_SETUP_MS + passesMs + downtimeMs),
  };
  const outpaced = passes > 0 && dirty >= bandwidth * DIRTY_RATE_MARGIN;
  if (pending <= fitsInDowntime && !outpaced) return { converges: true, ...prediction };
  const cause = outpaced
    ? `the link does not outpace the dirty rate by ${Math.round((1 - DIRTY_RATE_MARGIN) * 100)} %`
    : `passes ran out (${maxPasses})`;
  const figures =
    `the guest dirties ${mibPerSecond(dirty)} against a ${mibPerSecond(bandwidth)} link, and after ` +
    `${passes} passes ${mib(pending)} remain where a ${input.maxDowntimeMs} ms downtime lets ${mib(fitsInDowntime)} through`;
  return { converges: false, ...prediction, reason: `pre-copy will not converge: ${cause}: ${figures}` };
}

function effectiveBandwidth(input: MigrationPlanInput): number {
  const cap = input.policy.bandwidthMiBps;
  return cap === undefined ? input.linkBandwidthBytesPerSecond : Math.min(input.linkBandwidthBytesPerSecond, cap * MIB);
}

/**
 * Channels by the hypothesis above. Internet mode runs through the DWCP tunnel, which already stripes over its own
 * streams, so more channels into it add only CPU. Post-copy with multifd needs QEMU ≥ 10.1 (Nova's note), newer
 * than this fleet's 7.2, so arming post-copy keeps one stream.
 */
function parallelConnections(input: MigrationPlanInput, bandwidth: number, postCopy: boolean): number {
  if (input.mode === 'internet' || postCopy) return 1;
  const byLink = Math.ceil(bandwidth / STREAM_BYTES_PER_SECOND);
  const byCpu = input.spareCpus === undefined ? CHANNELS_WITHOUT_CPU_FIGURE : Math.floor(input.spareCpus);
  return Math.max(1, Math.min(byLink, byCpu, MAX_PARALLEL_CONNECTIONS));
}

/**
 * The policy's cap if it sets one. Otherwise unlimited in the datacenter, and elsewhere the link's measured rate:
 * a shared link is what this migration may count on, and QEMU's switchover estimate should not assume more.
 */
function bandwidthMiBps(input: MigrationPlanInput, mode: MigrationMode): number | undefined {
  if (input.policy.bandwidthMiBps !== undefined) return input.policy.bandwidthMiBps;
  if (mode === 'datacenter') return undefined;
  return Math.max(1, Math.floor(input.linkBandwidthBytesPerSecond / MIB));
}

/** KubeVirt's rule: seconds per GiB of guest memory, never under a minute. */
export function migrationDeadlineMs(input: { memoryBytes: number; deadlineSecondsPerGiB: number }): number {
  return Math.max(MIN_DEADLINE_MS, Math.round((input.memoryBytes / GIB) * input.deadlineSecondsPerGiB * 1000));
}

/**
 * Parameters, prediction and mitigation. A migration that cannot finish in time is refused whatever the policy,
 * once even copying memory a single time outlasts the deadline: the deadline would abort it, and neither downtime
 * nor throttling makes the link faster. One predicted not to converge, or not before its deadline, at the starting
 * downtime is refused when the policy forbids escalation; otherwise it is predicted again at the ceiling, and where
 * even that fails it needs auto-converge or post-copy, which QEMU can only enable before the job, or it is refused.
 */
export function planMigration(input: MigrationPlanInput): MigrationPlanOutcome {
  const { policy, mode } = input;
  const bandwidth = effectiveBandwidth(input);
  const predict = (maxDowntimeMs: number): MigrationPrediction =>
    predictPrecopy({
      memoryBytes: input.memoryBytes,
      dirtyRateBytesPerSecond: input.dirtyRateBytesPerSecond,
      bandwidthBytesPerSecond: bandwidth,
      maxDowntimeMs,
      rttMs: input.linkRttMs,
    });
  const parameters: MigrationParameters = {
    parallelConnections: parallelConnections(input, bandwidth, policy.allowPostCopy),
    maxDowntimeMs: policy.maxDowntimeMs,
    autoConverge: policy.allowAutoConverge,
    postCopy: policy.allowPostCopy,
  };
  const cap = bandwidthMiBps(input, mode);
  if (cap !== undefined) parameters.bandwidthMiBps = cap;
  const { policy: _policy, ...inputs } = input;
  const prediction = predict(policy.maxDowntimeMs);
  const deadlineMs = migrationDeadlineMs({
    memoryBytes: input.memoryBytes,
    deadlineSecondsPerGiB: policy.deadlineSecondsPerGiB,
  });
  const plan: MigrationPlan = { mode, parameters, prediction, mitigation: 'none', deadlineMs, inputs };
  const deadline = `its ${Math.round(deadlineMs / 1000)} s deadline (${policy.deadlineSecondsPerGiB} s per GiB)`;
  const shortfall = (p: MigrationPrediction): string | undefined => {
    if (!p.converges) return p.reason;
    if (p.totalMs <= deadlineMs) return undefined;
    return `the migration is predicted to take ${Math.round(p.totalMs / 1000)} s, past ${deadline}`;
  };

  const onceMs = MIGRATION_SETUP_MS + (input.memoryBytes / bandwidth) * 1000;
  if (!(onceMs <= deadlineMs)) {
    const link = bandwidth > 0 ? `a ${mibPerSecond(bandwidth)} link` : 'a link with no measured bandwidth';
    const reason = `copying ${mib(input.memoryBytes)} once over ${link} outlasts ${deadline}`;
    return { ok: false, plan, reason };
  }
  const why = shortfall(prediction);
  if (why === undefined) return { ok: true, plan };
  if (policy.escalation === 'forbidden') return { ok: false, plan, reason: `${why}; the policy forbids escalation` };
  if (policy.downtimeCeilingMs > policy.maxDowntimeMs && shortfall(predict(policy.downtimeCeilingMs)) === undefined) {
    return { ok: true, plan };
  }
  if (policy.allowAutoConverge) return { ok: true, plan: { ...plan, mitigation: 'auto-converge' } };
  if (policy.allowPostCopy) return { ok: true, plan: { ...plan, mitigation: 'post-copy' } };
  return {
    ok: false,
    plan,
    reason:
      `${why}; it will not converge even at the ${policy.downtimeCeilingMs} ms ceiling, ` +
      'and the policy allows neither auto-converge nor post-copy',
  };
}
