import type { Pool } from 'pg';

export interface ClusterBootRecord {
  workflowId: string;
  nodeId: string;
  status: 'ready' | 'degraded' | 'failed';
  report: unknown;
  completedAt: string;
}

/** Upsert keyed by workflow id: recording the same boot twice (an activity retry) leaves one row. */
export async function recordClusterBoot(pool: Pool, record: Omit<ClusterBootRecord, 'completedAt'>): Promise<void> {
  await pool.query(
    `INSERT INTO cluster_boots (workflow_id, node_id, status, report) VALUES ($1, $2, $3, $4)
     ON CONFLICT (workflow_id) DO UPDATE SET status = EXCLUDED.status, report = EXCLUDED.report, completed_at = now()`,
    [record.workflowId, record.nodeId, record.status, JSON.stringify(record.report)],
  );
}

export async function latestClusterBoot(pool: Pool): Promise<ClusterBootRecord | undefined> {
  const result = await pool.query<{
    workflow_id: string;
    node_id: string;
    status: ClusterBootRecord['status'];
    report: unknown;
    completed_at: Date;
  }>('SELECT workflow_id, node_id, status, report, completed_at FROM cluster_boots ORDER BY completed_at DESC LIMIT 1');
  const row = result.rows[0];
  return row
    ? {
        workflowId: row.workflow_id,
        nodeId: row.node_id,
        status: row.status,
        report: row.report,
        completedAt: row.completed_at.toISOString(),
      }
    : undefined;
}
