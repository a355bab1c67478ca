/**
 * The failover report: one row per failover workflow (id = workflow id), written step by step as the workflow
 * goes, so that an operator reads why a host's guests were, or were not, restarted elsewhere, and how long it took.
 * Every write is idempotent, for the activities' retries; a finished report no longer changes.
 */
import type { Pool, PoolClient } from 'pg';
import { recordEvent } from './events';
import { inTransaction } from './transaction';

export const FAILOVER_STATES = ['running', 'completed', 'not-confirmed', 'withheld', 'aborted', 'failed'] as const;
export type FailoverState = (typeof FAILOVER_STATES)[number];

export interface WitnessVoteSummary {
  witnessHostId: string;
  verdict: 'unreachable' | 'alive';
  agentReachable: boolean;
  libvirtReachable: boolean;
  runningDomains?: string[];
  accepted: boolean;
  refusedReason?: string;
}

export interface FailoverConfirmation {
  mode: 'majority' | 'signed';
  asked: number;
  needed: number;
  accepted: number;
  votes: WitnessVoteSummary[];
  confirmedAt?: string;
}

export interface FailoverVmOutcome {
  vmId: string;
  name: string;
  haPriority: number;
  outcome: 'restarted' | 'not-restartable' | 'not-ha' | 'withheld' | 'failed';
  targetHostId?: string;
  reason?: string;
  restartedAt?: string;
  durationMs?: number;
}

export interface FailoverReport {
  id: string;
  hostId: string;
  suspectToken: number;
  state: FailoverState;
  /** When the host's lease expired: the moment it could first be suspected. */
  suspectedAt: string;
  startedAt: string;
  graceEndedAt?: string;
  confirmation?: FailoverConfirmation;
  fencedAt?: string;
  fencedToken?: number;
  vms: FailoverVmOutcome[];
  reason?: string;
  finishedAt?: string;
  /** From suspectedAt to the start of the failover. */
  detectionMs?: number;
  /** From suspectedAt to the end of the failover. */
  totalMs?: number;
}

export class FailoverStoreError extends Error {
  constructor(
    message: string,
    readonly code: 'FailoverNotFound',
  ) {
    super(message);
    this.name = 'FailoverStoreError';
  }
}

/** What the report column holds: everything the row's own columns do not. */
type ReportBody = Partial<
  Pick<FailoverReport, 'graceEndedAt' | 'confirmation' | 'fencedAt' | 'fencedToken' | 'reason'>
> & {
  vms?: FailoverVmOutcome[];
};

interface FailoverRow {
  id: string;
  host_id: string;
  suspect_token: string;
  state: FailoverState;
  suspected_at: Date;
  report: ReportBody;
  started_at: Date;
  finished_at: Date | null;
}

function toReport(row: FailoverRow): FailoverReport {
  const { vms = [], ...body } = row.report;
  const suspectedMs = row.suspected_at.getTime();
  return {
    id: row.id,
    hostId: row.host_id,
    suspectToken: Number(row.suspect_token),
    state: row.state,
    suspectedAt: row.suspected_at.toISOString(),
    startedAt: row.started_at.toISOString(),
    ...body,
    vms,
    ...(row.finished_at ? { finishedAt: row.finished_at.toISOString() } : {}),
    detectionMs: Math.max(0, row.started_at.getTime() - suspectedMs),
    ...(row.finished_at ? { totalMs: Math.max(0, row.finished_at.getTime() - suspectedMs) } : {}),
  };
}

async function selectFailover(client: Pool | PoolClient, id: string, lock = false): Promise<FailoverRow | undefined> {
  const result = await client.query<FailoverRow>(`SELECT * FROM failovers WHERE id = $1${lock ? ' FOR UPDATE' : ''}`, [
    id,
  ]);
  return result.rows[0];
}

const notFound = (id: string) => new FailoverStoreError(`no failover ${id} is recorded`, 'FailoverNotFound');

