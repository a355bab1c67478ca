/** The host and VM timeline behind GET /v1/events: lifecycle outcomes, host liveness changes and drift. */
import type { Pool, PoolClient } from 'pg';

export interface EventEntry {
  kind: string;
  hostId?: string;
  vmId?: string;
  workflowId?: string;
  message: string;
  /** workflow id + step: a retried activity records its event once. */
  idempotencyKey?: string;
}

export interface EventRow extends Omit<EventEntry, 'idempotencyKey'> {
  id: number;
  at: string;
}

export async function recordEvent(client: Pool | PoolClient, entry: EventEntry): Promise<void> {
  await client.query(
    `INSERT INTO events (kind, host_id, vm_id, workflow_id, message, idempotency_key) VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (idempotency_key) DO NOTHING`,
    [
      entry.kind,
      entry.hostId ?? null,
      entry.vmId ?? null,
      entry.workflowId ?? null,
      entry.message,
      entry.idempotencyKey ?? null,
    ],
  );
}

export async function listEvents(
  pool: Pool,
  input: { hostId?: string; vmId?: string; limit: number },
): Promise<EventRow[]> {
  const result = await pool.query<{
    id: string;
    at: Date;
    kind: string;
    host_id: string | null;
    vm_id: string | null;
    workflow_id: string | null;
    message: string;
  }>(
    `SELECT id, at, kind, host_id, vm_id, workflow_id, message FROM events
     WHERE ($1::text IS NULL OR host_id = $1) AND ($2::uuid IS NULL OR vm_id = $2) ORDER BY id DESC LIMIT $3`,
    [input.hostId ?? null, input.vmId ?? null, input.limit],
  );
  return result.rows.map((r) => ({
    id: Number(r.id),
    at: r.at.toISOString(),
    kind: r.kind,
    ...(r.host_id ? { hostId: r.host_id } : {}),
    ...(r.vm_id ? { vmId: r.vm_id } : {}),
    ...(r.workflow_id ? { workflowId: r.workflow_id } : {}),
    message: r.message,
  }));
}
