/**
 * A token bucket per principal, in memory: each API replica limits on its own. The buckets live in an LRU cache with
 * a cap, so a stream of distinct principals (every JWT subject the identity provider signs is one) cannot grow the
 * process without bound: past the cap, the bucket used longest ago is dropped. A dropped bucket comes back full, which
 * only lets a principal that has been quiet for longer than the cap's worth of other principals start afresh.
 */
import { LRUCache } from 'lru-cache';

export interface RateLimits {
  burst: number;
  refillPerSecond: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

/** The default cap on principals that hold a bucket at once. */
export const MAX_TRACKED_PRINCIPALS = 10_000;

export class RateLimiter {
  private readonly buckets: LRUCache<string, Bucket>;

  constructor(
    private readonly limits: RateLimits,
    options: { maxPrincipals?: number } = {},
  ) {
    this.buckets = new LRUCache({ max: options.maxPrincipals ?? MAX_TRACKED_PRINCIPALS });
  }

  /** How many principals have a bucket now; never more than the cap. */
  get size(): number {
    return this.buckets.size;
  }

  /** 0 when the request may go ahead, otherwise the seconds to wait. */
  take(input: { key: string; nowMs: number }): number {
    const { burst, refillPerSecond } = this.limits;
    const previous = this.buckets.get(input.key) ?? { tokens: burst, at: input.nowMs };
    const tokens = Math.min(burst, previous.tokens + ((input.nowMs - previous.at) / 1000) * refillPerSecond);
    if (tokens < 1) {
      this.buckets.set(input.key, { tokens, at: input.nowMs });
      return Math.max(1, Math.ceil((1 - tokens) / refillPerSecond));
    }
    this.buckets.set(input.key, { tokens: tokens - 1, at: input.nowMs });
    return 0;
  }
}
