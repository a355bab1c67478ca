/**
 * Hosts against a real PostgreSQL: the fleet monitor's expiry check racing a new agent's first lease, a
 * late renewal of a lease that really expired, a live lease that no second agent takes, the migration facts and
 * witness key a host registers and the capacity reserved on it.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { testHost } from '../test/support/hosts';
import { createTestDatabase, type TestDatabase } from '../test/support/services';
import { waitUntil } from '../test/support/wait';
import { listEvents } from './events';
import {
  acquireHostLease,
  getHost,
  HostStoreError,
  listHosts,
  markExpiredHostsDown,
  registerHost,
  renewHostLease,
  witnessPublicKeys,
} from './hosts';

let db: TestDatabase;

before(async () => {
  db = await createTestDatabase();
});

after(async () => {
  await db.drop();
});

async function register(hostId: string): Promise<void> {
  await registerHost(db.pool, testHost(hostId));
}

test('a host the monitor marked down while its first lease committed comes back up at the next renewal', async () => {
  await register('race-1');
  // Hold the host row so that the monitor's statement takes its snapshot (no lease yet) and then waits to update.
  const blocker = await db.pool.connect();
  try {
    await blocker.query('BEGIN');
    await blocker.query(`SELECT 1 FROM hosts WHERE id = 'race-1' FOR UPDATE`);
    const monitor = markExpiredHostsDown(db.pool);
    await waitUntil('the monitor to wait for the host row', async () => {
      const { rows } = await db.pool.query<{ waiting: string }>(
        `SELECT count(*) AS waiting FROM pg_stat_activity
          WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE hosts h SET state = ''down''%'`,
      );
      return Number(rows[0]!.waiting) > 0;
    });
    // The agent's lease commits while the host is still up, so taking it brings nothing back up.
    const token = await acquireHostLease(db.pool, { hostId: 'race-1', holder: 'agent-a', ttlMs: 60_000 });
    await blocker.query('COMMIT');
    assert.deepEqual(await monitor, ['race-1']);
    const marked = await getHost(db.pool, 'race-1');
    assert.equal(marked?.state, 'down');
    assert.equal(marked?.lease?.alive, true, 'down with a live lease: the race this test is about');

    assert.equal(
      await renewHostLease(db.pool, { hostId: 'race-1', holder: 'agent-a', token, ttlMs: 60_000 }),
      'renewed',
    );
    assert.equal((await getHost(db.pool, 'race-1'))?.state, 'up');
    const events = await listEvents(db.pool, { hostId: 'race-1', limit: 10 });
    assert.deepEqual(
      events.map((e) => e.kind),
      ['host.up', 'host.down'],
    );
  } finally {
    blocker.release();
  }
});

test('a renewal that comes after the lease expired leaves the host down', async () => {
  await register('late-1');
  const token = await acquireHostLease(db.pool, { hostId: 'late-1', holder: 'agent-b', ttlMs: 1 });
  await waitUntil('the lease to expire and the host to be marked down', async () =>
    (await markExpiredHostsDown(db.pool)).includes('late-1'),
  );
  assert.equal(await renewHostLease(db.pool, { hostId: 'late-1', holder: 'agent-b', token, ttlMs: 60_000 }), 'expired');
  assert.equal((await getHost(db.pool, 'late-1'))?.state, 'down');
  // A new incarnation's lease is what brings it back, with the event that says so.
  const next = await acquireHostLease(db.pool, { hostId: 'late-1', holder: 'agent-c', ttlMs: 60_000 });
  assert.equal(next, token + 1);
  assert.equal((await getHost(db.pool, 'late-1'))?.state, 'up');
  const [latest] = await listEvents(db.pool, { hostId: 'late-1', limit: 1 });
  assert.equal(latest?.kind, 'host.up');
  assert.match(latest.message, new RegExp(`lease token ${next}\\)`));
});

test('a host shows the pools and migration addresses it registered, and its address when it named none', async () => {
  await registerHost(
    db.pool,
    testHost('pools-1', {
      address: '10.0.0.1',
      storagePools: { nfs: '/mnt/nfs' },
      migrationAddress: '10.1.0.1',
      peerLibvirtUri: 'qemu+tcp://10.1.0.1/system',
    }),
  );
  const host = await getHost(db.pool, 'pools-1');
  assert.deepEqual(host?.storagePools, { nfs: '/mnt/nfs' });
  assert.equal(host?.migrationAddress, '10.1.0.1');
  assert.equal(host?.peerLibvirtUri, 'qemu+tcp://10.1.0.1/system');
  await register('pools-2');
  const plain = await getHost(db.pool, 'pools-2');
  assert.deepEqual(plain?.storagePools, {});
  assert.equal(plain?.migrationAddress, '127.0.0.1');
  assert.equal(plain?.peerLibvirtUri, undefined);
});

test('capacity reserved on a host counts as allocated, beside the VMs it owns and their local disks', async () => {
  await register('alloc-1');
  const owned = randomUUID();
  const incoming = randomUUID();
  const spec = (vcpus: number, memoryMib: number, disk: number, storagePool = 'local') =>
    JSON.stringify({
      name: 'x',
      vcpus,
      memoryMib,
      storagePool,
      disks: [{ name: 'root', sizeMib: disk, format: 'qcow2' }],
    });
  await db.pool.query(
    `INSERT INTO vms (id, name, spec, state, host_id) VALUES ($1, 'owned', $2, 'running', 'alloc-1')`,
    [owned, spec(1, 256, 1000)],
  );
  // Its disks are on a shared pool: they take none of the host's disk.
  await db.pool.query(
    `INSERT INTO vms (id, name, spec, state, host_id) VALUES ($1, 'shared', $2, 'running', 'alloc-1')`,
    [randomUUID(), spec(1, 128, 5000, 'nfs')],
  );
  await db.pool.query(`INSERT INTO vms (id, name, spec, state) VALUES ($1, 'incoming', $2, 'running')`, [
    incoming,
    spec(2, 512, 2000),
  ]);
  await db.pool.query(
    `INSERT INTO capacity_reservations (workflow_id, host_id, vm_id, vcpus, memory_mib, disk_mib)
     VALUES ('wf-1', 'alloc-1', $1, 2, 512, 0), ('wf-2', 'alloc-1', $1, 1, 128, 300)`,
    [incoming],
  );
  const expected = { vms: 4, vcpus: 5, memoryMib: 1024, diskMib: 1300 };
  assert.deepEqual((await getHost(db.pool, 'alloc-1'))?.allocated, expected);
  assert.deepEqual((await listHosts(db.pool)).find((h) => h.id === 'alloc-1')?.allocated, expected);
});

/** Ends the host's lease now, as if its agent had stopped renewing it a while ago. */
async function expire(hostId: string): Promise<void> {
  await db.pool.query(`UPDATE leases SET expires_at = now() - interval '1 second' WHERE resource = 'host:' || $1`, [
    hostId,
  ]);
}

