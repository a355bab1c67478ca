/**
 * One live migration of the benchmark's guest, either way it can be made: libvirt's plain live migration with
 * nothing set (the driver's call with only what the harness needs: the peer-to-peer route NovaCron also takes, the
 * shared disks, the target's own console log), or NovaCron's migrateVm through the API with the parameters its
 * plan chooses. Both report libvirt's completed-job statistics, read on the target.
 */
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { destinationXml } from '../../activities/migration-activities';
import { vmConsoleLogPath } from '../../activities/storage-paths';
import type { MigrationEscalation, MigrationJobSample, MigrationPlan, MigrationResult } from '../../domain/migration';
import { LibvirtMigrationTimeoutError, migrationJobSample } from '../../native/libvirt';
import type { Fleet } from '../../test/support/fleet';
import type { MeasuredSample, MigrationSample, NovacronPlanFigures, WorkflowTimeline } from './render';

export interface BenchVm {
  id: string;
  name: string;
}

const SAMPLE_MS = 2000;
const loadAvg1 = (): number => Math.round((os.loadavg()[0] ?? 0) * 100) / 100;

/** Where libvirt runs the guest now; exactly one host, or the benchmark has lost it and stops. */
export async function domainHost(fleet: Fleet, vm: BenchVm): Promise<string> {
  const found = (await fleet.allDomains()).filter((d) => d.uuid === vm.id && d.state === 'running');
  if (found.length !== 1) throw new Error(`${vm.name} runs on ${found.length} hosts: ${JSON.stringify(found)}`);
  return found[0]!.hostId;
}

export async function storeHost(fleet: Fleet, vm: BenchVm): Promise<string> {
  const view = (await fleet.inject({ method: 'GET', url: `/v1/vms/${vm.id}` })).json<{ hostId: string }>();
  return view.hostId;
}

/** domdirtyrate-calc over `seconds`, as the plan measures it. */
export async function dirtyRate(fleet: Fleet, vm: BenchVm, hostId: string, seconds = 1): Promise<number> {
  const conn = fleet.libvirt[hostId]!;
  await conn.domainStartDirtyRateCalc({ name: vm.name, seconds });
  for (;;) {
    await sleep(250);
    const rate = await conn.domainGetDirtyRate({ name: vm.name });
    if (rate.status === 'measured') return rate.bytesPerSecond;
  }
}

function completedFigures(
  job: MigrationJobSample,
): Pick<MigrationSample, 'libvirtTotalMs' | 'downtimeMs' | 'bytes' | 'passes' | 'setupMs'> {
  return {
    libvirtTotalMs: job.timeElapsedMs,
    ...(job.downtimeMs !== undefined ? { downtimeMs: job.downtimeMs } : {}),
    bytes: job.dataProcessedBytes,
    passes: job.pass,
    ...(job.setupTimeMs !== undefined ? { setupMs: job.setupTimeMs } : {}),
  };
}

