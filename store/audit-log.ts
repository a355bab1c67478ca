import type { Pool } from 'pg';

export const AUDIT_OUTCOMES = ['accepted', 'succeeded', 'failed', 'rejected'] as const;

export interface AuditEntry {
  actor: string;
  action: string;
  target?: string;
  requestId?: string;
  workflowId?: string;
  outcome: (typeof AUDIT_OUTCOMES)[number];
  details?: Record<string, unknown>;
  idempotencyKey?: string;
}

export interface AuditRow extends Omit<AuditEntry, 'idempotencyKey'> {
  id: number;
  at: string;
}

/** Returns true when the row was written, false when its idempotency key had already been recorded. */
export async function recordAudit(pool: Pool, entry: AuditEntry): Promise<boolean> {
  const result = await pool.query(
    `INSERT INTO audit_log (actor, action, target, request_id, workflow_id, outcome, details, idempotency_key)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (idempotency_key) DO NOTHING`,
    [
      entry.actor,
      entry.action,
      entry.target ?? null,
      entry.requestId ?? null,
      entry.workflowId ?? null,
      entry.outcome,
      JSON.stringify(entry.details ?? {}),
      entry.idempotencyKey ?? null,
    ],
  );
  return result.rowCount === 1;
}

export interface AuditFilter {
  actor?: string;
  action?: string;
  workflowId?: string;
  requestId?: string;
  outcome?: AuditEntry['outcome'];
  since?: Date;
  until?: Date;
  /** Rows with a smaller id than this: the cursor for the next page. */
  beforeId?: number;
  limit: number;
}

/** Newest first. Every filter is a bound parameter, so no filter value is ever part of the SQL text. */
export async function listAudit(pool: Pool, filter: AuditFilter): Promise<AuditRow[]> {
  const result = await pool.query<{
    id: string;
    at: Date;
    actor: string;
    action: string;
    target: string | null;
    request_id: string | null;
    workflow_id: string | null;
    outcome: AuditEntry['outcome'];
    details: Record<string, unknown>;
  }>(
    `SELECT id, at, actor, action, target, request_id, workflow_id, outcome, details FROM audit_log
     WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)
       AND ($3::text IS NULL OR workflow_id = $3) AND ($4::text IS NULL OR request_id = $4)
       AND ($5::text IS NULL OR outcome = $5) AND ($6::timestamptz IS NULL OR at >= $6)
       AND ($7::timestamptz IS NULL OR at < $7) AND ($8::bigint IS NULL OR id < $8)
     ORDER BY id DESC LIMIT $9`,
    [
      filter.actor ?? null,
      filter.action ?? null,
      filter.workflowId ?? null,
      filter.requestId ?? null,
      filter.outcome ?? null,
      filter.since ?? null,
      filter.until ?? null,
      filter.beforeId ?? null,
      filter.limit,
    ],
  );
  return result.rows.map((r) => ({
    id: Number(r.id),
    at: r.at.toISOString(),
    actor: r.actor,
    action: r.action,
    ...(r.target ? { target: r.target } : {}),
    ...(r.request_id ? { requestId: r.request_id } : {}),
    ...(r.workflow_id ? { workflowId: r.workflow_id } : {}),
    outcome: r.outcome,
    details: r.details,
  }));
}
