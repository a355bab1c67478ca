/**
 * The agent's side of "a guest never outlives the lease that lets it run": the local deadline by which the host's
 * guests must be stopped if the lease has not been renewed, and the one fence per lapse of it.
 *
 * The deadline is `sentAt + ttl - margin`, where `sentAt` is the monotonic time (process.hrtime.bigint(),
 * CLOCK_MONOTONIC on Linux) taken before the renewal's query left. The store sets `expires_at = now() + ttl` on the
 * database's clock, and the database's now() is read after the query arrived, so the lease really lasts at least
 * `ttl` past `sentAt`: the local deadline is conservative by the margin plus the query's trip, and only durations
 * are compared, never the two clocks' readings, so no skew between them matters (only their rates, a few ppm).
 */
import { ApplicationFailure } from '@temporalio/common';
import type { ActivityExecuteInput, ActivityInboundCallsInterceptor, Next } from '@temporalio/worker';
import { ConfigError } from '../config/load-config';
import type { NovacronConfig } from '../config/schema';

export interface SelfFenceTiming {
  ttlMs: number;
  heartbeatIntervalMs: number;
  marginMs: number;
}

/**
 * The timing in force, refused when a single late heartbeat could fence a healthy host: the margin must leave at
 * least one heartbeat interval between the last renewal and the deadline.
 */
export function selfFenceTiming(config: Pick<NovacronConfig, 'dwcp' | 'fleet' | 'failover'>): SelfFenceTiming {
  const timing = {
    ttlMs: config.dwcp.consensus.leaseTtlSeconds * 1000,
    heartbeatIntervalMs: config.fleet.heartbeatIntervalMs,
    marginMs: config.failover.selfFenceMarginMs,
  };
  if (timing.marginMs >= timing.ttlMs - timing.heartbeatIntervalMs) {
    throw new ConfigError(
      `invalid config: failover.selfFenceMarginMs (${timing.marginMs}) must be less than ` +
        `dwcp.consensus.leaseTtlSeconds * 1000 (${timing.ttlMs}) - fleet.heartbeatIntervalMs ` +
        `(${timing.heartbeatIntervalMs}), or every late heartbeat stops the host's guests`,
    );
  }
  return timing;
}

export const NS_PER_MS = 1_000_000n;

export interface SelfFenceInput {
  ttlMs: number;
  marginMs: number;
  /** Monotonic nanoseconds; process.hrtime.bigint in the agent, a fake clock in tests. */
  now: () => bigint;
  /**
   * Stops the host's guests. A rejection (libvirtd unreachable, a destroy that failed) leaves this lapse unfenced,
   * so the next check tries again.
   */
  fence: (lapse: { deadline: bigint; reason: SelfFenceReason }) => Promise<void>;
}

export type SelfFenceReason = 'deadline' | 'lease-expired';

/**
 * Tracks the newest successful renewal and fences once per lapse: a later successful renewal gives a new deadline,
 * and only a lapse of that one fences again. Fencing never undoes itself: nothing here starts a guest.
 */
export class SelfFence {
  private lastSentAt: bigint | undefined;
  private fencedDeadline: bigint | undefined;
  private fencing: Promise<void> | undefined;
  private fenceCount = 0;

  constructor(private readonly input: SelfFenceInput) {}

  /** Read before sending a renewal or an acquire; hand the value to `renewed` once the store says it succeeded. */
  sendTime(): bigint {
    return this.input.now();
  }

  /** Records a successful renewal or acquire sent at `sentAt`; returns the deadline now in force. */
  renewed(sentAt: bigint): bigint {
    if (this.lastSentAt === undefined || sentAt > this.lastSentAt) this.lastSentAt = sentAt;
    return this.deadline() as bigint;
  }

  /** When the guests must be stopped by, as monotonic nanoseconds; undefined before the first lease. */
  deadline(): bigint | undefined {
    if (this.lastSentAt === undefined) return undefined;
    return this.lastSentAt + BigInt(this.input.ttlMs - this.input.marginMs) * NS_PER_MS;
  }

  /** Milliseconds left before the deadline (negative past it); undefined before the first lease. */
  remainingMs(): number | undefined {
    const deadline = this.deadline();
    return deadline === undefined ? undefined : Number((deadline - this.input.now()) / NS_PER_MS);
  }

  /** True once the current deadline's lapse has been fenced. */
  isFenced(): boolean {
    const deadline = this.deadline();
    return deadline !== undefined && this.fencedDeadline === deadline;
  }

  fences(): number {
    return this.fenceCount;
  }

  /** Fences when the deadline has passed and this lapse is not fenced yet. Call it often (every 100–200 ms). */
  check(): Promise<void> | undefined {
    const deadline = this.deadline();
    if (deadline === undefined || this.input.now() < deadline) return this.fencing;
    return this.fenceLapse(deadline, 'deadline');
  }

  /**
   * Fences at once, whatever the local deadline says: the store reported the lease expired, so whatever the clocks
   * did, the guests no longer have a lease.
   */
  leaseExpired(): Promise<void> | undefined {
    const deadline = this.deadline();
    if (deadline === undefined) return undefined;
    return this.fenceLapse(deadline, 'lease-expired');
  }

  private fenceLapse(deadline: bigint, reason: SelfFenceReason): Promise<void> | undefined {
    if (this.fencedDeadline === deadline || this.fencing) return this.fencing;
    this.fencing = this.input
      .fence({ deadline, reason })
      .then(() => {
        this.fencedDeadline = deadline;
        this.fenceCount++;
      })
      .finally(() => (this.fencing = undefined));
    return this.fencing;
  }
}

/**
 * Host activities run only while this agent's lease could still be alive: past the self-fence deadline the store
 * may have fenced the host and handed its guests over, so a zombie agent (a partition that heals before its next
 * renewal says `lost`) must not touch libvirt for it. Retryable: once the agent holds a lease again, the work can go
 * on; a fenced host is never given new work in the meantime.
 */
export function leaseGuardInterceptor(input: { hostId: string; leaseLive: () => boolean }) {
  return (): { inbound: ActivityInboundCallsInterceptor } => ({
    inbound: {
      async execute(call: ActivityExecuteInput, next: Next<ActivityInboundCallsInterceptor, 'execute'>) {
        if (!input.leaseLive()) {
          throw ApplicationFailure.retryable(
            `host ${input.hostId}'s agent holds no live lease; it does no host work until it does`,
            'HostLeaseLapsed',
          );
        }
        return next(call);
      },
    },
  });
}
