/**
 * failoverHost: one suspect host, from its lease's expiry to its HA guests running elsewhere. Wait out the grace
 * (a hiccup ends here, with nothing fenced), ask witnesses on peer hosts to probe it and sign their votes, verify
 * them (a majority, or 2f+1 of 3f+1 in internet mode), fence it (its token moves on without its agent, so a zombie
 * is refused everywhere), then restart its HA guests on other hosts by priority. Every step lands in the failover's
 * report (store/failovers.ts). Query `failoverProgress`.
 *
 * A guest a witness still saw running on the suspect is withheld, never started twice: the agent's self-fencing
 * and its watchdog stop every guest before the lease can expire (docs/self-fencing.md), so one seen running means
 * that machinery failed and an operator must look.
 */
import { defineQuery, proxyActivities, setHandler, sleep, workflowInfo } from '@temporalio/workflow';
import type {
  FailoverControlActivities,
  FailoverReport,
  FailoverVmOutcome,
  RestartCandidate,
  SignedWitnessVote,
} from '../activities/failover-control-activities';
import type { LibvirtActivities } from '../activities/libvirt-activities';
import type { createWitnessActivities } from '../activities/witness-activities';
import { domainsSeenRunning, restartWaves, type FailoverHostInput } from '../domain/failover';
import { failureText } from '../domain/workflow-steps';

export type FailoverPhase = 'grace' | 'witnessing' | 'fencing' | 'restarting' | 'done';

export interface FailoverProgress {
  hostId: string;
  phase: FailoverPhase;
  restarted: number;
  toRestart: number;
}

export const failoverProgressQuery = defineQuery<FailoverProgress>('failoverProgress');

const PERMANENT_FAILOVER_FAILURES = ['VmNotFound', 'VmBusy', 'NoHostAvailable', 'OwnershipChanged', 'VmDisksMissing'];

function control() {
  return proxyActivities<FailoverControlActivities>({
    startToCloseTimeout: '30 seconds',
    retry: {
      initialInterval: '200 milliseconds',
      maximumInterval: '2 seconds',
      nonRetryableErrorTypes: PERMANENT_FAILOVER_FAILURES,
    },
  });
}

/**
 * A witness that does not answer soon is a witness that did not vote: its agent may be down too. Unlike other
 * host work this bounds the time in its queue, so one dead witness cannot hold up the round.
 */
function witness(hostId: string, probeTimeoutMs: number) {
  return proxyActivities<ReturnType<typeof createWitnessActivities>>({
    taskQueue: `host-${hostId}`,
    scheduleToCloseTimeout: probeTimeoutMs * 2 + 3000,
    startToCloseTimeout: probeTimeoutMs * 2 + 1000,
    retry: { initialInterval: '200 milliseconds', maximumAttempts: 2 },
  });
}

/** The target host's part of a restart: a minute, then the failover reports it failed and moves on. */
function target(hostId: string) {
  return proxyActivities<LibvirtActivities>({
    taskQueue: `host-${hostId}`,
    scheduleToCloseTimeout: '1 minute',
    startToCloseTimeout: '30 seconds',
    retry: {
      initialInterval: '300 milliseconds',
      maximumInterval: '3 seconds',
      nonRetryableErrorTypes: PERMANENT_FAILOVER_FAILURES,
    },
  });
}

async function askWitnesses(
  input: FailoverHostInput,
  round: string,
  picked: Awaited<ReturnType<FailoverControlActivities['pickWitnesses']>>,
): Promise<SignedWitnessVote[]> {
  const answers = await Promise.allSettled(
    picked.witnesses.map((w) =>
      witness(w, input.settings.witnessProbeTimeoutMs).witnessHost({
        round,
        suspectHostId: input.hostId,
        suspectToken: input.suspectToken,
        ...(picked.agentEndpoint ? { agentEndpoint: picked.agentEndpoint } : {}),
        ...(picked.peerLibvirtUri ? { peerLibvirtUri: picked.peerLibvirtUri } : {}),
      }),
    ),
  );
  return answers.flatMap((a) => (a.status === 'fulfilled' ? [a.value] : []));
}

