/** Link probe samples between host pairs: the history the bandwidth predictor (PBA) learns from. */
import type { Pool } from 'pg';

export const LINK_MODES = ['datacenter', 'hybrid', 'internet'] as const;
export type LinkMode = (typeof LINK_MODES)[number];

export interface LinkProbeSample {
  sourceHostId: string;
  targetHostId: string;
  rttMs: number;
  bandwidthMbps: number;
  probeBytes: number;
  streams: number;
  mode: LinkMode;
  workflowId?: string;
}

export interface LinkProbeRow extends LinkProbeSample {
  id: number;
  measuredAt: string;
}

/** Stores one sample; the idempotency key (workflow id + step) makes a retried activity store it once. */
export async function recordLinkProbe(
  pool: Pool,
  sample: LinkProbeSample & { idempotencyKey?: string },
): Promise<number> {
  const inserted = await pool.query<{ id: string }>(
    `INSERT INTO link_probes (source_host_id, target_host_id, rtt_ms, bandwidth_mbps, probe_bytes, streams, mode,
       workflow_id, idempotency_key)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`,
    [
      sample.sourceHostId,
      sample.targetHostId,
      sample.rttMs,
      sample.bandwidthMbps,
      sample.probeBytes,
      sample.streams,
      sample.mode,
      sample.workflowId ?? null,
      sample.idempotencyKey ?? null,
    ],
  );
  if (inserted.rows[0]) return Number(inserted.rows[0].id);
  const existing = await pool.query<{ id: string }>('SELECT id FROM link_probes WHERE idempotency_key = $1', [
    sample.idempotencyKey,
  ]);
  return Number(existing.rows[0]!.id);
}

export async function listLinkProbes(
  pool: Pool,
  input: { sourceHostId?: string; targetHostId?: string; limit: number },
): Promise<LinkProbeRow[]> {
  const result = await pool.query<{
    id: string;
    source_host_id: string;
    target_host_id: string;
    measured_at: Date;
    rtt_ms: number;
    bandwidth_mbps: number;
    probe_bytes: string;
    streams: number;
    mode: LinkMode;
    workflow_id: string | null;
  }>(
    `SELECT id, source_host_id, target_host_id, measured_at, rtt_ms, bandwidth_mbps, probe_bytes, streams, mode,
       workflow_id
     FROM link_probes
     WHERE ($1::text IS NULL OR source_host_id = $1) AND ($2::text IS NULL OR target_host_id = $2)
     ORDER BY measured_at DESC, id DESC LIMIT $3`,
    [input.sourceHostId ?? null, input.targetHostId ?? null, input.limit],
  );
  return result.rows.map((r) => ({
    id: Number(r.id),
    sourceHostId: r.source_host_id,
    targetHostId: r.target_host_id,
    measuredAt: r.measured_at.toISOString(),
    rttMs: r.rtt_ms,
    bandwidthMbps: r.bandwidth_mbps,
    probeBytes: Number(r.probe_bytes),
    streams: r.streams,
    mode: r.mode,
    ...(r.workflow_id ? { workflowId: r.workflow_id } : {}),
  }));
}
