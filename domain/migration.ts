/**
 * Live migration's shared vocabulary: the policy an operator sets, the plan made before anything moves, the progress
 * a running migration reports, the escalation steps of convergence control and the result. Pure types and zod, so
 * the API, the workflow (deterministic), the activities, the store and the CLI all speak the same shapes.
 */
import { z } from 'zod';

/**
 * How far a migration may go to converge. Defaults follow the anchors: QEMU's 300 ms downtime, KubeVirt's
 * 150 s per GiB completion deadline, auto-converge allowed and post-copy not (it risks the guest if the link drops).
 */
export const migrationPolicySchema = z.strictObject({
  /** The downtime the migration starts with (QEMU's default is 300 ms). */
  maxDowntimeMs: z.number().int().min(10).max(10_000).default(300),
  /** The highest downtime convergence control may raise it to, in steps. */
  downtimeCeilingMs: z.number().int().min(10).max(60_000).default(2000),
  /** Throttle the guest's vCPUs (QEMU auto-converge) when pre-copy stops gaining. */
  allowAutoConverge: z.boolean().default(true),
  /** Switch to post-copy when nothing else converges. */
  allowPostCopy: z.boolean().default(false),
  /** `forbidden`: a migration the plan predicts will not converge at maxDowntimeMs is refused before it starts. */
  escalation: z.enum(['allowed', 'forbidden']).default('allowed'),
  /** Caps the migration's bandwidth; unset, the plan chooses from the link (and the mode). */
  bandwidthMiBps: z.number().int().min(1).max(100_000).optional(),
  /** Completion deadline per GiB of guest memory, with a floor of one minute. */
  deadlineSecondsPerGiB: z.number().int().min(10).max(3600).default(150),
  /** Pre-copy passes without gain, in a row, before the next escalation step. */
  stallPasses: z.number().int().min(1).max(20).default(2),
});
export type MigrationPolicyInput = z.input<typeof migrationPolicySchema>;
export type MigrationPolicy = z.output<typeof migrationPolicySchema>;

export type MigrationMode = 'datacenter' | 'hybrid' | 'internet';

/** What the plan is made from, measured just before: the guest, the link and the guest's dirty rate. */
export interface MigrationPlanInput {
  memoryBytes: number;
  /** From `domdirtyrate-calc` over a short period: distinct bytes dirtied per second. */
  dirtyRateBytesPerSecond: number;
  /** From the link probe between source and target. */
  linkBandwidthBytesPerSecond: number;
  linkRttMs: number;
  /** Source host CPUs not committed to guests: multifd costs about a core per channel. Unset: not known. */
  spareCpus?: number;
  mode: MigrationMode;
  policy: MigrationPolicy;
}

/** The libvirt job parameters the plan chooses (native/libvirt's migration call takes them as they are). */
export interface MigrationParameters {
  /** multifd channels; 1 means a single classic stream. */
  parallelConnections: number;
  maxDowntimeMs: number;
  /** Unset: unlimited (libvirt's default). */
  bandwidthMiBps?: number;
  /** Armed at the start: QEMU can only enable these capabilities before the job. */
  autoConverge: boolean;
  postCopy: boolean;
}

export interface MigrationPrediction {
  converges: boolean;
  /** Pre-copy passes until the remainder fits in the downtime budget (or the cap on passes when it never does). */
  passes: number;
  totalMs: number;
  downtimeMs: number;
  bytes: number;
  /** Why it does not converge, with the figures, when it does not. */
  reason?: string;
}

export interface MigrationPlan {
  mode: MigrationMode;
  parameters: MigrationParameters;
  /** At the starting downtime, without mitigations. */
  prediction: MigrationPrediction;
  /** What the plan relies on beyond plain pre-copy, as the policy allows. */
  mitigation: 'none' | 'auto-converge' | 'post-copy';
  deadlineMs: number;
  inputs: Omit<MigrationPlanInput, 'policy'>;
}

export type MigrationPlanOutcome =
  { ok: true; plan: MigrationPlan } | { ok: false; reason: string; plan: MigrationPlan };

export type EscalationKind = 'raise-downtime' | 'auto-converge' | 'post-copy' | 'abort';

/** One step of convergence control, as recorded in the result, the migrations row and an event. */
export interface MigrationEscalation {
  /** 1, 2, … in the order taken; with the workflow id it keys the event, so a retry records it once. */
  seq: number;
  kind: EscalationKind;
  /** The pre-copy pass at which it was decided, and the data left then. */
  pass: number;
  dataRemainingBytes: number;
  /** The new max downtime for raise-downtime; the observed throttle percentage for auto-converge. */
  value?: number;
  reason: string;
  atMs: number;
}

export type MigrationPhase =
  | 'queued'
  | 'planning'
  | 'preparing'
  | 'precopy'
  | 'postcopy'
  | 'committing'
  | 'rolling-back'
  | 'completed'
  | 'failed'
  | 'cancelled'
  | 'refused';

/** The `migrationProgress` query and the `progress` field of GET /v1/migrations/:id. */
export interface MigrationProgress {
  workflowId: string;
  vmId: string;
  sourceHostId: string;
  targetHostId?: string;
  phase: MigrationPhase;
  dataTotalBytes?: number;
  dataProcessedBytes?: number;
  dataRemainingBytes?: number;
  dirtyRateBytesPerSecond?: number;
  pass?: number;
  throughputBytesPerSecond?: number;
  etaMs?: number;
  elapsedMs?: number;
  escalations: MigrationEscalation[];
}

/** libvirt's job statistics of a migration, in the units the workflow reasons in. */
export interface MigrationJobSample {
  /** `none` once no job runs; `completed`/`failed`/`cancelled` come from the completed-job stats. */
  state: 'none' | 'running' | 'completed' | 'failed' | 'cancelled';
  phase?: 'precopy' | 'postcopy';
  timeElapsedMs: number;
  dataTotalBytes: number;
  dataProcessedBytes: number;
  dataRemainingBytes: number;
  memoryDirtyRateBytesPerSecond: number;
  /** QEMU's pass counter (`memory_iteration`); the boundaries convergence is judged at. */
  pass: number;
  memoryBytesPerSecond: number;
  autoConvergeThrottlePercent?: number;
  /** Only after completion. */
  downtimeMs?: number;
  setupTimeMs?: number;
}

export type MigrationOutcome = 'completed' | 'cancelled' | 'failed' | 'refused';

export interface MigrationResult {
  workflowId: string;
  vmId: string;
  outcome: MigrationOutcome;
  /** Where the VM runs at the end, whatever the outcome: exactly one host. */
  finalHostId: string;
  sourceHostId: string;
  targetHostId?: string;
  plan?: MigrationPlan;
  escalations: MigrationEscalation[];
  /** libvirt's completed-job figures. */
  measured?: { totalMs: number; downtimeMs: number; bytes: number; passes: number; jobMs: number };
  /** Workflow time from start to commit. */
  workflowMs: number;
  reason?: string;
}

export interface MigrateVmInput {
  vmId: string;
  targetHostId?: string;
  policy?: MigrationPolicyInput;
}

/** Workflow ids of migrations; the API and the CLI find a VM's migrations by this prefix as well as the store. */
export function migrationWorkflowId(input: { vmId: string; requestId: string }): string {
  return `migrate-${input.vmId}-${input.requestId}`;
}