/** libvirt's plain live migration, from wherever the guest runs to `to`, bounded by the deadline NovaCron's plan gives. */
export async function migrateWithDefaults(
  fleet: Fleet,
  vm: BenchVm,
  input: { from: string; to: string; ownerHostId: string; deadlineMs: number },
): Promise<MeasuredSample> {
  const source = fleet.libvirt[input.from]!;
  const target = fleet.hypervisors.hosts.find((h) => h.hostId === input.to)!;
  const consoleLogPath = vmConsoleLogPath({ imageRoot: fleet.imageRoots[input.to]!, vmId: vm.id });
  await mkdir(path.dirname(consoleLogPath), { recursive: true });
  // Only host-side details change: two QEMUs must not write one log; NovaCron's owner stays what its store says.
  const xml = destinationXml(await source.domainGetXMLDesc({ name: vm.name, migratable: true }), {
    consoleLogPath,
    ownerHostId: input.ownerHostId,
  });
  let last: MigrationJobSample | undefined;
  // Aborted the moment the call settles: a pending sleep must not add to the time measured.
  const stop = new AbortController();
  const sampler = (async () => {
    while (!stop.signal.aborted) {
      await sleep(SAMPLE_MS, undefined, { signal: stop.signal }).catch(() => undefined);
      if (stop.signal.aborted) return;
      const stats = await source.domainGetJobStats({ name: vm.name }).catch(() => undefined);
      const sample = stats && migrationJobSample(stats);
      if (sample?.state === 'running') last = sample;
    }
  })();
  const base = { method: 'libvirt-defaults' as const, from: input.from, to: input.to, loadAvg1: loadAvg1() };
  const started = performance.now();
  let wallMs: number;
  try {
    await source.domainMigrateToURI3({
      name: vm.name,
      destUri: target.peerUri ?? target.uri,
      p2p: target.peerUri !== undefined,
      ...(target.peerUri ? {} : { migrateUri: `tcp://${target.migrationAddress}` }),
      unsafe: true,
      destXml: xml,
      persistentXml: xml,
      timeoutMs: input.deadlineMs,
    });
    wallMs = Math.round(performance.now() - started);
  } catch (err) {
    wallMs = Math.round(performance.now() - started);
    const stalled = last && { pass: last.pass, dataRemainingBytes: last.dataRemainingBytes };
    return {
      ...base,
      outcome: err instanceof LibvirtMigrationTimeoutError ? 'not-converged' : 'failed',
      reason: err instanceof Error ? err.message.split('\n')[0]! : String(err),
      wallMs,
      ...(stalled ? { lastRunning: stalled } : {}),
    };
  } finally {
    stop.abort();
    await sampler;
  }
  const completed = migrationJobSample(
    await fleet.libvirt[input.to]!.domainGetJobStats({ name: vm.name, completed: true }),
  );
  return { ...base, outcome: 'completed', wallMs, jobMs: wallMs, ...completedFigures(completed) };
}

const eventMs = (time: { seconds?: unknown; nanos?: number | null } | null | undefined): number =>
  Number(time?.seconds ?? 0) * 1000 + Math.round((time?.nanos ?? 0) / 1e6);

/**
 * Where the workflow's time went, from its history: planning (target, link probe and dirty rate, the plan), then
 * the lock, slot and target preparation, the job activity, and what follows it up to the recorded result.
 */
export async function workflowTimeline(handle: WorkflowHandle): Promise<WorkflowTimeline> {
  const events = (await handle.fetchHistory()).events ?? [];
  const startMs = eventMs(events[0]?.eventTime);
  const endMs = eventMs(events.at(-1)?.eventTime);
  const scheduled = new Map<string, { name: string; atMs: number }>();
  const activities: WorkflowTimeline['activities'] = {};
  const ended: Record<string, number> = {};
  const began: Record<string, number> = {};
  for (const event of events) {
    const name = event.activityTaskScheduledEventAttributes?.activityType?.name;
    if (name) {
      scheduled.set(String(event.eventId), { name, atMs: eventMs(event.eventTime) });
      began[name] ??= eventMs(event.eventTime);
    }
    const done = event.activityTaskCompletedEventAttributes;
    const from = done && scheduled.get(String(done.scheduledEventId));
    if (from) {
      const ms = eventMs(event.eventTime) - from.atMs;
      const entry = (activities[from.name] ??= { count: 0, totalMs: 0 });
      entry.count += 1;
      entry.totalMs += ms;
      ended[from.name] = eventMs(event.eventTime);
    }
  }
  const planEnd = ended['recordMigrationPlan'] ?? startMs;
  const jobStart = began['migrateDomain'] ?? planEnd;
  const jobEnd = ended['migrateDomain'] ?? jobStart;
  return {
    totalMs: endMs - startMs,
    planningMs: planEnd - startMs,
    beforeJobMs: jobStart - planEnd,
    jobActivityMs: jobEnd - jobStart,
    afterJobMs: endMs - jobEnd,
    activities,
  };
}

