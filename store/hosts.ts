/**
 * Hosts, their liveness leases and their inventory reports. A host's lease is the row `host:<id>` in `leases`;
 * its fencing token only grows, and every ownership write and inventory report names the token it holds.
 * A lease is taken only once it has expired, and a failover may take an expired one over (fenceHost): the host is
 * then 'fenced', and only readmitHost brings it back up.
 */
import type { Pool, PoolClient } from 'pg';
import { recordEvent } from './events';
import { getHost, type HostRecord } from './host-records';
import { inTransaction } from './transaction';

export { getHost, listHosts, type HostRecord } from './host-records';

/** 'down': its lease expired, so it is suspect. 'fenced': a failover took its lease over; readmitHost ends it. */
export const HOST_STATES = ['up', 'down', 'fenced', 'maintenance'] as const;
export type HostState = (typeof HOST_STATES)[number];

export type HostStoreErrorCode = 'HostLeaseHeld' | 'FenceRefused' | 'ReadmitRefused' | 'HostNotFound';

export class HostStoreError extends Error {
  constructor(
    message: string,
    readonly code: HostStoreErrorCode,
  ) {
    super(message);
    this.name = 'HostStoreError';
  }
}

/** A fencer's holder name: no agent is called this, so acquire and readmit tell a fenced lease from an agent's. */
const FENCED_HOLDER_PREFIX = 'fenced-by:';

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
  /** Base64 of the raw 32-byte Ed25519 public key its witness votes are signed with; absent: it signs none. */
  witnessPublicKey?: string;
}

export interface InventoryDomain {
  name: string;
  uuid: string;
  state: string;
}

export const hostLeaseResource = (hostId: string): string => `host:${hostId}`;

/**
 * Upserts the host's facts. Maintenance and fencing are decisions about the host, not facts it reports: they
 * survive a re-registration. The witness key is whatever this registration sends (an agent sends it when it has one).
 */
export async function registerHost(pool: Pool, host: HostRegistration): Promise<void> {
  await pool.query(
    `INSERT INTO hosts (id, address, libvirt_uri, cpus, memory_mib, disk_mib, labels, image_root, storage_pools,
       migration_address, peer_libvirt_uri, witness_public_key)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
     ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, libvirt_uri = EXCLUDED.libvirt_uri,
       cpus = EXCLUDED.cpus, memory_mib = EXCLUDED.memory_mib, disk_mib = EXCLUDED.disk_mib,
       labels = EXCLUDED.labels, image_root = EXCLUDED.image_root, storage_pools = EXCLUDED.storage_pools,
       migration_address = EXCLUDED.migration_address, peer_libvirt_uri = EXCLUDED.peer_libvirt_uri,
       witness_public_key = EXCLUDED.witness_public_key, updated_at = now()`,
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
      host.witnessPublicKey ?? null,
    ],
  );
}

