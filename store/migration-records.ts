/**
 * Live migrations in the store: one row per migrateVm workflow (its plan, progress, escalations and measured result,
 * the data later predictors learn from) and per-host migration slots; with the VM's side (store/migration-hold,
 * re-exported here): the migration lock with capacity reserved on the target, the fenced commit and the rollback.
 * Every write is keyed by the workflow id, so a retried activity finds what its first attempt did.
 *
 * Slots: a migration holds one outgoing slot of its source and one incoming slot of its target while its row's
 * state is 'running', from acquireMigrationSlot to finishMigrationRecord. The commit and the rollback release the
 * VM, its lock and its reservation but leave the row 'running', so the clean-up after a commit still counts.
 */
import type { Pool, PoolClient } from 'pg';
import type {
  MigrationEscalation,
  MigrationOutcome,
  MigrationPlan,
  MigrationPolicy,
  MigrationProgress,
  MigrationResult,
} from '../domain/migration';
import { recordEvent } from './events';
import { inTransaction } from './transaction';
import { VmStoreError } from './vms';

export { commitMigration, lockVmForMigration, releaseMigration } from './migration-hold';

export const MIGRATION_RECORD_STATES = [
  'planning',
  'queued',
  'running',
  'completed',
  'failed',
  'cancelled',
  'refused',
] as const;
export type MigrationRecordState = (typeof MIGRATION_RECORD_STATES)[number];

const FINISHED_STATES: readonly MigrationRecordState[] = ['completed', 'failed', 'cancelled', 'refused'];
// Serializes slot decisions, so that migrations asking at once never exceed a host's limits.
export const SLOT_LOCK_KEY = 746_927_005;

export interface MigrationRecord {
  id: string;
  vmId: string;
  sourceHostId: string;
  targetHostId?: string;
  state: MigrationRecordState;
  policy: MigrationPolicy;
  plan?: MigrationPlan;
  progress?: MigrationProgress;
  escalations: MigrationEscalation[];
  result?: MigrationResult;
  error?: string;
  finalHostId?: string;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
}

interface MigrationRow {
  id: string;
  vm_id: string;
  source_host_id: string;
  target_host_id: string | null;
  state: MigrationRecordState;
  policy: MigrationPolicy;
  plan: MigrationPlan | null;
  progress: MigrationProgress | null;
  escalations: MigrationEscalation[];
  result: MigrationResult | null;
  error: string | null;
  final_host_id: string | null;
  committed_generation: string | null;
  created_at: Date;
  queued_at: Date | null;
  started_at: Date | null;
  finished_at: Date | null;
}

function toRecord(row: MigrationRow): MigrationRecord {
  return {
    id: row.id,
    vmId: row.vm_id,
    sourceHostId: row.source_host_id,
    ...(row.target_host_id ? { targetHostId: row.target_host_id } : {}),
    state: row.state,
    policy: row.policy,
    ...(row.plan ? { plan: row.plan } : {}),
    ...(row.progress ? { progress: row.progress } : {}),
    escalations: row.escalations,
    ...(row.result ? { result: row.result } : {}),
    ...(row.error ? { error: row.error } : {}),
    ...(row.final_host_id ? { finalHostId: row.final_host_id } : {}),
    createdAt: row.created_at.toISOString(),
    ...(row.started_at ? { startedAt: row.started_at.toISOString() } : {}),
    ...(row.finished_at ? { finishedAt: row.finished_at.toISOString() } : {}),
  };
}

const notFound = (workflowId: string): VmStoreError =>
  new VmStoreError(`no migration ${workflowId} is recorded`, 'MigrationNotFound');

async function lockedRow(client: PoolClient, workflowId: string): Promise<MigrationRow> {
  const result = await client.query<MigrationRow>('SELECT * FROM migrations WHERE id = $1 FOR UPDATE', [workflowId]);
  const row = result.rows[0];
  if (!row) throw notFound(workflowId);
  return row;
}

export async function getMigration(pool: Pool | PoolClient, id: string): Promise<MigrationRecord | undefined> {
  const result = await pool.query<MigrationRow>('SELECT * FROM migrations WHERE id = $1', [id]);
  const row = result.rows[0];
  return row ? toRecord(row) : undefined;
}

/** Newest first. */
export async function listMigrations(
  pool: Pool,
  input: { vmId?: string; state?: MigrationRecordState; limit?: number } = {},
): Promise<MigrationRecord[]> {
  const result = await pool.query<MigrationRow>(
    `SELECT * FROM migrations WHERE ($1::uuid IS NULL OR vm_id = $1) AND ($2::text IS NULL OR state = $2)
     ORDER BY created_at DESC, id DESC LIMIT $3`,
    [input.vmId ?? null, input.state ?? null, input.limit ?? 100],
  );
  return result.rows.map(toRecord);
}

