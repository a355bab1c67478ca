/**
 * Watches one VM's domain on several hosts' libvirt while a migration runs, keeping every observation, so a test can
 * say afterwards whether the guest ever ran on two hosts at once. Each round asks the hosts one after the other, in
 * the order given, and never two at once: a check of "two running in one round" is sound only for an order in which
 * the host the VM moves to comes first. The VM starts running on the target only after the source has stopped it, so
 * a target seen running followed by a source seen running is two running guests; the other order would also catch
 * an ordinary switchover that happened between the two calls.
 */
import type { DomainState, LibvirtConnection } from '../../native/libvirt';

export interface DomainObservation {
  round: number;
  hostId: string;
  /** When libvirt's answer arrived, ms since the sampler started. */
  atMs: number;
  state: DomainState | 'absent' | 'error';
  error?: string;
}

export interface DomainSampler {
  /** The observations so far, while it keeps sampling. */
  seen(): readonly DomainObservation[];
  /** Stops after the round in progress and returns every observation. */
  stop(): Promise<DomainObservation[]>;
}

export function sampleDomains(input: {
  libvirt: Record<string, LibvirtConnection>;
  vmId: string;
  /** The hosts, the migration's target first. */
  order: string[];
  intervalMs: number;
}): DomainSampler {
  const observations: DomainObservation[] = [];
  const began = performance.now();
  let stopping = false;
  const loop = (async () => {
    for (let round = 0; !stopping; round++) {
      for (const hostId of input.order) {
        try {
          const domain = (await input.libvirt[hostId]!.listAllDomains()).find((d) => d.uuid === input.vmId);
          observations.push({ round, hostId, atMs: performance.now() - began, state: domain?.state ?? 'absent' });
        } catch (err) {
          const error = err instanceof Error ? err.message : String(err);
          observations.push({ round, hostId, atMs: performance.now() - began, state: 'error', error });
        }
      }
      await new Promise((r) => setTimeout(r, input.intervalMs));
    }
  })();
  return {
    seen: () => [...observations],
    async stop() {
      stopping = true;
      await loop;
      return observations;
    },
  };
}

/** The observations as rounds: each host's state in the round, by host id. */
export function rounds(observations: DomainObservation[]): Array<Record<string, DomainObservation['state']>> {
  const byRound: Array<Record<string, DomainObservation['state']>> = [];
  for (const o of observations) (byRound[o.round] ??= {})[o.hostId] = o.state;
  return byRound.filter(Boolean);
}

/** Rounds in which more than one host had the domain running. */
export function doubleRunning(observations: DomainObservation[]): Array<Record<string, DomainObservation['state']>> {
  return rounds(observations).filter((r) => Object.values(r).filter((s) => s === 'running').length > 1);
}

/** How many rounds saw each combination, e.g. `host-2:paused host-1:running` → 31. */
export function stateCounts(observations: DomainObservation[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of rounds(observations)) {
    const key = Object.entries(r)
      .map(([hostId, state]) => `${hostId}:${state}`)
      .join(' ');
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}
