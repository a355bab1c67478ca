/**
 * Fencing a host and readmitting it, against a real PostgreSQL: a failover takes over only the expired lease it
 * suspected, the old token is dead for ownership and inventory, the host stays fenced whatever its agent does, and
 * comes back only once no guest restarted elsewhere still runs on it.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { testHost } from '../test/support/hosts';
import { createTestDatabase, type TestDatabase } from '../test/support/services';
import { listEvents } from './events';
import {
  acquireHostLease,
  fenceHost,
  getHost,
  HostStoreError,
  markExpiredHostsDown,
  readmitHost,
  recordInventory,
  registerHost,
  renewHostLease,
  setHostMaintenance,
  type InventoryDomain,
} from './hosts';
import { assignVmOwner, getVm, VmStoreError } from './vms';

let db: TestDatabase;

before(async () => {
  db = await createTestDatabase();
});

after(async () => {
  await db.drop();
});

async function expire(hostId: string): Promise<void> {
  await db.pool.query(`UPDATE leases SET expires_at = now() - interval '1 second' WHERE resource = 'host:' || $1`, [
    hostId,
  ]);
}

/** A registered host whose agent took its lease and then stopped renewing it: down, with its token returned. */
async function deadHost(hostId: string): Promise<number> {
  await registerHost(db.pool, testHost(hostId));
  const token = await acquireHostLease(db.pool, { hostId, holder: `${hostId}-agent`, ttlMs: 60_000 });
  await expire(hostId);
  assert.ok((await markExpiredHostsDown(db.pool)).includes(hostId));
  return token;
}

async function liveHost(hostId: string): Promise<number> {
  await registerHost(db.pool, testHost(hostId));
  return acquireHostLease(db.pool, { hostId, holder: `${hostId}-agent`, ttlMs: 60_000 });
}

/** A guest the host took while its lease was alive, under `token`. */
async function vmOn(name: string, hostId: string, token: number): Promise<string> {
  const vmId = randomUUID();
  await db.pool.query(
    `INSERT INTO vms (id, name, spec, state, host_id, owner_token, owner_generation)
     VALUES ($1, $2, '{}', 'running', $3, $4, 1)`,
    [vmId, name, hostId, token],
  );
  return vmId;
}

const refusedWith = (code: HostStoreError['code'], pattern: RegExp) => (err: unknown) =>
  err instanceof HostStoreError && err.code === code && pattern.test(err.message);

test('a live lease is never fenced, nor a token other than the suspected one', async () => {
  const token = await liveHost('alive-1');
  assert.deepEqual(await fenceHost(db.pool, { hostId: 'alive-1', expectedToken: token, fencedBy: 'fo-1' }), {
    fenced: false,
    token,
  });
  await expire('alive-1');
  assert.deepEqual(await fenceHost(db.pool, { hostId: 'alive-1', expectedToken: token - 1, fencedBy: 'fo-1' }), {
    fenced: false,
    token,
  });
  const host = await getHost(db.pool, 'alive-1');
  assert.equal(host?.lease?.holder, 'alive-1-agent');
  assert.notEqual(host?.state, 'fenced');
  await assert.rejects(
    fenceHost(db.pool, { hostId: 'nowhere', expectedToken: 1, fencedBy: 'fo-1' }),
    refusedWith('HostNotFound', /nowhere/),
  );
});

test('a host in maintenance is not fenced', async () => {
  const token = await deadHost('maint-1');
  await setHostMaintenance(db.pool, { hostId: 'maint-1', enabled: true });
  assert.deepEqual(await fenceHost(db.pool, { hostId: 'maint-1', expectedToken: token, fencedBy: 'fo-m' }), {
    fenced: false,
    token,
  });
  assert.equal((await getHost(db.pool, 'maint-1'))?.state, 'maintenance');
});

test('fencing kills the old token for ownership and inventory, and a repeat by the same fencer agrees', async () => {
  const old = await deadHost('dead-1');
  const vmId = await vmOn('guest-dead-1', 'dead-1', old);
  const fenced = await fenceHost(db.pool, { hostId: 'dead-1', expectedToken: old, fencedBy: 'fo-2' });
  assert.deepEqual(fenced, { fenced: true, token: old + 1 });
  assert.deepEqual(await fenceHost(db.pool, { hostId: 'dead-1', expectedToken: old, fencedBy: 'fo-2' }), fenced);
  assert.deepEqual(await fenceHost(db.pool, { hostId: 'dead-1', expectedToken: old, fencedBy: 'fo-3' }), {
    fenced: false,
    token: old + 1,
  });

  const host = await getHost(db.pool, 'dead-1');
  assert.equal(host?.state, 'fenced');
  assert.equal(host?.lease?.holder, 'fenced-by:fo-2');
  assert.equal(host?.lease?.alive, false);
  const events = await listEvents(db.pool, { hostId: 'dead-1', limit: 10 });
  assert.deepEqual(
    events.filter((e) => e.kind === 'host.fenced').map((e) => e.message),
    [`host dead-1 fenced by fo-2: lease token ${old} -> ${old + 1}`],
  );

  // The zombie agent, back with its old token, can neither renew, nor keep its guest, nor report.
  assert.equal(
    await renewHostLease(db.pool, { hostId: 'dead-1', holder: 'dead-1-agent', token: old, ttlMs: 60_000 }),
    'lost',
  );
  await db.pool.query(`UPDATE leases SET expires_at = now() + interval '1 minute' WHERE resource = 'host:dead-1'`);
  await assert.rejects(
    assignVmOwner(db.pool, { vmId, hostId: 'dead-1', token: old }),
    (err: unknown) => err instanceof VmStoreError && err.code === 'StaleFencingToken',
  );
  await expire('dead-1');
  const report = { hostId: 'dead-1', leaseToken: old, seq: 1, observedAt: new Date(), domains: [] };
  assert.equal(await recordInventory(db.pool, report), false);
  assert.equal((await getVm(db.pool, vmId))?.ownerToken, old);
});

