/**
 * Control-side activities of host failover, over the store: find suspects (hosts whose lease expired) and open a
 * failover for each unless a storm withholds them, check that a suspect is still one after the grace, pick the
 * witnesses, verify their signed votes, fence, relocate the HA guests and write the report. Each is keyed by the
 * failover's workflow id, so a retry changes nothing twice.
 */
import type { Pool } from 'pg';
import type { NovacronConfig } from '../config/schema';
import {
  decideFailoverVm,
  failoverWorkflowId,
  judgeStorm,
  type FailoverHostInput,
  type FailoverSettings,
  type StormVerdict,
} from '../domain/failover';
import type { VmSpec } from '../domain/vm-spec';
import {
  checkVoteCertificate,
  MIN_SIGNED_WITNESSES,
  type CertificateResult,
  type SignedWitnessVote,
} from '../native/consensus';
import { recordEvent } from '../store/events';
import * as failovers from '../store/failovers';
import { fenceHost, getHost, listHosts, witnessPublicKeys, type HostRecord } from '../store/hosts';
import { relocateVm } from '../store/vm-relocation';
import { finishVmOperation, listVms } from '../store/vms';
import { permanent } from './store-failures';

export type { FailoverReport, FailoverVmOutcome } from '../store/failovers';
export type { CertificateResult, SignedWitnessVote } from '../native/consensus';

/** What observability/metrics.ts's createFailoverMetrics gives; optional, so tests and tools can leave it out. */
export interface FailoverMetricsRecorder {
  suspicions: { inc(labels: { host_id: string }): void };
  confirmations: { inc(labels: { outcome: string }): void };
  fences: { inc(labels: { outcome: string }): void };
  restarts: { inc(labels: { outcome: string }): void };
  failoverSeconds: { observe(labels: { outcome: string }, seconds: number): void };
}

export interface FailoverControlDeps {
  config: NovacronConfig;
  pool: Pool;
  failoverMetrics?: FailoverMetricsRecorder;
}

export interface FailoverClaims {
  /** Failovers still running, to be started (again: starting an already running one is harmless). */
  start: FailoverHostInput[];
  storm: StormVerdict;
  /** Set when suspects exist but nothing was opened, with the alert's reason. */
  withheld?: string;
}

export interface FailoverWitnesses {
  witnesses: string[];
  agentEndpoint?: string;
  peerLibvirtUri?: string;
}

export interface RestartCandidate {
  vmId: string;
  name: string;
  haPriority: number;
  spec: VmSpec;
}

