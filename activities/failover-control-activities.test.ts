/**
 * The storm gate of failover against a real PostgreSQL. Hosts of one partition stop renewing up to a heartbeat (or an
 * agent's drain) apart, and the monitor marks each down a tick later: a host whose lease lapsed counts toward the
 * storm before it is marked down, and the gate is looked at again at the fence, after the witnesses were asked.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createFailover } from '../store/failovers';
import { acquireHostLease, getHost, markExpiredHostsDown, registerHost } from '../store/hosts';
import { testHost } from '../test/support/hosts';
import { createTestDatabase, testConfig, type TestDatabase } from '../test/support/services';
import { createFailoverControlActivities } from './failover-control-activities';

let db: TestDatabase;
const tokens: Record<string, number> = {};

before(async () => {
  db = await createTestDatabase();
  for (const id of ['storm-a', 'storm-b', 'storm-c']) {
    await registerHost(db.pool, testHost(id));
    tokens[id] = await acquireHostLease(db.pool, { hostId: id, holder: `${id}-agent`, ttlMs: 600_000 });
  }
});

after(async () => {
  await db.drop();
});

const lapse = (hostId: string) =>
  db.pool.query(`UPDATE leases SET expires_at = now() - interval '1 second' WHERE resource = $1`, [`host:${hostId}`]);
const stormEvents = async () =>
  (await db.pool.query<{ message: string }>(`SELECT message FROM events WHERE kind = 'failover.storm'`)).rows;

test('a lapsed host counts toward the storm before the monitor marks it down, at the grace and at the fence', async () => {
  const activities = createFailoverControlActivities({ config: testConfig(), pool: db.pool });
  const failoverId = 'failover-storm-a';
  const suspect = { failoverId, hostId: 'storm-a', suspectToken: tokens['storm-a']! };
  await lapse('storm-a');
  assert.deepEqual(await markExpiredHostsDown(db.pool), ['storm-a']);
  await createFailover(db.pool, {
    id: failoverId,
    hostId: 'storm-a',
    suspectToken: suspect.suspectToken,
    suspectedAt: new Date(),
  });

  // One of three lapsed: a lone suspect, no storm.
  assert.deepEqual(await activities.checkSuspect(suspect), { suspect: true });

  // A second one lapses while the witnesses are asked, and the monitor has not marked it down yet.
  await lapse('storm-b');
  assert.equal((await getHost(db.pool, 'storm-b'))?.state, 'up');
  const fence = await activities.fenceSuspect(suspect);
  assert.equal(fence.fenced, false);
  assert.match(fence.storm ?? '', /^2 of 3 hosts are suspect at once \(67% > 55%/);
  const host = await getHost(db.pool, 'storm-a');
  assert.equal(host?.state, 'down', 'not fenced');
  assert.equal(host?.lease?.fencingToken, suspect.suspectToken);

  const again = await activities.checkSuspect(suspect);
  assert.equal(again.storm, true);
  assert.equal((await stormEvents()).length, 1, 'one alert for the failover, however often the gate is asked');
});