/** Opens the report, with its 'failover.started' event. A retry returns the row the first call wrote, as it is now. */
export async function createFailover(
  pool: Pool,
  input: { id: string; hostId: string; suspectToken: number; suspectedAt: Date },
): Promise<FailoverReport> {
  return inTransaction(pool, async (client) => {
    const inserted = await client.query(
      `INSERT INTO failovers (id, host_id, suspect_token, state, suspected_at)
       VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (id) DO NOTHING`,
      [input.id, input.hostId, input.suspectToken, input.suspectedAt],
    );
    if (inserted.rowCount === 1) {
      await recordEvent(client, {
        kind: 'failover.started',
        hostId: input.hostId,
        workflowId: input.id,
        message:
          `failover of host ${input.hostId} started: lease token ${input.suspectToken} expired at ` +
          input.suspectedAt.toISOString(),
        idempotencyKey: `${input.id}:failover.started`,
      });
    }
    return toReport((await selectFailover(client, input.id))!);
  });
}

/** Merges the patch into the report; a finished report is left as it is. */
export async function updateFailover(
  pool: Pool,
  input: {
    id: string;
    patch: Partial<Pick<FailoverReport, 'graceEndedAt' | 'confirmation' | 'fencedAt' | 'fencedToken' | 'reason'>>;
  },
): Promise<void> {
  const result = await pool.query(
    'UPDATE failovers SET report = report || $2::jsonb WHERE id = $1 AND finished_at IS NULL',
    [input.id, JSON.stringify(input.patch)],
  );
  if (result.rowCount !== 1 && !(await selectFailover(pool, input.id))) throw notFound(input.id);
}

/** Records what happened to one guest, replacing what an earlier attempt recorded for it; not once finished. */
export async function recordFailoverVm(pool: Pool, input: { id: string; vm: FailoverVmOutcome }): Promise<void> {
  await inTransaction(pool, async (client) => {
    const row = await selectFailover(client, input.id, true);
    if (!row) throw notFound(input.id);
    if (row.finished_at) return;
    const vms = row.report.vms ?? [];
    const at = vms.findIndex((v) => v.vmId === input.vm.vmId);
    const next = at < 0 ? [...vms, input.vm] : vms.map((v, i) => (i === at ? input.vm : v));
    await client.query(`UPDATE failovers SET report = jsonb_set(report, '{vms}', $2::jsonb) WHERE id = $1`, [
      input.id,
      JSON.stringify(next),
    ]);
  });
}

/** Ends the report with its outcome and a 'failover.finished' event; a retry returns the report as first finished. */
export async function finishFailover(
  pool: Pool,
  input: { id: string; state: Exclude<FailoverState, 'running'>; reason?: string },
): Promise<FailoverReport> {
  return inTransaction(pool, async (client) => {
    const row = await selectFailover(client, input.id, true);
    if (!row) throw notFound(input.id);
    if (row.finished_at) return toReport(row);
    const finished = await client.query<FailoverRow>(
      `UPDATE failovers SET state = $2, finished_at = now(),
         report = CASE WHEN $3::text IS NULL THEN report ELSE jsonb_set(report, '{reason}', to_jsonb($3::text)) END
       WHERE id = $1 RETURNING *`,
      [input.id, input.state, input.reason ?? null],
    );
    const report = toReport(finished.rows[0]!);
    const restarted = report.vms.filter((v) => v.outcome === 'restarted').length;
    await recordEvent(client, {
      kind: 'failover.finished',
      hostId: report.hostId,
      workflowId: report.id,
      message:
        `failover of host ${report.hostId} ${report.state}: ${restarted} of ${report.vms.length} guests restarted ` +
        `in ${report.totalMs ?? 0} ms${report.reason ? ` (${report.reason})` : ''}`,
      idempotencyKey: `${report.id}:failover.finished`,
    });
    return report;
  });
}

export async function getFailover(pool: Pool, id: string): Promise<FailoverReport | undefined> {
  const row = await selectFailover(pool, id);
  return row ? toReport(row) : undefined;
}

/** The host's failovers, newest first; 20 unless `limit` says otherwise. */
export async function listHostFailovers(
  pool: Pool,
  input: { hostId: string; limit?: number },
): Promise<FailoverReport[]> {
  const result = await pool.query<FailoverRow>(
    'SELECT * FROM failovers WHERE host_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2',
    [input.hostId, input.limit ?? 20],
  );
  return result.rows.map(toReport);
}
