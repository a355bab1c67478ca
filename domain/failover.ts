/**
 * Host failover's contract and its pure rules, shared by the hostMonitor loop, the failoverHost workflow and the
 * control activities: who is suspect, when a storm withholds failover, which guests restart and in what order.
 */

/** What the control side decides with, read from config once by an activity (a workflow cannot read config). */
export interface FailoverSettings {
  graceMs: number;
  witnesses: number;
  witnessProbeTimeoutMs: number;
  /** `signed` (internet mode) needs 2f+1 signed votes out of 3f+1 witnesses; `majority` more than half. */
  voteMode: 'majority' | 'signed';
}

export interface FailoverHostInput {
  hostId: string;
  /** The lease token the host held when its lease expired: the failover is for that incarnation only. */
  suspectToken: number;
  /** When the lease expired (ISO): suspicion starts there. */
  suspectedAt: string;
  settings: FailoverSettings;
}

/**
 * One failover per lapsed lease: a host that comes back and fails again gets a new one. The expiry is part of it
 * because Temporal's history can outlive the store's rows (a database rebuilt, or test databases sharing one
 * server), and a token alone would then name an old failover, whose id Temporal refuses to start again.
 */
export function failoverWorkflowId(input: { hostId: string; suspectToken: number; suspectedAt: string }): string {
  return `failover-${input.hostId}-${input.suspectToken}-${Date.parse(input.suspectedAt)}`;
}

export interface StormVerdict {
  suspect: number;
  total: number;
  share: number;
  threshold: number;
  storm: boolean;
}

/**
 * More than `threshold` of the fleet suspect at once looks like the control plane's own partition, not host
 * failures, so nothing fails over (Kubernetes' --unhealthy-zone-threshold, 0.55). Hosts in maintenance do not count.
 */
export function judgeStorm(input: { suspect: number; total: number; threshold: number }): StormVerdict {
  const share = input.total === 0 ? 0 : input.suspect / input.total;
  return { ...input, share, storm: input.suspect > 0 && share > input.threshold };
}

export interface FailoverVmCandidate {
  vmId: string;
  name: string;
  ha: boolean;
  haPriority: number;
  storagePool: string;
  state: string;
}

export type FailoverVmDecision =
  { kind: 'restart' } | { kind: 'skip'; outcome: 'not-ha' | 'not-restartable'; reason: string };

/** Whether a guest of a failed host restarts elsewhere; the reason is what the report shows for one that does not. */
export function decideFailoverVm(vm: FailoverVmCandidate): FailoverVmDecision {
  if (!vm.ha) return { kind: 'skip', outcome: 'not-ha', reason: 'marked ha: false; left with its host' };
  if (vm.storagePool === 'local') {
    return {
      kind: 'skip',
      outcome: 'not-restartable',
      reason: "its disks are on the failed host's local storage; no other host can open them",
    };
  }
  if (vm.state !== 'running') {
    return { kind: 'skip', outcome: 'not-restartable', reason: `it was ${vm.state}, not running, on the failed host` };
  }
  return { kind: 'restart' };
}

/**
 * Restart waves: highest haPriority first, all of one priority side by side (a lower priority never takes the
 * capacity a higher one needs, and guests of equal priority do not wait on each other). Ties by name, so the
 * order is the same on every replay.
 */
export function restartWaves<T extends Pick<FailoverVmCandidate, 'haPriority' | 'name'>>(vms: T[]): T[][] {
  const sorted = [...vms].sort((a, b) => b.haPriority - a.haPriority || a.name.localeCompare(b.name));
  const waves: T[][] = [];
  for (const vm of sorted) {
    const last = waves.at(-1);
    if (last && last[0]!.haPriority === vm.haPriority) last.push(vm);
    else waves.push([vm]);
  }
  return waves;
}

/** Domains witnesses still saw running on the suspect: starting one of those elsewhere would run it twice. */
export function domainsSeenRunning(votes: ReadonlyArray<{ runningDomains?: string[] }>): Set<string> {
  const seen = new Set<string>();
  for (const vote of votes) for (const name of vote.runningDomains ?? []) seen.add(name);
  return seen;
}