test('a live lease is not taken by a second agent; once it expires the second agent takes it with a new token', async () => {
  await register('held-1');
  const first = await acquireHostLease(db.pool, { hostId: 'held-1', holder: 'agent-a', ttlMs: 60_000 });
  await assert.rejects(
    acquireHostLease(db.pool, { hostId: 'held-1', holder: 'agent-b', ttlMs: 60_000 }),
    (err: unknown) => {
      assert.ok(err instanceof HostStoreError);
      assert.equal(err.code, 'HostLeaseHeld');
      assert.match(err.message, /held by agent-a \(token \d+\) for another \d+ ms/);
      const remaining = Number(/another (\d+) ms/.exec(err.message)![1]);
      assert.ok(remaining > 50_000 && remaining <= 60_000, `${remaining} ms left of a 60 s lease`);
      return true;
    },
  );
  const lease = (await getHost(db.pool, 'held-1'))?.lease;
  assert.equal(lease?.holder, 'agent-a');
  assert.equal(lease?.fencingToken, first, 'the refused acquire left the token alone');

  await expire('held-1');
  const second = await acquireHostLease(db.pool, { hostId: 'held-1', holder: 'agent-b', ttlMs: 60_000 });
  assert.equal(second, first + 1);
  assert.equal((await getHost(db.pool, 'held-1'))?.lease?.holder, 'agent-b');
  assert.equal(await renewHostLease(db.pool, { hostId: 'held-1', holder: 'agent-a', token: first, ttlMs: 1 }), 'lost');
});

test('an agent whose own lease expired takes it again with a new token', async () => {
  await register('own-1');
  const first = await acquireHostLease(db.pool, { hostId: 'own-1', holder: 'agent-a', ttlMs: 60_000 });
  await expire('own-1');
  assert.equal(
    await renewHostLease(db.pool, { hostId: 'own-1', holder: 'agent-a', token: first, ttlMs: 1 }),
    'expired',
  );
  const again = await acquireHostLease(db.pool, { hostId: 'own-1', holder: 'agent-a', ttlMs: 60_000 });
  assert.equal(again, first + 1);
  assert.equal(await renewHostLease(db.pool, { hostId: 'own-1', holder: 'agent-a', token: first, ttlMs: 1 }), 'lost');
});

test('a host keeps the witness key of its latest registration, and hosts without one are left out', async () => {
  const key = Buffer.alloc(32, 7).toString('base64');
  await registerHost(db.pool, testHost('witness-1', { witnessPublicKey: key }));
  await register('witness-2');
  assert.equal((await getHost(db.pool, 'witness-1'))?.witnessPublicKey, key);
  assert.equal((await getHost(db.pool, 'witness-2'))?.witnessPublicKey, undefined);
  assert.deepEqual(await witnessPublicKeys(db.pool, ['witness-1', 'witness-2', 'nowhere']), { 'witness-1': key });

  const rotated = Buffer.alloc(32, 9).toString('base64');
  await registerHost(db.pool, testHost('witness-1', { witnessPublicKey: rotated }));
  assert.deepEqual(await witnessPublicKeys(db.pool, ['witness-1']), { 'witness-1': rotated });
  await register('witness-1');
  assert.deepEqual(await witnessPublicKeys(db.pool, ['witness-1']), {}, 'a registration without a key drops it');
});
