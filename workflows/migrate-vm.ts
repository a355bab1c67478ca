/**
 * migrateVm: live migration of a running VM on a shared storage pool, as a saga. Plan (target, link probe, dirty
 * rate, planMigration: refused before anything moves when the policy forbids what it needs), lock the VM and wait
 * for a migration slot on both hosts, prepare the target, run the job under convergence control, then confirm on
 * both hosts and commit ownership under the target's fencing token. A cancel, an abort or a failure settles the VM
 * on exactly one host (migration-saga.ts). Query `migrationProgress`; signal `cancel`, which Temporal cancellation
 * equals, except that it ends the workflow CANCELLED where the signal returns a `cancelled` result.
 */
import {
  ApplicationFailure,
  CancellationScope,
  defineQuery,
  defineSignal,
  setHandler,
  sleep,
  workflowInfo,
} from '@temporalio/workflow';
import {
  migrationPolicySchema,
  type MigrateVmInput,
  type MigrationPlan,
  type MigrationProgress,
  type MigrationResult,
} from '../domain/migration';
import { mib, mibPerSecond, planMigration } from '../domain/migration-plan';
import { migrationControl, migrationHost, migrationProbe } from './migration-activities-proxy';
import { runMigrationJob, type MigrationDestination } from './migration-control';
import {
  commitToTarget,
  enterPhase,
  inspectBoth,
  persistProgress,
  progressSnapshot,
  resultOf,
  runsOnTargetOnly,
  settle,
  type MigrationRun,
} from './migration-saga';

export interface CancelMigrationInput {
  reason?: string;
}

export const migrationProgressQuery = defineQuery<MigrationProgress>('migrationProgress');
export const cancelMigrationSignal = defineSignal<[CancelMigrationInput]>('cancel');

const MIB = 1024 * 1024;
const SLOT_WAIT_MAX_MS = 10_000;

/** QEMU listens on the target's migration address; an IPv6 literal needs brackets in a URI. */
function tcpUri(address: string): string {
  return address.includes(':') && !address.startsWith('[') ? `tcp://[${address}]` : `tcp://${address}`;
}

/** Peer-to-peer when the target's daemon is reachable by its peers, else managed direct from the source's agent. */
function destinationOf(
  target: NonNullable<MigrationRun['hosts']>['target'],
  prepared: { consoleLogPath: string },
): MigrationDestination {
  const common = {
    migrateUri: tcpUri(target.migrationAddress),
    targetHostId: target.id,
    targetConsoleLogPath: prepared.consoleLogPath,
  };
  if (target.peerLibvirtUri) return { ...common, destUri: target.peerLibvirtUri, p2p: true };
  return { ...common, destUri: target.libvirtUri, p2p: false };
}

function figures(plan: MigrationPlan): string {
  const { inputs } = plan;
  return (
    `memory ${mib(inputs.memoryBytes)}, dirty rate ${mibPerSecond(inputs.dirtyRateBytesPerSecond)}, ` +
    `link ${mibPerSecond(inputs.linkBandwidthBytesPerSecond)} at ${inputs.linkRttMs} ms RTT (${inputs.mode})`
  );
}

/** Link probe and dirty rate, measured side by side on the source, then the plan; a refusal ends the run here. */
async function planRun(run: MigrationRun): Promise<MigrationPlan> {
  const control = migrationControl();
  const { vm, sourceHostId, settings } = run.opening!;
  const target = run.hosts!.target;
  const [probe, dirty] = await Promise.all([
    migrationProbe(sourceHostId).probeLink({ targetHostId: target.id, endpoint: target.dwcpEndpoint }),
    migrationHost(sourceHostId).measureDirtyRate({ vmId: vm.id, name: vm.name, seconds: settings.dirtyRateSeconds }),
  ]);
  await control.recordLinkProbe({ report: probe, workflowId: run.workflowId, step: 'probe' });
  const outcome = planMigration({
    memoryBytes: vm.memoryMib * MIB,
    dirtyRateBytesPerSecond: dirty.bytesPerSecond,
    linkBandwidthBytesPerSecond: (probe.bandwidthMbps * 1e6) / 8,
    linkRttMs: probe.rttMs,
    mode: probe.mode,
    policy: run.policy,
    ...(run.hosts!.sourceSpareCpus !== undefined ? { spareCpus: run.hosts!.sourceSpareCpus } : {}),
  });
  run.plan = outcome.plan;
  await control.recordMigrationPlan({ workflowId: run.workflowId, targetHostId: target.id, plan: outcome.plan });
  if (outcome.ok) return outcome.plan;

  run.progress.phase = 'refused';
  const message = `migration of ${vm.name} refused: ${outcome.reason} (${figures(outcome.plan)}); it stays on ${sourceHostId}`;
  const result = resultOf(run, 'refused', sourceHostId, { reason: message });
  await control.finishMigration({
    workflowId: run.workflowId,
    outcome: 'refused',
    finalHostId: sourceHostId,
    result,
    error: message,
  });
  run.finished = true;
  throw ApplicationFailure.create({ type: 'MigrationRefused', message, nonRetryable: true, details: [result] });
}

