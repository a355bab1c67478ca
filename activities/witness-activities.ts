/**
 * The witness activity, run by a peer host's agent on `host-<hostId>` when failoverHost asks it about a suspect
 * host: it tries the suspect's agent and libvirtd from this host, and signs what it saw with this host's witness
 * key. It only reads, so a retry simply probes again and signs a fresh vote for the same round; the control side
 * counts one vote per witness (native/consensus/vote-certificate.ts).
 */
import { ApplicationFailure, cancellationSignal } from '@temporalio/activity';
import { connect } from 'node:net';

import { signWitnessVote, type SignedWitnessVote, type WitnessKey } from '../native/consensus';
import { DomainState, isLibvirtError, LibvirtConnection } from '../native/libvirt';

/** What the witness needs of a libvirt connection to the suspect's daemon. */
export type WitnessLibvirt = Pick<LibvirtConnection, 'listAllDomains'>;

export interface WitnessActivityDeps {
  hostId: string;
  key: WitnessKey;
  /** Config failover.witnessProbeTimeoutMs: each channel gets this long to answer. */
  probeTimeoutMs: number;
  /** Default: a LibvirtConnection whose virsh is killed after probeTimeoutMs. */
  connectLibvirt?: (uri: string) => WitnessLibvirt;
}

export interface WitnessHostInput {
  /** The failover workflow's id. */
  round: string;
  suspectHostId: string;
  suspectToken: number;
  /** host:port of the suspect's DWCP receiver. */
  agentEndpoint?: string;
  /** The suspect's libvirtd as peers reach it. */
  peerLibvirtUri?: string;
}

/**
 * Every state in which a domain has a QEMU process. A paused or shutting-down guest still holds its disks, so a
 * copy started elsewhere would write them twice: failover must treat it as running.
 */
const ACTIVE_STATES = [
  DomainState.running,
  DomainState.blocked,
  DomainState.paused,
  DomainState.shuttingDown,
  DomainState.pmSuspended,
] as const;

export function createWitnessActivities(deps: WitnessActivityDeps) {
  if (deps.key.hostId !== deps.hostId) {
    throw new Error(`witness key belongs to ${deps.key.hostId}, not to this host ${deps.hostId}`);
  }
  const connectLibvirt =
    deps.connectLibvirt ?? ((uri: string) => new LibvirtConnection({ uri, commandTimeoutMs: deps.probeTimeoutMs }));

  return {
    async witnessHost(input: WitnessHostInput): Promise<SignedWitnessVote> {
      if (input.suspectHostId === deps.hostId) {
        throw ApplicationFailure.nonRetryable(`${deps.hostId} cannot witness about itself`, 'InvalidWitnessInput');
      }
      const endpoint = input.agentEndpoint === undefined ? undefined : parseEndpoint(input.agentEndpoint);
      const signal = cancellationSignal();
      const [agentReachable, libvirt] = await Promise.all([
        endpoint === undefined ? false : probeTcp({ ...endpoint, timeoutMs: deps.probeTimeoutMs, signal }),
        input.peerLibvirtUri === undefined
          ? undefined
          : listActiveDomains(connectLibvirt(input.peerLibvirtUri), deps.probeTimeoutMs),
      ]);
      signal.throwIfAborted();
      return signWitnessVote(deps.key, {
        round: input.round,
        suspectHostId: input.suspectHostId,
        suspectToken: input.suspectToken,
        // The agent is what renews the lease and runs guests: a dead agent beside a live libvirtd is a host to fail
        // over (its watchdog stops the guests), and what libvirtd still runs is reported for the restart to respect.
        verdict: agentReachable ? 'alive' : 'unreachable',
        agentReachable,
        libvirtReachable: libvirt !== undefined,
        ...(libvirt === undefined ? {} : { runningDomains: libvirt }),
        issuedAt: new Date().toISOString(),
      });
    },
  };
}

/**
 * A malformed endpoint is the caller's mistake, not an observation: voting 'unreachable' on it would count a typo
 * towards fencing a host.
 */
function parseEndpoint(endpoint: string): { host: string; port: number } {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(endpoint);
  const port = Number(match?.[3]);
  const host = match?.[1] ?? match?.[2];
  if (host === undefined || !(port >= 1 && port <= 65535)) {
    throw ApplicationFailure.nonRetryable(
      `agentEndpoint ${JSON.stringify(endpoint)} is not host:port`,
      'InvalidWitnessInput',
    );
  }
  return { host, port };
}

/** Whether a TCP connection to the endpoint opens within the timeout; it is closed at once. */
function probeTcp(input: { host: string; port: number; timeoutMs: number; signal: AbortSignal }): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: input.host, port: input.port });
    const finish = (reachable: boolean) => {
      clearTimeout(timer);
      input.signal.removeEventListener('abort', onAbort);
      socket.destroy();
      resolve(reachable);
    };
    const onAbort = () => finish(false);
    const timer = setTimeout(() => finish(false), input.timeoutMs);
    input.signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
  });
}

/**
 * The suspect's active domains, or undefined when its libvirtd gave no list within the timeout. Any libvirt error
 * counts as no answer, a refusal too: the witness reports only a daemon that showed it the guests. An error that
 * is not libvirt's (virsh missing on this host) means the witness saw nothing, so it fails instead of voting.
 */
async function listActiveDomains(conn: WitnessLibvirt, timeoutMs: number): Promise<string[] | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), timeoutMs);
  });
  try {
    const domains = await Promise.race([conn.listAllDomains({ states: ACTIVE_STATES }), timedOut]);
    return domains?.map((d) => d.name);
  } catch (err) {
    if (isLibvirtError(err)) return undefined;
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
