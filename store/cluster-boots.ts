import type { Pool } from 'pg';

export const BOOT_RECORD_STATUSES = ['running', 'ready', 'degraded', 'failed'] as const;
export type BootRecordStatus = (typeof BOOT_RECORD_STATUSES)[number];

export interface ClusterBootRecord {
  workflowId: string;
  nodeId: string;
  status: BootRecordStatus;
  report: unknown;
  startedAt: string;
  completedAt?: string;
}

/**
 * Upsert keyed by workflow id: a retried activity leaves one row, and the outcome overwrites the 'running' row the
 * boot wrote when it started. started_at is kept from the first write.
 */
export async function recordClusterBoot(
  pool: Pool,
  record: Pick<ClusterBootRecord, 'workflowId' | 'nodeId' | 'status' | 'report'>,
): Promise<void> {
  await pool.query(
    `INSERT INTO cluster_boots (workflow_id, node_id, status, report, completed_at)
     VALUES ($1, $2, $3::text, $4, CASE WHEN $3::text = 'running' THEN NULL ELSE now() END)
     ON CONFLICT (workflow_id) DO UPDATE SET status = EXCLUDED.status, report = EXCLUDED.report,
       completed_at = EXCLUDED.completed_at
     WHERE cluster_boots.status = 'running'`,
    [record.workflowId, record.nodeId, record.status, JSON.stringify(record.report)],
  );
}

/**
 * The boot a control process's readiness follows: the named one, or with none named the newest boot of the node
 * that came up (over any later one still running or failed), else the newest boot of the node.
 */
export async function bootForReadiness(
  pool: Pool,
  input: { nodeId: string; bootWorkflowId?: string },
): Promise<Pick<ClusterBootRecord, 'workflowId' | 'status'> | undefined> {
  const { rows } = await pool.query<{ workflow_id: string; status: BootRecordStatus }>(
    `SELECT workflow_id, status FROM cluster_boots
      WHERE CASE WHEN $2::text IS NULL THEN node_id = $1 ELSE workflow_id = $2 END
      ORDER BY status IN ('ready', 'degraded') DESC, started_at DESC LIMIT 1`,
    [input.nodeId, input.bootWorkflowId ?? null],
  );
  const row = rows[0];
  return row ? { workflowId: row.workflow_id, status: row.status } : undefined;
}

export async function latestClusterBoot(pool: Pool): Promise<ClusterBootRecord | undefined> {
  const result = await pool.query<{
    workflow_id: string;
    node_id: string;
    status: BootRecordStatus;
    report: unknown;
    started_at: Date;
    completed_at: Date | null;
  }>(
    'SELECT workflow_id, node_id, status, report, started_at, completed_at FROM cluster_boots ORDER BY started_at DESC LIMIT 1',
  );
  const row = result.rows[0];
  if (!row) return undefined;
  return {
    workflowId: row.workflow_id,
    nodeId: row.node_id,
    status: row.status,
    report: row.report,
    startedAt: row.started_at.toISOString(),
    ...(row.completed_at ? { completedAt: row.completed_at.toISOString() } : {}),
  };
}
