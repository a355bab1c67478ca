/**
 * Hosts, their liveness leases and their inventory reports. A host's lease is the row `host:<id>` in `leases`;
 * its fencing token only grows, and every ownership write and inventory report names the token it holds.
 */
import type { Pool, PoolClient } from 'pg';
import { recordEvent } from './events';

export const HOST_STATES = ['up', 'down', 'maintenance'] as const;
export type HostState = (typeof HOST_STATES)[number];

export interface HostRegistration {
  id: string;
  address: string;
  libvirtUri: string;
  cpus: number;
  memoryMib: number;
  diskMib: number;
  labels: Record<string, string>;
  imageRoot: string;
  /** Pools this host mounts besides `local`, name -> path on this host (config agent.storagePools). Default {}. */
  storagePools?: Record<string, string>;
  /** Where QEMU on this host listens for incoming migration streams; default `address`. */
  migrationAddress?: string;
  /** The URI peers' libvirtds reach this one by, for peer-to-peer migration. */
  peerLibvirtUri?: string;
}

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

export interface InventoryDomain {
  name: string;
  uuid: string;
  state: string;
}

export const hostLeaseResource = (hostId: string): string => `host:${hostId}`;

/** Upserts the host's facts. Maintenance is an operator's decision and survives a re-registration. */
export async function registerHost(pool: Pool, host: HostRegistration): Promise<void> {
  await pool.query(
    `INSERT INTO hosts (id, address, libvirt_uri, cpus, memory_mib, disk_mib, labels, image_root, storage_pools,
       migration_address, peer_libvirt_uri)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, libvirt_uri = EXCLUDED.libvirt_uri,
       cpus = EXCLUDED.cpus, memory_mib = EXCLUDED.memory_mib, disk_mib = EXCLUDED.disk_mib,
       labels = EXCLUDED.labels, image_root = EXCLUDED.image_root, storage_pools = EXCLUDED.storage_pools,
       migration_address = EXCLUDED.migration_address, peer_libvirt_uri = EXCLUDED.peer_libvirt_uri,
       updated_at = now()`,
    [
      host.id,
      host.address,
      host.libvirtUri,
      host.cpus,
      host.memoryMib,
      host.diskMib,
      JSON.stringify(host.labels),
      host.imageRoot,
      JSON.stringify(host.storagePools ?? {}),
      host.migrationAddress ?? null,
      host.peerLibvirtUri ?? null,
    ],
  );
}

/** Records where the agent's DWCP receiver listens; the port may be ephemeral, so it is known only after listen. */
export async function setHostDwcpEndpoint(pool: Pool, input: { hostId: string; endpoint: string }): Promise<void> {
  await pool.query('UPDATE hosts SET dwcp_endpoint = $2, updated_at = now() WHERE id = $1', [
    input.hostId,
    input.endpoint,
  ]);
}

export async function getHostDwcpEndpoint(pool: Pool, hostId: string): Promise<string | undefined> {
  const result = await pool.query<{ dwcp_endpoint: string | null }>('SELECT dwcp_endpoint FROM hosts WHERE id = $1', [
    hostId,
  ]);
  return result.rows[0]?.dwcp_endpoint ?? undefined;
}

/**
 * Takes the host's lease for a new agent incarnation: the token grows, so anything the previous incarnation
 * still tries under its token is refused. A host that was down comes back up.
 */
export async function acquireHostLease(
  pool: Pool,
  input: { hostId: string; holder: string; ttlMs: number },
): Promise<number> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const lease = await client.query<{ fencing_token: string }>(
      `INSERT INTO leases (resource, holder, fencing_token, expires_at)
       VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond')
       ON CONFLICT (resource) DO UPDATE SET holder = EXCLUDED.holder, fencing_token = leases.fencing_token + 1,
         expires_at = EXCLUDED.expires_at, acquired_at = now(), renewed_at = now()
       RETURNING fencing_token`,
      [hostLeaseResource(input.hostId), input.holder, input.ttlMs],
    );
    const token = Number(lease.rows[0]!.fencing_token);
    await client.query(
      `WITH token AS (SELECT $2::bigint AS fencing_token), ${REVIVE_HOST_CTES('$1')} SELECT count(*) FROM revived`,
      [input.hostId, token],
    );
    await client.query('COMMIT');
    return token;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/**
 * Down to up, with its event in the same statement (whoever sees the host up also sees why), for a statement that
 * defines a CTE `token` with the live lease's `fencing_token` (no row: nothing happens). Maintenance is left
 * alone: it is the operator's.
 */
const REVIVE_HOST_CTES = (hostIdParam: string): string => `
  revived AS (
    UPDATE hosts SET state = 'up', state_changed_at = now(), updated_at = now()
    WHERE id = ${hostIdParam} AND state = 'down' AND EXISTS (SELECT 1 FROM token)
    RETURNING id),
  up_event AS (
    INSERT INTO events (kind, host_id, message)
    SELECT 'host.up', id, 'host ' || id || ' is up again (lease token ' || (SELECT fencing_token FROM token) || ')'
    FROM revived)`;

export type LeaseRenewal = 'renewed' | 'expired' | 'lost';

/**
 * `expired`: still ours but too late, so the holder must take a new token. `lost`: another incarnation holds the
 * lease, so this one is fenced off and must stop.
 */