/** Opens the record in 'planning'. A retry returns the row the first attempt wrote. */
export async function createMigrationRecord(
  pool: Pool,
  input: { workflowId: string; vmId: string; sourceHostId: string; targetHostId?: string; policy: MigrationPolicy },
): Promise<MigrationRecord> {
  await pool.query(
    `INSERT INTO migrations (id, vm_id, source_host_id, target_host_id, state, policy)
     VALUES ($1, $2, $3, $4, 'planning', $5) ON CONFLICT (id) DO NOTHING`,
    [input.workflowId, input.vmId, input.sourceHostId, input.targetHostId ?? null, JSON.stringify(input.policy)],
  );
  return (await getMigration(pool, input.workflowId))!;
}

/** The plan and its predictions, before anything moves; the state stays 'planning'. */
export async function recordMigrationPlan(
  pool: Pool,
  input: { workflowId: string; targetHostId: string; plan: MigrationPlan },
): Promise<void> {
  const result = await pool.query(
    `UPDATE migrations SET target_host_id = $2, plan = $3, predicted_total_ms = $4, predicted_downtime_ms = $5
     WHERE id = $1`,
    [
      input.workflowId,
      input.targetHostId,
      JSON.stringify(input.plan),
      input.plan.prediction.totalMs,
      input.plan.prediction.downtimeMs,
    ],
  );
  if (result.rowCount !== 1) throw notFound(input.workflowId);
}

/**
 * A slot under the source's outgoing and the target's incoming limit. A migration asking waits 'queued' until it
 * gets one, then is 'running'. First come, first served: an earlier waiter keeps its place in a host's line, as if
 * it ran, unless it waits for a full host this one does not use: a full target does not stall its source's
 * migrations to other targets, nor a full source its target's migrations from other sources. The limits
 * themselves count only running migrations. A retry of a migration that holds its slot gets it again.
 */
export async function acquireMigrationSlot(
  pool: Pool,
  input: { workflowId: string; sourceHostId: string; targetHostId: string; maxOutgoing: number; maxIncoming: number },
): Promise<{ acquired: boolean; waitingBehind: number }> {
  return inTransaction(pool, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1)', [SLOT_LOCK_KEY]);
    const row = await lockedRow(client, input.workflowId);
    if (row.state === 'running') return { acquired: true, waitingBehind: 0 };
    if (FINISHED_STATES.includes(row.state)) {
      throw new VmStoreError(`migration ${input.workflowId} is already ${row.state}`, 'MigrationFinished');
    }
    const queued = await client.query<{ queued_at: Date }>(
      `UPDATE migrations SET state = 'queued', source_host_id = $2, target_host_id = $3,
         queued_at = coalesce(queued_at, clock_timestamp())
       WHERE id = $1 RETURNING queued_at`,
      [input.workflowId, input.sourceHostId, input.targetHostId],
    );
    const counts = await client.query<{ out_busy: string; in_busy: string; ahead: string }>(
      `WITH outgoing AS (SELECT source_host_id AS host, count(*) AS n FROM migrations WHERE state = 'running' GROUP BY 1),
       incoming AS (SELECT target_host_id AS host, count(*) AS n FROM migrations WHERE state = 'running' GROUP BY 1),
       others AS (
         SELECT m.state = 'running' AND m.source_host_id = $2
             OR m.state = 'queued' AND (m.queued_at, m.id) < ($4, $1) AND m.source_host_id = $2
               AND (m.target_host_id = $3 OR coalesce(i.n, 0) < $5) AS on_out,
           m.state = 'running' AND m.target_host_id = $3
             OR m.state = 'queued' AND (m.queued_at, m.id) < ($4, $1) AND m.target_host_id = $3
               AND (m.source_host_id = $2 OR coalesce(o.n, 0) < $6) AS on_in
         FROM migrations m LEFT JOIN outgoing o ON o.host = m.source_host_id
           LEFT JOIN incoming i ON i.host = m.target_host_id
         WHERE m.id <> $1 AND m.state IN ('running', 'queued'))
       SELECT count(*) FILTER (WHERE on_out) AS out_busy, count(*) FILTER (WHERE on_in) AS in_busy,
         count(*) FILTER (WHERE on_out OR on_in) AS ahead
       FROM others`,
      [
        input.workflowId,
        input.sourceHostId,
        input.targetHostId,
        queued.rows[0]!.queued_at,
        input.maxIncoming,
        input.maxOutgoing,
      ],
    );
    const { out_busy, in_busy, ahead } = counts.rows[0]!;
    if (Number(out_busy) >= input.maxOutgoing || Number(in_busy) >= input.maxIncoming) {
      return { acquired: false, waitingBehind: Number(ahead) };
    }
    // The moment the slot is granted, not the transaction's start (now()), which can precede the finish that freed
    // the slot while this request waited for the lock: intervals read from the rows must never seem to overlap.
    await client.query(`UPDATE migrations SET state = 'running', started_at = clock_timestamp() WHERE id = $1`, [
      input.workflowId,
    ]);
    return { acquired: true, waitingBehind: 0 };
  });
}