export function createFailoverControlActivities(deps: FailoverControlDeps) {
  const { config, pool, failoverMetrics } = deps;
  // A storm counts every host whose lease lapsed, marked down by the monitor yet or not: hosts of one partition stop
  // renewing up to a heartbeat (and a drain) apart, and the monitor marks them down a tick after that. Maintenance
  // hosts are out of the fleet by the operator's choice; a fenced one is known dead, not suspect.
  const lapsedHosts = (hosts: HostRecord[]) =>
    hosts.filter((h) => (h.state === 'up' || h.state === 'down') && h.lease !== undefined && !h.lease.alive);
  // A failover is claimed only for a lapsed host the monitor has marked down.
  const suspectHosts = (hosts: HostRecord[]) => lapsedHosts(hosts).filter((h) => h.state === 'down');
  const stormOf = (hosts: HostRecord[]): StormVerdict =>
    judgeStorm({
      suspect: lapsedHosts(hosts).length,
      total: hosts.filter((h) => h.state !== 'maintenance').length,
      threshold: config.failover.stormThreshold,
    });
  const stormReason = (storm: StormVerdict) =>
    `${storm.suspect} of ${storm.total} hosts are suspect at once (${Math.round(storm.share * 100)}% > ` +
    `${Math.round(storm.threshold * 100)}%, failover.stormThreshold): automatic failover withheld, as this looks ` +
    `like the control plane's own partition`;
  const settings = (): FailoverSettings => {
    // Internet mode cannot trust a plain majority of peers it reaches over the internet: signed 2f+1 of 3f+1, which
    // needs at least 4 witnesses to tolerate one liar (native/consensus MIN_SIGNED_WITNESSES).
    const signed = (config.dwcp.mode === 'auto' ? config.system.profile : config.dwcp.mode) === 'internet';
    return {
      graceMs: config.failover.graceMs,
      witnesses: signed ? Math.max(config.failover.witnesses, MIN_SIGNED_WITNESSES) : config.failover.witnesses,
      witnessProbeTimeoutMs: config.failover.witnessProbeTimeoutMs,
      voteMode: signed ? 'signed' : 'majority',
    };
  };

  /** The storm's reason, alerted once per failover, when too much of the fleet has lapsed now; else undefined. */
  const stormGate = async (input: { failoverId: string; hostId: string }): Promise<string | undefined> => {
    const storm = stormOf(await listHosts(pool));
    if (!storm.storm) return undefined;
    const reason = stormReason(storm);
    await recordEvent(pool, {
      kind: 'failover.storm',
      hostId: input.hostId,
      workflowId: input.failoverId,
      message: reason,
      idempotencyKey: `failover.storm:${input.failoverId}`,
    });
    failoverMetrics?.confirmations.inc({ outcome: 'withheld-storm' });
    return reason;
  };

  return {
    /** One hostMonitor tick's failover part: suspects, the storm gate, and a failover row per suspect. */
    async claimFailovers(_input: { tick: number }): Promise<FailoverClaims> {
      const hosts = await listHosts(pool);
      const suspects = suspectHosts(hosts);
      const storm = stormOf(hosts);
      if (suspects.length === 0) return { start: [], storm };
      const ids = suspects.map((h) => `${h.id}@${h.lease!.fencingToken}`).join(',');
      const withhold = async (kind: string, reason: string): Promise<FailoverClaims> => {
        await recordEvent(pool, { kind, message: reason, idempotencyKey: `${kind}:${ids}` });
        if (kind === 'failover.storm') failoverMetrics?.confirmations.inc({ outcome: 'withheld-storm' });
        return { start: [], storm, withheld: reason };
      };
      if (!config.failover.enabled) {
        return withhold('failover.disabled', `hosts ${ids} are suspect; failover.enabled is false: nothing fails over`);
      }
      if (storm.storm) return withhold('failover.storm', `${stormReason(storm)} (suspect: ${ids})`);
      const start: FailoverHostInput[] = [];
      for (const host of suspects) {
        const lease = host.lease!;
        const id = failoverWorkflowId({
          hostId: host.id,
          suspectToken: lease.fencingToken,
          suspectedAt: lease.expiresAt,
        });
        const report = await failovers.createFailover(pool, {
          id,
          hostId: host.id,
          suspectToken: lease.fencingToken,
          suspectedAt: new Date(lease.expiresAt),
        });
        if (report.state !== 'running') continue;
        start.push({
          hostId: host.id,
          suspectToken: lease.fencingToken,
          suspectedAt: lease.expiresAt,
          settings: settings(),
        });
      }
      return { start, storm };
    },

    /** After the grace: still expired under the same token and still down, or the host came back (a hiccup). */
    async checkSuspect(input: { failoverId: string; hostId: string; suspectToken: number }): Promise<{
      suspect: boolean;
      /** Withheld because too much of the fleet is suspect at once. */
      storm?: boolean;
      reason?: string;
    }> {
      const host = await getHost(pool, input.hostId);
      failoverMetrics?.suspicions.inc({ host_id: input.hostId });
      await failovers.updateFailover(pool, { id: input.failoverId, patch: { graceEndedAt: new Date().toISOString() } });
      if (!host) return { suspect: false, reason: `host ${input.hostId} is no longer registered` };
      if (host.lease?.alive) {
        return {
          suspect: false,
          reason: `its agent renewed the lease (token ${host.lease.fencingToken}) within the grace`,
        };
      }
      if (host.lease && host.lease.fencingToken !== input.suspectToken) {
        return { suspect: false, reason: `its lease moved to token ${host.lease.fencingToken}` };
      }
      if (host.state !== 'down') return { suspect: false, reason: `it is ${host.state}` };
      // Hosts of one partition do not expire at the same instant (their last renewals were up to a heartbeat apart):
      // the first one's failover would start before the storm shows. After the grace, the others have expired too.
      const storm = await stormGate(input);
      return storm ? { suspect: false, storm: true, reason: storm } : { suspect: true };
    },

    /** Up hosts with a live lease, other than the suspect, by id; and how witnesses reach the suspect. */
    async pickWitnesses(input: { hostId: string; count: number }): Promise<FailoverWitnesses> {
      const hosts = await listHosts(pool);
      const suspect = hosts.find((h) => h.id === input.hostId);
      const witnesses = hosts
        .filter((h) => h.id !== input.hostId && h.state === 'up' && h.lease?.alive)
        .map((h) => h.id)
        .sort()
        .slice(0, input.count);
      return {
        witnesses,
        ...(suspect?.dwcpEndpoint ? { agentEndpoint: suspect.dwcpEndpoint } : {}),
        ...(suspect?.peerLibvirtUri ? { peerLibvirtUri: suspect.peerLibvirtUri } : {}),
      };
    },

    /** Verifies the votes against the witnesses' registered keys and writes the confirmation into the report. */
    async confirmSuspect(input: {
      failoverId: string;
      hostId: string;
      suspectToken: number;
      mode: FailoverSettings['voteMode'];
      asked: string[];
      votes: SignedWitnessVote[];
    }): Promise<CertificateResult> {
      const publicKeys = await witnessPublicKeys(pool, input.asked);
      const result = checkVoteCertificate({
        mode: input.mode,
        round: input.failoverId,
        suspectHostId: input.hostId,
        suspectToken: input.suspectToken,
        askedWitnesses: input.asked,
        publicKeys,
        votes: input.votes,
        now: new Date(),
        maxAgeMs: config.failover.voteMaxAgeMs,
      });
      // The first vote of each witness, as the certificate counts it.
      const byWitness = new Map<string, SignedWitnessVote['body']>();
      for (const vote of input.votes) {
        if (!byWitness.has(vote.body.witnessHostId)) byWitness.set(vote.body.witnessHostId, vote.body);
      }
      await failovers.updateFailover(pool, {
        id: input.failoverId,
        patch: {
          confirmation: {
            mode: result.mode,
            asked: result.asked,
            needed: result.needed,
            accepted: result.accepted,
            votes: result.checks.map((check) => {
              const body = byWitness.get(check.witnessHostId);
              return {
                witnessHostId: check.witnessHostId,
                verdict: body?.verdict ?? 'unreachable',
                agentReachable: body?.agentReachable ?? false,
                libvirtReachable: body?.libvirtReachable ?? false,
                ...(body?.runningDomains ? { runningDomains: body.runningDomains } : {}),
                accepted: check.accepted,
                ...(check.refusedReason ? { refusedReason: check.refusedReason } : {}),
              };
            }),
            ...(result.confirmed ? { confirmedAt: new Date().toISOString() } : {}),
          },
        },
      });
      failoverMetrics?.confirmations.inc({ outcome: result.confirmed ? 'confirmed' : 'not-confirmed' });
      return result;
    },

    /** Bumps the suspect's token without its agent, so a zombie incarnation is refused everywhere. */
    async fenceSuspect(input: { failoverId: string; hostId: string; suspectToken: number }): Promise<{
      fenced: boolean;
      token: number;
      /** Not fenced because the storm grew while the witnesses were asked: the alert's reason. */
      storm?: string;
    }> {
      // The last look before the one step that cannot be undone: hosts that lapsed during the witnessing count too.
      const storm = await stormGate(input);
      if (storm) return { fenced: false, token: input.suspectToken, storm };
      const fenced = await fenceHost(pool, {
        hostId: input.hostId,
        expectedToken: input.suspectToken,
        fencedBy: input.failoverId,
      });
      failoverMetrics?.fences.inc({ outcome: fenced.fenced ? 'fenced' : 'refused' });
      if (fenced.fenced) {
        await failovers.updateFailover(pool, {
          id: input.failoverId,
          patch: { fencedAt: new Date().toISOString(), fencedToken: fenced.token },
        });
      }
      return fenced;
    },

    /** The failed host's guests: those that restart, by priority; the others go into the report with the reason. */
    async failoverCandidates(input: { failoverId: string; hostId: string }): Promise<RestartCandidate[]> {
      const restart: RestartCandidate[] = [];
      for (const vm of await listVms(pool, { hostId: input.hostId })) {
        const decision = decideFailoverVm({
          vmId: vm.id,
          name: vm.name,
          ha: vm.spec.ha,
          haPriority: vm.spec.haPriority,
          storagePool: vm.spec.storagePool,
          state: vm.state,
        });
        if (decision.kind === 'restart') {
          restart.push({ vmId: vm.id, name: vm.name, haPriority: vm.spec.haPriority, spec: vm.spec });
          continue;
        }
        failoverMetrics?.restarts.inc({ outcome: decision.outcome });
        await failovers.recordFailoverVm(pool, {
          id: input.failoverId,
          vm: {
            vmId: vm.id,
            name: vm.name,
            haPriority: vm.spec.haPriority,
            outcome: decision.outcome,
            reason: decision.reason,
          },
        });
      }
      return restart;
    },

    /** Places the guest on another host and moves its ownership there, held by the failover. */
    async relocateFailoverVm(input: { failoverId: string; vmId: string; fromHostId: string }): Promise<{
      hostId: string;
      ownerToken: number;
    }> {
      const placed = await permanent(
        () =>
          relocateVm(pool, {
            vmId: input.vmId,
            fromHostId: input.fromHostId,
            workflowId: input.failoverId,
            policy: { cpuOvercommit: config.fleet.cpuOvercommit, memoryReserveMib: config.fleet.memoryReserveMib },
          }),
        ['StaleFencingToken'],
      );
      return { hostId: placed.hostId, ownerToken: placed.ownerToken };
    },

    /** One guest's outcome: into the report, the VM released in its new state, an event and a metric. */
    async recordFailoverVmOutcome(input: {
      failoverId: string;
      outcome: failovers.FailoverVmOutcome;
      release?: 'running' | 'failed';
    }): Promise<void> {
      const { outcome } = input;
      if (input.release) {
        await finishVmOperation(pool, {
          vmId: outcome.vmId,
          workflowId: input.failoverId,
          state: input.release,
          ...(outcome.reason && input.release === 'failed' ? { error: outcome.reason } : {}),
        });
      }
      await failovers.recordFailoverVm(pool, { id: input.failoverId, vm: outcome });
      await recordEvent(pool, {
        kind: `failover.vm.${outcome.outcome}`,
        vmId: outcome.vmId,
        ...(outcome.targetHostId ? { hostId: outcome.targetHostId } : {}),
        workflowId: input.failoverId,
        message:
          outcome.outcome === 'restarted'
            ? `${outcome.name} restarted on ${outcome.targetHostId} (${outcome.durationMs} ms after suspicion)`
            : `${outcome.name} ${outcome.outcome}: ${outcome.reason ?? ''}`,
        idempotencyKey: `${input.failoverId}:vm:${outcome.vmId}`,
      });
      failoverMetrics?.restarts.inc({ outcome: outcome.outcome });
    },

    async finishFailover(input: {
      failoverId: string;
      state: Exclude<failovers.FailoverState, 'running'>;
      reason?: string;
    }): Promise<failovers.FailoverReport> {
      const report = await failovers.finishFailover(pool, {
        id: input.failoverId,
        state: input.state,
        ...(input.reason ? { reason: input.reason } : {}),
      });
      if (report.totalMs !== undefined)
        failoverMetrics?.failoverSeconds.observe({ outcome: report.state }, report.totalMs / 1000);
      return report;
    },
  };
}

export type FailoverControlActivities = ReturnType<typeof createFailoverControlActivities>;