export async function renewHostLease(
  pool: Pool,
  input: { hostId: string; holder: string; token: number; ttlMs: number },
): Promise<LeaseRenewal> {
  // A live lease just extended means a host marked down is not: the monitor's expiry check can read the lease table
  // before a new agent's first lease commits and mark the host down after it, and only a renewal brings it back.
  // One statement, so the heartbeat costs one round trip.
  const renewed = await pool.query<{ renewed: string }>(
    `WITH token AS (
       UPDATE leases SET expires_at = now() + $4 * interval '1 millisecond', renewed_at = now()
       WHERE resource = $1 AND holder = $2 AND fencing_token = $3 AND expires_at > now()
       RETURNING fencing_token), ${REVIVE_HOST_CTES('$5')}
     SELECT count(*) AS renewed FROM token`,
    [hostLeaseResource(input.hostId), input.holder, input.token, input.ttlMs, input.hostId],
  );
  if (Number(renewed.rows[0]!.renewed) === 1) return 'renewed';
  const current = await pool.query<{ holder: string; fencing_token: string }>(
    'SELECT holder, fencing_token FROM leases WHERE resource = $1',
    [hostLeaseResource(input.hostId)],
  );
  const row = current.rows[0];
  return row && row.holder === input.holder && Number(row.fencing_token) === input.token ? 'expired' : 'lost';
}

/**
 * Marks every up host whose lease has expired as down and records why, in one statement: whoever sees the host down
 * also sees its event. Returns the host ids.
 */
export async function markExpiredHostsDown(pool: Pool): Promise<string[]> {
  const result = await pool.query<{ host_id: string }>(
    `WITH down AS (
       UPDATE hosts h SET state = 'down', state_changed_at = now(), updated_at = now()
       WHERE h.state = 'up' AND NOT EXISTS (
         SELECT 1 FROM leases l WHERE l.resource = 'host:' || h.id AND l.expires_at > now())
       RETURNING h.id, (SELECT fencing_token FROM leases l WHERE l.resource = 'host:' || h.id) AS fencing_token)
     INSERT INTO events (kind, host_id, message)
     SELECT 'host.down', id, 'host ' || id || ' lease expired (token ' || coalesce(fencing_token::text, 'none') || '); marked down'
     FROM down RETURNING host_id`,
  );
  return result.rows.map((r) => r.host_id);
}

/** The host's current fencing token, if its lease is alive; read inside the caller's transaction. */
export async function liveHostToken(client: Pool | PoolClient, hostId: string): Promise<number | undefined> {
  const result = await client.query<{ fencing_token: string }>(
    'SELECT fencing_token FROM leases WHERE resource = $1 AND expires_at > now()',
    [hostLeaseResource(hostId)],
  );
  const row = result.rows[0];
  return row ? Number(row.fencing_token) : undefined;
}

/**
 * Stores a report if it is newer than the stored one, (token, seq) ordered, and if its token is the host's current
 * one: a fenced-off agent cannot overwrite what the live one saw. Returns whether it was stored.
 */
export async function recordInventory(
  pool: Pool,
  input: { hostId: string; leaseToken: number; seq: number; observedAt: Date; domains: InventoryDomain[] },
): Promise<boolean> {
  const result = await pool.query(
    `INSERT INTO inventory_reports (host_id, lease_token, seq, observed_at, domains)
     SELECT $1, $2, $3, $4, $5
     WHERE EXISTS (SELECT 1 FROM leases WHERE resource = 'host:' || $1 AND fencing_token = $2)
     ON CONFLICT (host_id) DO UPDATE SET lease_token = EXCLUDED.lease_token, seq = EXCLUDED.seq,
       observed_at = EXCLUDED.observed_at, domains = EXCLUDED.domains, received_at = now()
     WHERE (inventory_reports.lease_token, inventory_reports.seq) < (EXCLUDED.lease_token, EXCLUDED.seq)`,
    [input.hostId, input.leaseToken, input.seq, input.observedAt, JSON.stringify(input.domains)],
  );
  return result.rowCount === 1;
}

export async function databaseNow(pool: Pool): Promise<Date> {
  const result = await pool.query<{ now: Date }>('SELECT now() AS now');
  return result.rows[0]!.now;
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
    h.migration_address, h.peer_libvirt_uri, h.dwcp_endpoint, h.state,
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

/** Maintenance off returns the host to up only if its agent still holds a live lease. */
export async function setHostMaintenance(
  pool: Pool,
  input: { hostId: string; enabled: boolean },
): Promise<HostRecord | undefined> {
  const result = await pool.query(
    `UPDATE hosts h SET state = CASE WHEN $2 THEN 'maintenance'
         WHEN EXISTS (SELECT 1 FROM leases l WHERE l.resource = 'host:' || h.id AND l.expires_at > now()) THEN 'up'
         ELSE 'down' END,
       state_changed_at = now(), updated_at = now()
     WHERE id = $1 AND (state = 'maintenance') <> $2`,
    [input.hostId, input.enabled],
  );
  if (result.rowCount === 1) {
    await recordEvent(pool, {
      kind: input.enabled ? 'host.maintenance.on' : 'host.maintenance.off',
      hostId: input.hostId,
      message: `maintenance ${input.enabled ? 'on' : 'off'} for host ${input.hostId}`,
    });
  }
  return getHost(pool, input.hostId);
}