export async function updateMigrationProgress(
  pool: Pool,
  input: { workflowId: string; progress: MigrationProgress },
): Promise<void> {
  // A finished migration's record is final: a late sample (a retried activity after the commit) must not
  // overwrite the progress the result was written with.
  const result = await pool.query('UPDATE migrations SET progress = $2 WHERE id = $1 AND finished_at IS NULL', [
    input.workflowId,
    JSON.stringify(input.progress),
  ]);
  if (result.rowCount === 1) return;
  const exists = await pool.query('SELECT 1 FROM migrations WHERE id = $1', [input.workflowId]);
  if (exists.rowCount !== 1) throw notFound(input.workflowId);
}

/** Appends the step and records its event, once per `seq`. Returns whether this call recorded it. */
export async function recordMigrationEscalation(
  pool: Pool,
  input: { workflowId: string; escalation: MigrationEscalation },
): Promise<boolean> {
  const { escalation } = input;
  return inTransaction(pool, async (client) => {
    const row = await lockedRow(client, input.workflowId);
    if (row.escalations.some((e) => e.seq === escalation.seq)) return false;
    await client.query(
      'UPDATE migrations SET escalations = escalations || jsonb_build_array($2::jsonb) WHERE id = $1',
      [input.workflowId, JSON.stringify(escalation)],
    );
    await recordEvent(client, {
      kind: 'migration.escalation',
      vmId: row.vm_id,
      hostId: row.source_host_id,
      workflowId: input.workflowId,
      message:
        `migration ${input.workflowId} step ${escalation.seq}: ${escalation.kind}` +
        `${escalation.value !== undefined ? ` (${escalation.value})` : ''} at pass ${escalation.pass}, ` +
        `${escalation.dataRemainingBytes} bytes left: ${escalation.reason}`,
      idempotencyKey: `${input.workflowId}:escalation:${escalation.seq}`,
    });
    return true;
  });
}

/**
 * The outcome, with the measured figures beside the predicted ones; the row leaves 'running', which frees its slots.
 * A finished record is not rewritten: returns whether this call finished it.
 */
export async function finishMigrationRecord(
  pool: Pool,
  input: {
    workflowId: string;
    outcome: MigrationOutcome;
    finalHostId: string;
    result?: MigrationResult;
    error?: string;
  },
): Promise<boolean> {
  const { result } = input;
  const updated = await pool.query(
    `UPDATE migrations SET state = $2, final_host_id = $3, result = $4, error = $5, finished_at = now(),
       measured_total_ms = $6, measured_downtime_ms = $7, bytes_transferred = $8,
       plan = coalesce(plan, $9), predicted_total_ms = coalesce(predicted_total_ms, $10),
       predicted_downtime_ms = coalesce(predicted_downtime_ms, $11),
       escalations = CASE WHEN jsonb_array_length($12::jsonb) > jsonb_array_length(escalations) THEN $12::jsonb
         ELSE escalations END
     WHERE id = $1 AND state NOT IN ('completed', 'failed', 'cancelled', 'refused')`,
    [
      input.workflowId,
      input.outcome,
      input.finalHostId,
      result ? JSON.stringify(result) : null,
      input.error ?? null,
      result?.measured?.totalMs ?? null,
      result?.measured?.downtimeMs ?? null,
      result?.measured?.bytes ?? null,
      result?.plan ? JSON.stringify(result.plan) : null,
      result?.plan?.prediction.totalMs ?? null,
      result?.plan?.prediction.downtimeMs ?? null,
      JSON.stringify(result?.escalations ?? []),
    ],
  );
  if (updated.rowCount === 1) return true;
  if (!(await getMigration(pool, input.workflowId))) throw notFound(input.workflowId);
  return false;
}
