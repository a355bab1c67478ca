/** The per-principal token bucket: its limits, and the cap that bounds its memory whatever the principals. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RateLimiter } from './rate-limiter';

describe('RateLimiter', () => {
  test('each key gets a burst, then waits for the refill; another key is unaffected', () => {
    const limiter = new RateLimiter({ burst: 3, refillPerSecond: 0.5 });
    const at = (nowMs: number, key = 'token:a') => limiter.take({ key, nowMs });
    assert.deepEqual([at(0), at(0), at(0)], [0, 0, 0]);
    assert.equal(at(0), 2, 'one token takes 2 s at 0.5 per second');
    assert.equal(at(0, 'token:b'), 0);
    assert.equal(at(1000), 1, 'half a token after 1 s: wait one more second');
    assert.equal(at(2000), 0, 'a whole token after 2 s');
    assert.equal(at(2000), 2);
  });

  test('distinct principals never hold more buckets than the cap', () => {
    const limiter = new RateLimiter({ burst: 5, refillPerSecond: 1 }, { maxPrincipals: 100 });
    for (let i = 0; i < 20_000; i++) limiter.take({ key: `jwt:subject-${i}`, nowMs: i });
    assert.equal(limiter.size, 100);
  });

  test('a principal that keeps sending stays limited while others come and go past the cap', () => {
    const limiter = new RateLimiter({ burst: 2, refillPerSecond: 0.001 }, { maxPrincipals: 10 });
    const hot = () => limiter.take({ key: 'jwt:flooder', nowMs: 0 });
    assert.deepEqual([hot(), hot()], [0, 0]);
    for (let i = 0; i < 1000; i++) {
      limiter.take({ key: `jwt:passer-by-${i}`, nowMs: 0 });
      assert.ok(hot() > 0, `still limited after ${i + 1} other principals`);
    }
    assert.ok(limiter.size <= 10);
  });
});
