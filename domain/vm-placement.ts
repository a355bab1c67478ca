/**
 * Host placement for new VMs and migration targets (ITP, first cut): filters, then a weighted score, as in Nova's
 * filter scheduler. Pure, so the claim activity runs it under a lock and the unit tests run it alone.
 */
import { LOCAL_STORAGE_POOL } from './vm-spec';

export interface PlacementHost {
  id: string;
  state: 'up' | 'down' | 'fenced' | 'maintenance';
  leaseAlive: boolean;
  cpus: number;
  memoryMib: number;
  diskMib: number;
  labels: Readonly<Record<string, string>>;
  /** Storage pools the host mounts besides `local`, which every host has. */
  storagePools: readonly string[];
  /** Already committed to VMs on this host, and reserved for VMs coming to it. */
  allocated: { vcpus: number; memoryMib: number; diskMib: number; vms: number };
}

export interface PlacementRequest {
  vcpus: number;
  memoryMib: number;
  diskMib: number;
  hostId?: string;
  region?: string;
  zone?: string;
  /** Where the VM's disks live; a host offers the VM only when it mounts that pool. Default `local`. */
  storagePool?: string;
  /** Hosts that may not take it, such as a migration's source. */
  excludeHostIds?: readonly string[];
}

export interface PlacementPolicy {
  cpuOvercommit: number;
  memoryReserveMib: number;
}

export interface PlacementCandidate {
  hostId: string;
  score: number;
}

export type PlacementResult =
  { ok: true; hostId: string; candidates: PlacementCandidate[] } | { ok: false; reasons: Record<string, string> };

/** Why a host cannot take the VM, or undefined when it can. */
export function rejectReason(host: PlacementHost, req: PlacementRequest, policy: PlacementPolicy): string | undefined {
  if (host.state !== 'up') return `host is ${host.state}`;
  if (!host.leaseAlive) return 'host lease has expired';
  if (req.excludeHostIds?.includes(host.id)) return 'excluded by the request';
  if (req.hostId && req.hostId !== host.id) return 'not the requested host';
  if (req.region && host.labels.region !== req.region) return `region ${host.labels.region ?? 'unset'}`;
  if (req.zone && host.labels.zone !== req.zone) return `zone ${host.labels.zone ?? 'unset'}`;
  const pool = req.storagePool ?? LOCAL_STORAGE_POOL;
  if (pool !== LOCAL_STORAGE_POOL && !host.storagePools.includes(pool)) return `does not mount storage pool ${pool}`;
  const freeVcpus = host.cpus * policy.cpuOvercommit - host.allocated.vcpus;
  if (freeVcpus < req.vcpus) return `needs ${req.vcpus} vCPUs, ${freeVcpus} free`;
  const freeMemory = host.memoryMib - policy.memoryReserveMib - host.allocated.memoryMib;
  if (freeMemory < req.memoryMib) return `needs ${req.memoryMib} MiB memory, ${freeMemory} free`;
  const freeDisk = host.diskMib - host.allocated.diskMib;
  if (freeDisk < req.diskMib) return `needs ${req.diskMib} MiB disk, ${freeDisk} free`;
  return undefined;
}

/**
 * Spreads load: the score favours free memory (the resource that cannot be overcommitted), then free vCPUs, then
 * fewer VMs. Ties go to the lowest host id so placement is reproducible.
 */
export function scoreHost(host: PlacementHost, req: PlacementRequest, policy: PlacementPolicy): number {
  const memoryTotal = Math.max(1, host.memoryMib - policy.memoryReserveMib);
  const cpuTotal = Math.max(1, host.cpus * policy.cpuOvercommit);
  const memoryFree = (memoryTotal - host.allocated.memoryMib - req.memoryMib) / memoryTotal;
  const cpuFree = (cpuTotal - host.allocated.vcpus - req.vcpus) / cpuTotal;
  const spread = 1 / (1 + host.allocated.vms);
  return 0.6 * memoryFree + 0.3 * cpuFree + 0.1 * spread;
}

export function placeVm(
  hosts: readonly PlacementHost[],
  req: PlacementRequest,
  policy: PlacementPolicy,
): PlacementResult {
  const reasons: Record<string, string> = {};
  const candidates: PlacementCandidate[] = [];
  for (const host of hosts) {
    const reason = rejectReason(host, req, policy);
    if (reason) reasons[host.id] = reason;
    else candidates.push({ hostId: host.id, score: scoreHost(host, req, policy) });
  }
  candidates.sort((a, b) => b.score - a.score || (a.hostId < b.hostId ? -1 : 1));
  const best = candidates[0];
  return best ? { ok: true, hostId: best.hostId, candidates } : { ok: false, reasons };
}