test('a fenced host stays fenced when its agent takes the lease again and renews it', async () => {
  const old = await deadHost('stay-1');
  await fenceHost(db.pool, { hostId: 'stay-1', expectedToken: old, fencedBy: 'fo-4' });
  const token = await acquireHostLease(db.pool, { hostId: 'stay-1', holder: 'stay-1-agent-2', ttlMs: 60_000 });
  assert.equal(token, old + 2);
  assert.equal(
    await renewHostLease(db.pool, { hostId: 'stay-1', holder: 'stay-1-agent-2', token, ttlMs: 60_000 }),
    'renewed',
  );
  assert.ok(!(await markExpiredHostsDown(db.pool)).includes('stay-1'));
  // Nor does a round through maintenance bring it up behind readmit's back.
  await setHostMaintenance(db.pool, { hostId: 'stay-1', enabled: true });
  await setHostMaintenance(db.pool, { hostId: 'stay-1', enabled: false });
  const host = await getHost(db.pool, 'stay-1');
  assert.equal(host?.state, 'fenced');
  assert.equal(host?.lease?.alive, true);
});

test('readmit waits for the agent, its inventory, and the end of every guest restarted elsewhere', async () => {
  const old = await deadHost('back-1');
  const vmId = await vmOn('guest-back-1', 'back-1', old);
  const stays = await vmOn('guest-back-2', 'back-1', old);
  await assert.rejects(
    readmitHost(db.pool, { hostId: 'back-1', by: 'alice' }),
    refusedWith('ReadmitRefused', /it is down; only a fenced host/),
  );
  await fenceHost(db.pool, { hostId: 'back-1', expectedToken: old, fencedBy: 'fo-5' });
  await assert.rejects(
    readmitHost(db.pool, { hostId: 'back-1', by: 'alice' }),
    refusedWith('ReadmitRefused', /no agent holds a live lease/),
  );
  const token = await acquireHostLease(db.pool, { hostId: 'back-1', holder: 'back-1-agent-2', ttlMs: 60_000 });
  await assert.rejects(
    readmitHost(db.pool, { hostId: 'back-1', by: 'alice' }),
    refusedWith('ReadmitRefused', new RegExp(`not reported its inventory under lease token ${token}`)),
  );

  // The failover restarted the first guest on another host; the stale copy still runs here.
  const other = await liveHost('other-1');
  await db.pool.query(`UPDATE vms SET host_id = 'other-1', owner_token = $2 WHERE id = $1`, [vmId, other]);
  const domain = (uuid: string, name: string, state: string): InventoryDomain => ({ name, uuid, state });
  const report = (seq: number, domains: InventoryDomain[]) =>
    recordInventory(db.pool, { hostId: 'back-1', leaseToken: token, seq, observedAt: new Date(), domains });
  assert.equal(
    await report(1, [domain(vmId, 'guest-back-1', 'paused'), domain(stays, 'guest-back-2', 'running')]),
    true,
  );
  await assert.rejects(
    readmitHost(db.pool, { hostId: 'back-1', by: 'alice' }),
    refusedWith('ReadmitRefused', /still active on it.*guest-back-1 \(paused; owned by other-1\)$/),
  );
  assert.equal((await getHost(db.pool, 'back-1'))?.state, 'fenced');

  assert.equal(
    await report(2, [domain(vmId, 'guest-back-1', 'shutoff'), domain(stays, 'guest-back-2', 'running')]),
    true,
  );
  const readmitted = await readmitHost(db.pool, { hostId: 'back-1', by: 'alice' });
  assert.equal(readmitted.token, token);
  assert.ok(Date.parse(readmitted.inventoryObservedAt) > 0);
  assert.equal((await getHost(db.pool, 'back-1'))?.state, 'up');
  const [latest] = await listEvents(db.pool, { hostId: 'back-1', limit: 1 });
  assert.equal(latest?.kind, 'host.readmitted');
  assert.match(latest.message, /readmitted by alice/);
  await assert.rejects(
    readmitHost(db.pool, { hostId: 'back-1', by: 'alice' }),
    refusedWith('ReadmitRefused', /it is up/),
  );
  await assert.rejects(
    readmitHost(db.pool, { hostId: 'nowhere', by: 'alice' }),
    refusedWith('HostNotFound', /nowhere/),
  );
});
