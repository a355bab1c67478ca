/**
 * The read model of hosts: each host with its lease, its newest inventory report and what is allocated on it.
 * Re-exported by store/hosts, which writes what this reads.
 */
import type { Pool, PoolClient } from 'pg';
import type { PlacementHost } from '../domain/vm-placement';
import type { HostRegistration, HostState } from './hosts';

export interface HostRecord extends Omit<HostRegistration, 'storagePools' | 'migrationAddress'> {
  storagePools: Record<string, string>;
  migrationAddress: string;
  state: HostState;
  /** host:port of the agent's DWCP receiver, once an agent with one has registered. */
  dwcpEndpoint?: string;
  stateChangedAt: string;
  registeredAt: string;
  lease?: { holder: string; fencingToken: number; expiresAt: string; alive: boolean };
  inventory?: { leaseToken: number; seq: number; observedAt: string; domains: number };
  /** The VMs it owns plus the capacity workflows reserved on it (a migration's target): `vms` counts both. */
  allocated: { vms: number; vcpus: number; memoryMib: number; diskMib: number };
}

interface HostRow {
  id: string;
  address: string;
  libvirt_uri: string;
  cpus: number;
  memory_mib: string;
  disk_mib: string;
  labels: Record<string, string>;
  image_root: string | null;
  storage_pools: Record<string, string>;
  migration_address: string | null;
  peer_libvirt_uri: string | null;
  witness_public_key: string | null;
  dwcp_endpoint: string | null;
  state: HostState;
  state_changed_at: Date;
  registered_at: Date;
  holder: string | null;
  fencing_token: string | null;
  expires_at: Date | null;
  lease_alive: boolean | null;
  inv_token: string | null;
  inv_seq: string | null;
  inv_observed_at: Date | null;
  inv_domains: number | null;
  vms: string;
  vcpus: string;
  vm_memory_mib: string;
  vm_disk_mib: string;
}

// VMs and reservations are summed in lateral subqueries: joined side by side they would multiply each other's rows.
// Only disks in the host's own (local) pool fill its disk; a shared pool's live elsewhere.
const HOST_SELECT = `
  SELECT h.id, h.address, h.libvirt_uri, h.cpus, h.memory_mib, h.disk_mib, h.labels, h.image_root, h.storage_pools,
    h.migration_address, h.peer_libvirt_uri, h.witness_public_key, h.dwcp_endpoint, h.state,
    h.state_changed_at, h.registered_at, l.holder, l.fencing_token, l.expires_at, l.expires_at > now() AS lease_alive,
    r.lease_token AS inv_token, r.seq AS inv_seq, r.observed_at AS inv_observed_at,
    jsonb_array_length(r.domains) AS inv_domains,
    v.vms + c.vms AS vms, v.vcpus + c.vcpus AS vcpus, v.memory_mib + c.memory_mib AS vm_memory_mib,
    v.disk_mib + c.disk_mib AS vm_disk_mib
  FROM hosts h
  LEFT JOIN leases l ON l.resource = 'host:' || h.id
  LEFT JOIN inventory_reports r ON r.host_id = h.id
  CROSS JOIN LATERAL (
    SELECT count(*) AS vms, coalesce(sum((v.spec->>'vcpus')::int), 0) AS vcpus,
      coalesce(sum((v.spec->>'memoryMib')::bigint), 0) AS memory_mib,
      coalesce(sum((SELECT coalesce(sum((d->>'sizeMib')::bigint), 0) FROM jsonb_array_elements(v.spec->'disks') d)
        ) FILTER (WHERE coalesce(v.spec->>'storagePool', 'local') = 'local'), 0) AS disk_mib
    FROM vms v WHERE v.host_id = h.id) v
  CROSS JOIN LATERAL (
    SELECT count(*) AS vms, coalesce(sum(c.vcpus), 0) AS vcpus, coalesce(sum(c.memory_mib), 0) AS memory_mib,
      coalesce(sum(c.disk_mib), 0) AS disk_mib
    FROM capacity_reservations c WHERE c.host_id = h.id) c`;

function toHost(row: HostRow): HostRecord {
  return {
    id: row.id,
    address: row.address,
    libvirtUri: row.libvirt_uri,
    cpus: row.cpus,
    memoryMib: Number(row.memory_mib),
    diskMib: Number(row.disk_mib),
    labels: row.labels,
    imageRoot: row.image_root ?? '',
    storagePools: row.storage_pools,
    migrationAddress: row.migration_address ?? row.address,
    ...(row.peer_libvirt_uri ? { peerLibvirtUri: row.peer_libvirt_uri } : {}),
    ...(row.witness_public_key ? { witnessPublicKey: row.witness_public_key } : {}),
    state: row.state,
    ...(row.dwcp_endpoint ? { dwcpEndpoint: row.dwcp_endpoint } : {}),
    stateChangedAt: row.state_changed_at.toISOString(),
    registeredAt: row.registered_at.toISOString(),
    ...(row.holder && row.fencing_token && row.expires_at
      ? {
          lease: {
            holder: row.holder,
            fencingToken: Number(row.fencing_token),
            expiresAt: row.expires_at.toISOString(),
            alive: row.lease_alive === true,
          },
        }
      : {}),
    ...(row.inv_token && row.inv_seq && row.inv_observed_at
      ? {
          inventory: {
            leaseToken: Number(row.inv_token),
            seq: Number(row.inv_seq),
            observedAt: row.inv_observed_at.toISOString(),
            domains: row.inv_domains ?? 0,
          },
        }
      : {}),
    allocated: {
      vms: Number(row.vms),
      vcpus: Number(row.vcpus),
      memoryMib: Number(row.vm_memory_mib),
      diskMib: Number(row.vm_disk_mib),
    },
  };
}

export async function listHosts(client: Pool | PoolClient): Promise<HostRecord[]> {
  const result = await client.query<HostRow>(`${HOST_SELECT} ORDER BY h.id`);
  return result.rows.map(toHost);
}

export async function getHost(client: Pool | PoolClient, hostId: string): Promise<HostRecord | undefined> {
  const result = await client.query<HostRow>(`${HOST_SELECT} WHERE h.id = $1`, [hostId]);
  const row = result.rows[0];
  return row ? toHost(row) : undefined;
}

/** What placement weighs of a host: its state, lease, capacity, labels, pools and what is allocated on it. */
export function placementHost(host: HostRecord): PlacementHost {
  return {
    id: host.id,
    state: host.state,
    leaseAlive: host.lease?.alive ?? false,
    cpus: host.cpus,
    memoryMib: host.memoryMib,
    diskMib: host.diskMib,
    labels: host.labels,
    storagePools: Object.keys(host.storagePools),
    allocated: host.allocated,
  };
}
