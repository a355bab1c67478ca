/**
 * Drift (ASS): what libvirt reports against what NovaCron recorded. A finding stays one open row until the
 * condition is gone, so a guest missing for an hour is one drift, not 3600.
 */
import type { Pool } from 'pg';
import { TRANSITIONAL_VM_STATES, type VmState } from '../domain/vm-spec';
import { recordEvent } from './events';
import type { InventoryDomain } from './hosts';

export const DRIFT_KINDS = ['unknown-vm', 'missing-vm', 'state-mismatch'] as const;
export type DriftKind = (typeof DRIFT_KINDS)[number];

export interface DriftFinding {
  hostId: string;
  vmId?: string;
  domainName: string;
  kind: DriftKind;
  expected?: string;
  actual?: string;
  observedAt: Date;
}

export interface DriftRecord extends Omit<DriftFinding, 'observedAt'> {
  id: number;
  observedAt: string;
  detectedAt: string;
  resolvedAt?: string;
  action: 'alerted' | 'repairing';
  repairWorkflowId?: string;
}

export interface InventoryView {
  hostId: string;
  observedAt: Date;
  domains: InventoryDomain[];
}

export interface VmView {
  id: string;
  name: string;
  hostId?: string;
  state: VmState;
  busy: boolean;
  updatedAt: Date;
}

/**
 * Compares one host's report with the VMs it should run. A VM is judged only when the report was taken after its
 * last recorded change and no workflow holds it: otherwise the report may predate what the store says. A domain
 * is unknown when no VM has its UUID, or when its VM belongs to another host: a second copy of a VM is drift too.
 */
export function compareInventory(report: InventoryView, vms: readonly VmView[]): DriftFinding[] {
  const findings: DriftFinding[] = [];
  const byUuid = new Map(report.domains.map((d) => [d.uuid, d]));
  for (const vm of vms) {
    if (vm.hostId !== report.hostId || vm.busy || TRANSITIONAL_VM_STATES.includes(vm.state)) continue;
    if (vm.state === 'failed' || vm.updatedAt >= report.observedAt) continue;
    const domain = byUuid.get(vm.id);
    const base = { hostId: report.hostId, vmId: vm.id, domainName: vm.name, observedAt: report.observedAt };
    if (!domain) {
      findings.push({ ...base, kind: 'missing-vm', expected: vm.state, actual: 'absent' });
      continue;
    }
    const running = domain.state === 'running' || domain.state === 'blocked';
    if ((vm.state === 'running') !== running) {
      findings.push({ ...base, kind: 'state-mismatch', expected: vm.state, actual: domain.state });
    }
  }
  const vmsById = new Map(vms.map((v) => [v.id, v]));
  for (const domain of report.domains) {
    const owner = vmsById.get(domain.uuid);
    if (owner?.hostId === report.hostId) continue;
    // A workflow moving or creating the VM may briefly leave it on a host it does not own yet.
    if (owner && (owner.busy || TRANSITIONAL_VM_STATES.includes(owner.state))) continue;
    findings.push({
      hostId: report.hostId,
      ...(owner ? { vmId: owner.id } : {}),
      domainName: domain.name,
      kind: 'unknown-vm',
      ...(owner ? { expected: `on ${owner.hostId ?? 'no host'}` } : {}),
      actual: domain.state,
      observedAt: report.observedAt,
    });
  }
  return findings;
}

export interface DriftScan {
  /** Hosts whose report was fresh enough to judge. */
  checkedHosts: string[];
  /** Hosts that are up but have not reported within the staleness bound. */
  staleHosts: string[];
  opened: DriftRecord[];
  resolved: number;
}