async function restartOne(
  input: FailoverHostInput,
  failoverId: string,
  vm: RestartCandidate,
  seenRunning: Set<string>,
): Promise<FailoverVmOutcome> {
  const base = { vmId: vm.vmId, name: vm.name, haPriority: vm.haPriority };
  if (seenRunning.has(vm.name)) {
    const outcome: FailoverVmOutcome = {
      ...base,
      outcome: 'withheld',
      reason: `a witness saw it still running on ${input.hostId}: not started twice; stop it there, then start it`,
    };
    await control().recordFailoverVmOutcome({ failoverId, outcome });
    return outcome;
  }
  let placedOn: string | undefined;
  try {
    const placed = await control().relocateFailoverVm({ failoverId, vmId: vm.vmId, fromHostId: input.hostId });
    placedOn = placed.hostId;
    const host = target(placed.hostId);
    const disks = await host.locateVmDisks({ vmId: vm.vmId, spec: vm.spec });
    await host.defineVmDomain({ vmId: vm.vmId, spec: vm.spec, disks });
    await host.startVmDomain({ vmId: vm.vmId, name: vm.name });
    const restartedAt = Date.now();
    const outcome: FailoverVmOutcome = {
      ...base,
      outcome: 'restarted',
      targetHostId: placed.hostId,
      restartedAt: new Date(restartedAt).toISOString(),
      durationMs: restartedAt - Date.parse(input.suspectedAt),
    };
    await control().recordFailoverVmOutcome({ failoverId, outcome, release: 'running' });
    return outcome;
  } catch (err) {
    const outcome: FailoverVmOutcome = {
      ...base,
      outcome: 'failed',
      ...(placedOn ? { targetHostId: placedOn } : {}),
      reason: failureText(err),
    };
    // Released as failed only once it was relocated: before that the failover does not hold it.
    await control().recordFailoverVmOutcome({ failoverId, outcome, ...(placedOn ? { release: 'failed' } : {}) });
    return outcome;
  }
}

export async function failoverHost(input: FailoverHostInput): Promise<FailoverReport> {
  const failoverId = workflowInfo().workflowId;
  const progress: FailoverProgress = { hostId: input.hostId, phase: 'grace', restarted: 0, toRestart: 0 };
  setHandler(failoverProgressQuery, () => progress);
  const store = control();
  const finish = async (
    state: Parameters<FailoverControlActivities['finishFailover']>[0]['state'],
    reason?: string,
  ) => {
    progress.phase = 'done';
    return store.finishFailover({ failoverId, state, ...(reason ? { reason } : {}) });
  };

  // Suspicion started at the lease's expiry; the grace runs from there, not from when this workflow began.
  const graceLeftMs = Date.parse(input.suspectedAt) + input.settings.graceMs - Date.now();
  if (graceLeftMs > 0) await sleep(graceLeftMs);
  const still = await store.checkSuspect({ failoverId, hostId: input.hostId, suspectToken: input.suspectToken });
  if (still.storm) return finish('withheld', still.reason);
  if (!still.suspect) return finish('aborted', `${input.hostId} is not suspect any more: ${still.reason}`);

  progress.phase = 'witnessing';
  const picked = await store.pickWitnesses({ hostId: input.hostId, count: input.settings.witnesses });
  if (picked.witnesses.length === 0) {
    return finish('not-confirmed', `no other host with a live lease can witness ${input.hostId}`);
  }
  const votes = await askWitnesses(input, failoverId, picked);
  const certificate = await store.confirmSuspect({
    failoverId,
    hostId: input.hostId,
    suspectToken: input.suspectToken,
    mode: input.settings.voteMode,
    asked: picked.witnesses,
    votes,
  });
  if (!certificate.confirmed) {
    return finish(
      'not-confirmed',
      `${certificate.accepted} of ${certificate.asked} witnesses confirmed ${input.hostId} unreachable ` +
        `(${certificate.needed} needed, ${certificate.mode}); ${certificate.alive} saw its agent alive`,
    );
  }

  progress.phase = 'fencing';
  const fence = await store.fenceSuspect({ failoverId, hostId: input.hostId, suspectToken: input.suspectToken });
  if (fence.storm) return finish('withheld', fence.storm);
  if (!fence.fenced) {
    return finish('aborted', `${input.hostId} was not fenced: its lease moved on (token ${fence.token})`);
  }

  progress.phase = 'restarting';
  const candidates = await store.failoverCandidates({ failoverId, hostId: input.hostId });
  progress.toRestart = candidates.length;
  const seenRunning = domainsSeenRunning(votes.map((v) => v.body));
  const outcomes: FailoverVmOutcome[] = [];
  for (const wave of restartWaves(candidates)) {
    const done = await Promise.all(wave.map((vm) => restartOne(input, failoverId, vm, seenRunning)));
    progress.restarted += done.filter((o) => o.outcome === 'restarted').length;
    outcomes.push(...done);
  }
  const failed = outcomes.filter((o) => o.outcome !== 'restarted');
  if (failed.length === 0) return finish('completed');
  return finish(
    failed.some((o) => o.outcome === 'withheld') ? 'withheld' : 'failed',
    `${failed.length} of ${outcomes.length} HA guests did not restart: ` +
      failed.map((o) => `${o.name} (${o.outcome}: ${o.reason ?? ''})`).join('; '),
  );
}
