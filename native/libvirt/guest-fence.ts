/**
 * Stopping a host's NovaCron guests at once, for self-fencing: the agent's own timer and the host watchdog both call
 * it when the host's lease may be about to expire. Only domains that carry NovaCron's metadata are touched; anything
 * else on the same libvirtd belongs to someone else.
 */
import { DOMAIN_NAME_PATTERN, parseNovaCronMetadata } from './domain-xml';
import { isInvalidState, isNotFound } from './errors';
import type { LibvirtConnection } from './libvirt-connection';
import { DomainState, type DomainSummary } from './libvirt-types';

export interface NovaCronGuest extends DomainSummary {
  vmId: string;
}

export interface GuestFenceResult {
  /** Domains destroyed by this call, or found off by the time the destroy ran. */
  stopped: NovaCronGuest[];
  failed: Array<{ guest: NovaCronGuest; error: string }>;
}

/** Every virsh call is a process: a few at once stop many guests quickly without swamping a small host. */
const CONCURRENCY = 4;

/** The host's NovaCron domains that are not shut off: running, paused, suspended, crashed and the like. */
export async function listActiveNovaCronGuests(conn: LibvirtConnection): Promise<NovaCronGuest[]> {
  const domains = await conn.listAllDomains();
  // A name NovaCron could not have given is someone else's domain, and the driver refuses to pass it to virsh.
  const active = domains.filter(
    (domain) => domain.state !== DomainState.shutOff && DOMAIN_NAME_PATTERN.test(domain.name),
  );
  const guests = await mapLimited(active, async (domain) => {
    try {
      const metadata = parseNovaCronMetadata(await conn.domainGetXMLDesc({ name: domain.name }));
      return metadata ? { ...domain, vmId: metadata.vmId } : undefined;
    } catch (err) {
      // Undefined since it was listed: nothing left to stop.
      if (isNotFound(err)) return undefined;
      throw err;
    }
  });
  return guests.filter((guest): guest is NovaCronGuest => guest !== undefined);
}

/**
 * Hard-stops (virsh destroy: SIGTERM, then SIGKILL) every active NovaCron guest. A guest that went away meanwhile
 * counts as stopped; one whose destroy failed is reported so that the caller can try again.
 */
export async function destroyNovaCronGuests(conn: LibvirtConnection): Promise<GuestFenceResult> {
  const guests = await listActiveNovaCronGuests(conn);
  const result: GuestFenceResult = { stopped: [], failed: [] };
  await mapLimited(guests, async (guest) => {
    try {
      await conn.domainDestroy({ name: guest.name });
      result.stopped.push(guest);
    } catch (err) {
      if (isInvalidState(err) || isNotFound(err)) result.stopped.push(guest);
      else result.failed.push({ guest, error: err instanceof Error ? err.message : String(err) });
    }
  });
  return result;
}

async function mapLimited<T, R>(items: readonly T[], work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(CONCURRENCY, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index] as T);
    }
  });
  await Promise.all(lanes);
  return results;
}
