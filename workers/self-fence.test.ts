import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApplicationFailure } from '@temporalio/common';
import type { ActivityExecuteInput } from '@temporalio/worker';

import { ConfigError } from '../config/load-config';
import { configSchema } from '../config/schema';
import { leaseGuardInterceptor, NS_PER_MS, SelfFence, selfFenceTiming } from './self-fence';

function fakeClock(startMs = 1_000) {
  let nowNs = BigInt(startMs) * NS_PER_MS;
  return {
    now: () => nowNs,
    advanceMs: (ms: number) => (nowNs += BigInt(ms) * NS_PER_MS),
  };
}

function setup(fence: () => Promise<void> = () => Promise.resolve()) {
  const clock = fakeClock();
  const lapses: Array<{ deadline: bigint; reason: string }> = [];
  const selfFence = new SelfFence({
    ttlMs: 15_000,
    marginMs: 3_000,
    now: clock.now,
    fence: (lapse) => {
      lapses.push(lapse);
      return fence();
    },
  });
  return { clock, lapses, selfFence };
}

test('the deadline is the send time plus the TTL less the margin', () => {
  const { clock, selfFence } = setup();
  assert.equal(selfFence.deadline(), undefined);
  const sentAt = selfFence.sendTime();
  clock.advanceMs(40); // the query's round trip does not move the deadline later
  assert.equal(selfFence.renewed(sentAt), sentAt + 12_000n * NS_PER_MS);
  assert.equal(selfFence.remainingMs(), 12_000 - 40);
});

test('a newer renewal moves the deadline; an older one arriving late does not', () => {
  const { clock, selfFence } = setup();
  const first = selfFence.sendTime();
  clock.advanceMs(2_000);
  const second = selfFence.sendTime();
  selfFence.renewed(second);
  selfFence.renewed(first);
  assert.equal(selfFence.deadline(), second + 12_000n * NS_PER_MS);
});

test('no fence before the deadline, and exactly one past it however often it is checked', async () => {
  const { clock, lapses, selfFence } = setup();
  selfFence.renewed(selfFence.sendTime());
  clock.advanceMs(11_999);
  assert.equal(selfFence.check(), undefined);
  assert.equal(lapses.length, 0);
  clock.advanceMs(1);
  const first = selfFence.check();
  assert.equal(selfFence.check(), first, 'a check while the fence runs joins it');
  await first;
  clock.advanceMs(5_000);
  await selfFence.check();
  assert.equal(lapses.length, 1);
  assert.equal(lapses[0]?.reason, 'deadline');
  assert.equal(selfFence.isFenced(), true);
  assert.equal(selfFence.fences(), 1);
});

test('a renewal after a fence arms a new deadline whose lapse fences again', async () => {
  const { clock, lapses, selfFence } = setup();
  selfFence.renewed(selfFence.sendTime());
  clock.advanceMs(13_000);
  await selfFence.check();
  selfFence.renewed(selfFence.sendTime());
  assert.equal(selfFence.isFenced(), false);
  clock.advanceMs(11_000);
  assert.equal(selfFence.check(), undefined);
  clock.advanceMs(1_000);
  await selfFence.check();
  assert.equal(lapses.length, 2);
});

test('a failed fence is tried again at the next check', async () => {
  let attempts = 0;
  const { clock, selfFence } = setup(() =>
    ++attempts === 1 ? Promise.reject(new Error('libvirtd down')) : Promise.resolve(),
  );
  selfFence.renewed(selfFence.sendTime());
  clock.advanceMs(12_000);
  await assert.rejects(selfFence.check() as Promise<void>, /libvirtd down/);
  assert.equal(selfFence.isFenced(), false);
  await selfFence.check();
  assert.equal(attempts, 2);
  assert.equal(selfFence.isFenced(), true);
});

test('an expired lease fences at once, even before the local deadline', async () => {
  const { lapses, selfFence } = setup();
  assert.equal(selfFence.leaseExpired(), undefined);
  selfFence.renewed(selfFence.sendTime());
  await selfFence.leaseExpired();
  await selfFence.check();
  assert.deepEqual(
    lapses.map((l) => l.reason),
    ['lease-expired'],
  );
});

test('the margin must leave a heartbeat interval before the deadline', () => {
  const config = (failover: { selfFenceMarginMs: number }, heartbeatIntervalMs = 2000, leaseTtlSeconds = 15) =>
    configSchema.parse({ dwcp: { consensus: { leaseTtlSeconds } }, fleet: { heartbeatIntervalMs }, failover });
  assert.deepEqual(selfFenceTiming(config({ selfFenceMarginMs: 3000 })), {
    ttlMs: 15_000,
    heartbeatIntervalMs: 2000,
    marginMs: 3000,
  });
  assert.equal(selfFenceTiming(config({ selfFenceMarginMs: 12_999 })).marginMs, 12_999);
  assert.throws(
    () => selfFenceTiming(config({ selfFenceMarginMs: 13_000 })),
    (err: unknown) =>
      err instanceof ConfigError &&
      /failover\.selfFenceMarginMs/.test(err.message) &&
      /dwcp\.consensus\.leaseTtlSeconds/.test(err.message) &&
      /fleet\.heartbeatIntervalMs/.test(err.message),
  );
  // The test fleet's 3 s lease and 500 ms heartbeat leave no room for the default 3 s margin.
  assert.throws(() => selfFenceTiming(config({ selfFenceMarginMs: 3000 }, 500, 3)), ConfigError);
});

test('host work runs only while the lease could be alive, and a lapse is retryable', async () => {
  let live = true;
  const ran: string[] = [];
  const execute = leaseGuardInterceptor({ hostId: 'host-1', leaseLive: () => live })().inbound.execute!;
  const call = { args: [], headers: {} } as unknown as ActivityExecuteInput;
  const next = async () => {
    ran.push('activity');
    return 'done';
  };
  assert.equal(await execute(call, next), 'done');
  live = false;
  await assert.rejects(execute(call, next), (err: unknown) => {
    assert.ok(err instanceof ApplicationFailure);
    assert.equal(err.type, 'HostLeaseLapsed');
    assert.equal(err.nonRetryable, false);
    return true;
  });
  assert.deepEqual(ran, ['activity'], 'the lapsed call never reached the activity');
});