/** The witness keys of those of `hostIds` that registered one, host id -> base64 public key. */
export async function witnessPublicKeys(client: Pool | PoolClient, hostIds: string[]): Promise<Record<string, string>> {
  const result = await client.query<{ id: string; witness_public_key: string }>(
    'SELECT id, witness_public_key FROM hosts WHERE id = ANY($1::text[]) AND witness_public_key IS NOT NULL',
    [hostIds],
  );
  return Object.fromEntries(result.rows.map((r) => [r.id, r.witness_public_key]));
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
 * still tries under its token is refused. Only an expired lease is taken, or one this holder already holds: taking
 * a live lease from another agent would let two agents run the host's guests. A host that was down comes back
 * up; a fenced one stays fenced (its guests may have been restarted elsewhere) until readmitHost.
 * Throws HostLeaseHeld, naming the holder and how long its lease still runs, for the agent to retry after.
 */
export async function acquireHostLease(
  pool: Pool,
  input: { hostId: string; holder: string; ttlMs: number },
): Promise<number> {
  return inTransaction(pool, async (client) => {
    // One statement: ON CONFLICT locks the row, so a renewal or a fence racing it is seen before the expiry test.
    const lease = await client.query<{ fencing_token: string }>(
      `INSERT INTO leases (resource, holder, fencing_token, expires_at)
       VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond')
       ON CONFLICT (resource) DO UPDATE SET holder = EXCLUDED.holder, fencing_token = leases.fencing_token + 1,
         expires_at = EXCLUDED.expires_at, acquired_at = now(), renewed_at = now()
       WHERE leases.expires_at <= now() OR leases.holder = EXCLUDED.holder
       RETURNING fencing_token`,
      [hostLeaseResource(input.hostId), input.holder, input.ttlMs],
    );
    const row = lease.rows[0];
    if (!row) {
      const held = await client.query<{ holder: string; fencing_token: string; remaining_ms: number }>(
        `SELECT holder, fencing_token,
           greatest(0, ceil(extract(epoch FROM expires_at - now()) * 1000))::float8 AS remaining_ms
         FROM leases WHERE resource = $1`,
        [hostLeaseResource(input.hostId)],
      );
      const current = held.rows[0]!;
      throw new HostStoreError(
        `host ${input.hostId}'s lease is held by ${current.holder} (token ${current.fencing_token}) for another ` +
          `${current.remaining_ms} ms; not taken`,
        'HostLeaseHeld',
      );
    }
    const token = Number(row.fencing_token);
    await client.query(
      `WITH token AS (SELECT $2::bigint AS fencing_token), ${REVIVE_HOST_CTES('$1')} SELECT count(*) FROM revived`,
      [input.hostId, token],
    );
    return token;
  });
}

/**
 * Down to up, with its event in the same statement (whoever sees the host up also sees why), for a statement that
 * defines a CTE `token` with the live lease's `fencing_token` (no row: nothing happens). Maintenance is left
 * alone: it is the operator's. So is fenced: a live lease proves the agent runs, not that the guests a failover
 * restarted elsewhere are gone from it; readmitHost checks that.
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

/** The host's lease as it stands, live or not; undefined when no agent ever took it. */
export async function hostLeaseExpiry(
  client: Pool | PoolClient,
  hostId: string,
): Promise<{ token: number; expiresAt: Date; holder: string } | undefined> {
  const result = await client.query<{ fencing_token: string; expires_at: Date; holder: string }>(
    'SELECT fencing_token, expires_at, holder FROM leases WHERE resource = $1',
    [hostLeaseResource(hostId)],
  );
  const row = result.rows[0];
  return row ? { token: Number(row.fencing_token), expiresAt: row.expires_at, holder: row.holder } : undefined;
}

/**
 * Takes an expired lease over without its agent: the token grows past `expectedToken`, so the agent's ownership
 * writes and inventory reports under it are refused from now on, and the holder names the fencer, so the agent's
 * next renewal finds the lease 'lost' and stops. The host becomes 'fenced', with a 'host.fenced' event, in the
 * same statement. Only the token the caller suspected, and only once it has expired: an agent that came back in
 * time keeps its host. A host in maintenance is the operator's and is not fenced. A repeat by the same fencer
 * returns fenced: true with the token it took.
 */
export async function fenceHost(
  client: Pool | PoolClient,
  input: { hostId: string; expectedToken: number; fencedBy: string },
): Promise<{ fenced: boolean; token: number }> {
  const holder = `${FENCED_HOLDER_PREFIX}${input.fencedBy}`;
  // The host row is locked first, so maintenance switched on meanwhile is seen; the lease row's lock makes a
  // racing acquire or renewal either win (the token or expiry no longer match) or wait for this one.
  const fenced = await client.query<{ fencing_token: string }>(
    `WITH host AS (SELECT id FROM hosts WHERE id = $4 AND state <> 'maintenance' FOR UPDATE),
     lease AS (
       UPDATE leases SET fencing_token = fencing_token + 1, holder = $3, renewed_at = now()
       WHERE resource = $1 AND fencing_token = $2 AND expires_at <= now() AND EXISTS (SELECT 1 FROM host)
       RETURNING fencing_token),
     state AS (
       UPDATE hosts SET state = 'fenced', state_changed_at = now(), updated_at = now()
       WHERE id = $4 AND EXISTS (SELECT 1 FROM lease) RETURNING id),
     event AS (
       INSERT INTO events (kind, host_id, message, idempotency_key)
       SELECT 'host.fenced', $4, 'host ' || $4 || ' fenced by ' || $5 || ': lease token ' || $2 || ' -> ' ||
         fencing_token, 'host.fenced:' || $4 || ':' || fencing_token
       FROM lease ON CONFLICT (idempotency_key) DO NOTHING)
     SELECT fencing_token FROM lease`,
    [hostLeaseResource(input.hostId), input.expectedToken, holder, input.hostId, input.fencedBy],
  );
  const row = fenced.rows[0];
  if (row) return { fenced: true, token: Number(row.fencing_token) };
  const known = await client.query('SELECT 1 FROM hosts WHERE id = $1', [input.hostId]);
  if (known.rowCount !== 1) throw new HostStoreError(`host ${input.hostId} does not exist`, 'HostNotFound');
  const current = await hostLeaseExpiry(client, input.hostId);
  return { fenced: current?.holder === holder, token: current?.token ?? 0 };
}

/** libvirt states in which the domain's QEMU may still hold its disks: anything but off or crashed. */
const INACTIVE_DOMAIN_STATES = ['shutoff', 'crashed'];

/**
 * Ends a host's fencing, in one transaction, once it is safe: an agent holds its lease again (a new token), has
 * reported its inventory under that token, and the report shows no guest still active there that the store says
 * another host owns (the copy a failover restarted elsewhere wins; the stale one must be gone first). The host goes
 * up with a 'host.readmitted' event naming `by`. Throws HostNotFound, or ReadmitRefused saying what is missing.
 */
export async function readmitHost(
  pool: Pool,
  input: { hostId: string; by: string },
): Promise<{ token: number; inventoryObservedAt: string }> {
  return inTransaction(pool, async (client) => {
    const hosts = await client.query<{ state: HostState }>('SELECT state FROM hosts WHERE id = $1 FOR UPDATE', [
      input.hostId,
    ]);
    const host = hosts.rows[0];
    if (!host) throw new HostStoreError(`host ${input.hostId} does not exist`, 'HostNotFound');
    const refuse = (why: string) => new HostStoreError(`host ${input.hostId} not readmitted: ${why}`, 'ReadmitRefused');
    if (host.state !== 'fenced') throw refuse(`it is ${host.state}; only a fenced host is readmitted`);
    // Shared: the agent may not give up or lose this lease until the host is up.
    const leases = await client.query<{ holder: string; fencing_token: string }>(
      'SELECT holder, fencing_token FROM leases WHERE resource = $1 AND expires_at > now() FOR SHARE',
      [hostLeaseResource(input.hostId)],
    );
    const lease = leases.rows[0];
    if (!lease || lease.holder.startsWith(FENCED_HOLDER_PREFIX)) {
      throw refuse('no agent holds a live lease on it; start its agent first');
    }
    const token = Number(lease.fencing_token);
    const reports = await client.query<{ observed_at: Date }>(
      'SELECT observed_at FROM inventory_reports WHERE host_id = $1 AND lease_token = $2',
      [input.hostId, token],
    );
    const report = reports.rows[0];
    if (!report) throw refuse(`its agent has not reported its inventory under lease token ${token} yet`);
    const elsewhere = await client.query<{ domain: string; state: string; owner: string }>(
      `SELECT d->>'name' AS domain, d->>'state' AS state, v.host_id AS owner
       FROM inventory_reports r CROSS JOIN LATERAL jsonb_array_elements(r.domains) d
       JOIN vms v ON v.id::text = d->>'uuid'
       WHERE r.host_id = $1 AND v.host_id IS NOT NULL AND v.host_id <> $1 AND NOT (d->>'state' = ANY($2::text[]))
       ORDER BY 1`,
      [input.hostId, INACTIVE_DOMAIN_STATES],
    );
    if (elsewhere.rows.length > 0) {
      const guests = elsewhere.rows.map((r) => `${r.domain} (${r.state}; owned by ${r.owner})`).join(', ');
      throw refuse(
        `guests owned by other hosts are still active on it, as of ${report.observed_at.toISOString()}: ${guests}`,
      );
    }
    await client.query(`UPDATE hosts SET state = 'up', state_changed_at = now(), updated_at = now() WHERE id = $1`, [
      input.hostId,
    ]);
    await recordEvent(client, {
      kind: 'host.readmitted',
      hostId: input.hostId,
      message: `host ${input.hostId} readmitted by ${input.by} (lease token ${token})`,
    });
    return { token, inventoryObservedAt: report.observed_at.toISOString() };
  });
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

/**
 * Maintenance off returns the host to up only if its agent still holds a live lease. A fenced host neither enters
 * nor leaves maintenance: leaving it would bring the host up without readmitHost's checks.
 */
export async function setHostMaintenance(
  pool: Pool,
  input: { hostId: string; enabled: boolean },
): Promise<HostRecord | undefined> {
  const result = await pool.query(
    `UPDATE hosts h SET state = CASE WHEN $2 THEN 'maintenance'
         WHEN EXISTS (SELECT 1 FROM leases l WHERE l.resource = 'host:' || h.id AND l.expires_at > now()) THEN 'up'
         ELSE 'down' END,
       state_changed_at = now(), updated_at = now()
     WHERE id = $1 AND (state = 'maintenance') <> $2 AND state <> 'fenced'`,
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
