import type { Pool } from 'pg';

export interface AuditEntry {
  actor: string;
  action: string;
  target?: string;
  requestId?: string;
  workflowId?: string;
  outcome: 'accepted' | 'succeeded' | 'failed' | 'rejected';
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

export async function listAudit(pool: Pool, input: { workflowId?: string; limit: number }): Promise<AuditRow[]> {
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
     WHERE ($1::text IS NULL OR workflow_id = $1) ORDER BY id DESC LIMIT $2`,
    [input.workflowId ?? null, input.limit],
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