function planFigures(plan: MigrationPlan): NovacronPlanFigures {
  const finite = (v: number): number | null => (Number.isFinite(v) ? v : null);
  return {
    mode: plan.mode,
    mitigation: plan.mitigation,
    deadlineMs: plan.deadlineMs,
    parameters: plan.parameters,
    prediction: {
      converges: plan.prediction.converges,
      passes: plan.prediction.passes,
      totalMs: finite(plan.prediction.totalMs),
      downtimeMs: finite(plan.prediction.downtimeMs),
      bytes: plan.prediction.bytes,
      ...(plan.prediction.reason ? { reason: plan.prediction.reason } : {}),
    },
    inputs: {
      dirtyRateBytesPerSecond: plan.inputs.dirtyRateBytesPerSecond,
      linkBandwidthBytesPerSecond: plan.inputs.linkBandwidthBytesPerSecond,
      linkRttMs: plan.inputs.linkRttMs,
      ...(plan.inputs.spareCpus !== undefined ? { spareCpus: plan.inputs.spareCpus } : {}),
    },
  };
}

/**
 * A workflow that failed: a refusal the plan made after the route stopped waiting for it, convergence control's
 * abort, or anything else, which the saga has settled on one host. The migration's record keeps the plan.
 */
function failedWorkflow(err: unknown): Pick<MeasuredSample, 'outcome' | 'reason'> {
  const cause = err instanceof WorkflowFailedError ? err.cause : undefined;
  const outcome = cause instanceof ApplicationFailure && cause.type === 'MigrationRefused' ? 'refused' : 'failed';
  return { outcome, reason: cause?.message ?? (err instanceof Error ? err.message : String(err)) };
}

const escalationText = (e: MigrationEscalation): string =>
  `${e.kind}${e.value !== undefined ? ` ${e.value}` : ''} at pass ${e.pass}`;

/** NovaCron's migrateVm through the API, as an operator starts it, with the policy's defaults. */
export async function migrateWithNovacron(fleet: Fleet, vm: BenchVm, input: { to: string }): Promise<MeasuredSample> {
  const from = await storeHost(fleet, vm);
  const base = { method: 'novacron' as const, from, to: input.to, loadAvg1: loadAvg1() };
  const started = performance.now();
  const response = await fleet.inject({
    method: 'POST',
    url: `/v1/vms/${vm.id}/migrate`,
    payload: { targetHostId: input.to },
  });
  if (response.statusCode !== 202) {
    const body = response.json<{ message?: string; plan?: MigrationResult['plan'] }>();
    return {
      ...base,
      outcome: response.statusCode === 422 ? 'refused' : 'failed',
      reason: body.message ?? response.body,
      wallMs: Math.round(performance.now() - started),
      ...(body.plan ? { plan: planFigures(body.plan) } : {}),
    };
  }
  const handle = fleet.client.workflow.getHandle(response.json<{ workflowId: string }>().workflowId);
  let result: MigrationResult;
  try {
    result = (await handle.result()) as MigrationResult;
  } catch (err) {
    const wallMs = Math.round(performance.now() - started);
    const record = (await fleet.inject({ method: 'GET', url: `/v1/migrations/${handle.workflowId}` })).json<{
      plan?: MigrationPlan;
      escalations?: MigrationEscalation[];
    }>();
    return {
      ...base,
      ...failedWorkflow(err),
      wallMs,
      timeline: await workflowTimeline(handle),
      ...(record.plan ? { plan: planFigures(record.plan) } : {}),
      escalations: (record.escalations ?? []).map(escalationText),
    };
  }
  const wallMs = Math.round(performance.now() - started);
  const timeline = await workflowTimeline(handle);
  const common = {
    ...base,
    wallMs,
    workflowMs: result.workflowMs,
    timeline,
    ...(result.plan ? { plan: planFigures(result.plan) } : {}),
    escalations: result.escalations.map(escalationText),
  };
  if (result.outcome !== 'completed' || !result.measured) {
    return {
      ...common,
      outcome: result.outcome === 'completed' ? 'failed' : result.outcome,
      reason: result.reason ?? '',
    };
  }
  const { measured } = result;
  return {
    ...common,
    outcome: 'completed',
    jobMs: measured.jobMs,
    libvirtTotalMs: measured.totalMs,
    downtimeMs: measured.downtimeMs,
    bytes: measured.bytes,
    passes: measured.passes,
    overheadMs: result.workflowMs - measured.jobMs,
  };
}