/** Polls for a slot under both hosts' limits; the phase says `queued` while others go first. */
async function waitForSlot(run: MigrationRun): Promise<void> {
  const control = migrationControl();
  // Backing off keeps an hour in the queue to a few hundred attempts in the workflow's history.
  let delayMs = run.opening!.settings.pollIntervalMs;
  const input = {
    workflowId: run.workflowId,
    sourceHostId: run.opening!.sourceHostId,
    targetHostId: run.hosts!.target.id,
  };
  for (;;) {
    const slot = await control.acquireMigrationSlot(input);
    if (slot.acquired) return;
    await enterPhase(run, 'queued');
    await sleep(delayMs);
    delayMs = Math.min(SLOT_WAIT_MAX_MS, delayMs * 2);
  }
}

/** Everything up to the commit, in the cancellable scope: a cancel anywhere here ends in settle(). */
async function forward(run: MigrationRun, input: MigrateVmInput): Promise<MigrationResult> {
  const control = migrationControl();
  const { workflowId } = run;
  const targetRequest = input.targetHostId !== undefined ? { targetHostId: input.targetHostId } : {};
  // Not cancellable: a cancel that abandoned it could leave a record opened that nothing would ever finish.
  run.opening = await CancellationScope.nonCancellable(() =>
    control.openMigration({ workflowId, vmId: input.vmId, policy: run.policy, ...targetRequest }),
  );
  const { vm, sourceHostId } = run.opening;
  run.progress.sourceHostId = sourceHostId;
  setHandler(migrationProgressQuery, () => progressSnapshot(run));

  run.hosts = await control.chooseMigrationTarget({ workflowId, vmId: vm.id, sourceHostId, ...targetRequest });
  const target = run.hosts.target;
  run.progress.targetHostId = target.id;
  await persistProgress(run);
  await planRun(run);

  run.lockRequested = true;
  run.generation = (await control.lockVmForMigration({ vmId: vm.id, workflowId, targetHostId: target.id })).generation;
  await waitForSlot(run);

  await enterPhase(run, 'preparing');
  const ref = { vmId: vm.id, name: vm.name };
  const described = await migrationHost(sourceHostId).describeMigrationSource(ref);
  const prepared = await migrationHost(target.id).prepareMigrationTarget({
    ...ref,
    storagePool: vm.storagePool,
    disks: described.disks,
  });

  run.jobStarted = true;
  const job = await runMigrationJob(run, destinationOf(target, prepared));
  const hosts = await inspectBoth(run);
  if (!runsOnTargetOnly(hosts)) {
    throw ApplicationFailure.nonRetryable(
      `the job ended but ${vm.name} is ${hosts.target.state} on ${target.id} and ${hosts.source.state} on ` +
        `${sourceHostId}`,
      'MigrationNotConfirmed',
    );
  }
  return CancellationScope.nonCancellable(() => commitToTarget(run, { target: hosts.target, job }));
}

export async function migrateVm(input: MigrateVmInput): Promise<MigrationResult> {
  const parsed = migrationPolicySchema.safeParse(input.policy ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw ApplicationFailure.nonRetryable(
      `policy.${issue?.path.join('.')}: ${issue?.message}`,
      'InvalidMigrationPolicy',
    );
  }
  const { workflowId } = workflowInfo();
  const run: MigrationRun = {
    workflowId,
    vmId: input.vmId,
    startedAtMs: Date.now(),
    policy: parsed.data,
    progress: { workflowId, vmId: input.vmId, sourceHostId: '', phase: 'planning', escalations: [] },
    lockRequested: false,
    jobStarted: false,
    finished: false,
  };
  const scope = new CancellationScope();
  setHandler(cancelMigrationSignal, (signal) => {
    run.cancelRequest ??= { reason: signal.reason ?? 'cancel requested' };
    scope.cancel();
  });
  try {
    return await scope.run(() => forward(run, input));
  } catch (err) {
    return await CancellationScope.nonCancellable(() => settle(run, err));
  }
}