/** Compares every fresh report, opens rows for new findings and resolves rows whose condition is gone. */
export async function scanDrift(pool: Pool, input: { stalenessBoundMs: number }): Promise<DriftScan> {
  const reports = await pool.query<{
    host_id: string;
    observed_at: Date;
    domains: InventoryDomain[];
    fresh: boolean;
  }>(
    `SELECT r.host_id, r.observed_at, r.domains, r.observed_at > now() - $1 * interval '1 millisecond' AS fresh
     FROM hosts h LEFT JOIN inventory_reports r ON r.host_id = h.id WHERE h.state <> 'down'`,
    [input.stalenessBoundMs],
  );
  const vmRows = await pool.query<{
    id: string;
    name: string;
    host_id: string | null;
    state: VmState;
    operation_workflow_id: string | null;
    updated_at: Date;
  }>('SELECT id, name, host_id, state, operation_workflow_id, updated_at FROM vms');
  const vms: VmView[] = vmRows.rows.map((v) => ({
    id: v.id,
    name: v.name,
    ...(v.host_id ? { hostId: v.host_id } : {}),
    state: v.state,
    busy: v.operation_workflow_id !== null,
    updatedAt: v.updated_at,
  }));

  const scan: DriftScan = { checkedHosts: [], staleHosts: [], opened: [], resolved: 0 };
  for (const report of reports.rows) {
    if (!report.fresh) {
      scan.staleHosts.push(report.host_id);
      continue;
    }
    scan.checkedHosts.push(report.host_id);
    const findings = compareInventory(
      { hostId: report.host_id, observedAt: report.observed_at, domains: report.domains },
      vms,
    );
    const stillOpen: string[] = [];
    for (const finding of findings) {
      stillOpen.push(`${finding.domainName}/${finding.kind}`);
      const inserted = await pool.query<DriftRow>(
        `INSERT INTO drift (host_id, vm_id, domain_name, kind, expected, actual, observed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (host_id, domain_name, kind) WHERE resolved_at IS NULL DO NOTHING RETURNING *`,
        [
          finding.hostId,
          finding.vmId ?? null,
          finding.domainName,
          finding.kind,
          finding.expected ?? null,
          finding.actual ?? null,
          finding.observedAt,
        ],
      );
      const row = inserted.rows[0];
      if (!row) continue;
      const record = toDrift(row);
      scan.opened.push(record);
      await recordEvent(pool, {
        kind: `drift.${finding.kind}`,
        hostId: finding.hostId,
        ...(finding.vmId ? { vmId: finding.vmId } : {}),
        message: `${finding.kind} on ${finding.hostId}: ${finding.domainName} expected ${finding.expected ?? 'nothing'}, libvirt has ${finding.actual ?? 'nothing'}`,
      });
    }
    // Open rows of this host that this report no longer shows are resolved, whoever fixed them.
    const resolved = await pool.query(
      `UPDATE drift SET resolved_at = now()
       WHERE host_id = $1 AND resolved_at IS NULL AND NOT (domain_name || '/' || kind = ANY($2::text[]))`,
      [report.host_id, stillOpen],
    );
    scan.resolved += resolved.rowCount ?? 0;
  }
  return scan;
}

export async function markDriftRepairing(pool: Pool, input: { driftId: number; workflowId: string }): Promise<void> {
  await pool.query(`UPDATE drift SET action = 'repairing', repair_workflow_id = $2 WHERE id = $1`, [
    input.driftId,
    input.workflowId,
  ]);
}

interface DriftRow {
  id: string;
  host_id: string;
  vm_id: string | null;
  domain_name: string;
  kind: DriftKind;
  expected: string | null;
  actual: string | null;
  observed_at: Date;
  detected_at: Date;
  resolved_at: Date | null;
  action: 'alerted' | 'repairing';
  repair_workflow_id: string | null;
}

function toDrift(row: DriftRow): DriftRecord {
  return {
    id: Number(row.id),
    hostId: row.host_id,
    ...(row.vm_id ? { vmId: row.vm_id } : {}),
    domainName: row.domain_name,
    kind: row.kind,
    ...(row.expected ? { expected: row.expected } : {}),
    ...(row.actual ? { actual: row.actual } : {}),
    observedAt: row.observed_at.toISOString(),
    detectedAt: row.detected_at.toISOString(),
    ...(row.resolved_at ? { resolvedAt: row.resolved_at.toISOString() } : {}),
    action: row.action,
    ...(row.repair_workflow_id ? { repairWorkflowId: row.repair_workflow_id } : {}),
  };
}

export async function listDrift(
  pool: Pool,
  input: { hostId?: string; open?: boolean; limit: number },
): Promise<DriftRecord[]> {
  const result = await pool.query<DriftRow>(
    `SELECT * FROM drift WHERE ($1::text IS NULL OR host_id = $1)
       AND ($2::boolean IS NULL OR (resolved_at IS NULL) = $2) ORDER BY id DESC LIMIT $3`,
    [input.hostId ?? null, input.open ?? null, input.limit],
  );
  return result.rows.map(toDrift);
}

export async function openDriftCounts(pool: Pool): Promise<Record<DriftKind, number>> {
  const result = await pool.query<{ kind: DriftKind; n: string }>(
    'SELECT kind, count(*) AS n FROM drift WHERE resolved_at IS NULL GROUP BY kind',
  );
  const counts = Object.fromEntries(DRIFT_KINDS.map((k) => [k, 0])) as Record<DriftKind, number>;
  for (const row of result.rows) counts[row.kind] = Number(row.n);
  return counts;
}
