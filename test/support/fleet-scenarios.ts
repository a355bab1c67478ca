/**
 * The fleet scenarios the VM lifecycle test checks and the fleet benchmark times: drift made behind NovaCron's back,
 * and many VMs created and deleted at once. Each returns what it saw and how long it took; the test asserts on the
 * first, the benchmark records the second.
 */
import { randomUUID } from 'node:crypto';
import { buildDomainXml } from '../../native/libvirt';
import type { VmCreateResult } from '../../workflows/vm-create';
import type { FoundDrift, Fleet, Started } from './fleet';

export interface DriftRound {
  vmId: string;
  rogueName: string;
  /** The guest destroyed with virsh: expected running, actually off. */
  stateMismatch: FoundDrift;
  /** The same guest then undefined: missing from its host. */
  missingVm: FoundDrift;
  /** A guest NovaCron never created, defined on another host. */
  unknownVm: FoundDrift;
}

/**
 * Makes the three kinds of drift, one after the other, and waits for each to be recorded. Latencies run from just
 * before the libvirt call to the finding's `detectedAt`. The findings stay open: `clearDrift` removes their causes.
 */
export async function makeDrift(
  fleet: Fleet,
  input: { name: string; vmHost: string; rogueHost: string; timeoutMs: number },
): Promise<DriftRound> {
  const started = await fleet.createVm({ name: input.name, vcpus: 1, memoryMib: 64, hostId: input.vmHost });
  await fleet.waitForWorkflow(started.workflowId);
  const vmHost = fleet.libvirt[input.vmHost]!;

  let since = Date.now();
  await vmHost.domainDestroy({ name: input.name });
  const stateMismatch = await fleet.waitForDrift(
    (d) => d.vmId === started.vmId && d.kind === 'state-mismatch',
    since,
    input.timeoutMs,
  );

  since = Date.now();
  await vmHost.domainUndefine({ name: input.name });
  const missingVm = await fleet.waitForDrift(
    (d) => d.vmId === started.vmId && d.kind === 'missing-vm',
    since,
    input.timeoutMs,
  );

  const rogueName = `${input.name}-rogue`;
  const rogueUuid = randomUUID();
  since = Date.now();
  await fleet.libvirt[input.rogueHost]!.domainDefineXML({
    xml: buildDomainXml({
      name: rogueName,
      uuid: rogueUuid,
      vcpus: 1,
      memoryMiB: 64,
      disks: [],
      networks: [],
      metadata: { vmId: rogueUuid },
      imageRoot: fleet.imageRoots[input.rogueHost]!,
    }),
  });
  const unknownVm = await fleet.waitForDrift(
    (d) => d.domainName === rogueName && d.kind === 'unknown-vm',
    since,
    input.timeoutMs,
  );
  return { vmId: started.vmId, rogueName, stateMismatch, missingVm, unknownVm };
}

/** Deletes the drifted VM and the rogue guest, and waits for the monitor's next scans to resolve every finding. */
export async function clearDrift(
  fleet: Fleet,
  round: DriftRound,
  input: { rogueHost: string; timeoutMs: number },
): Promise<void> {
  await fleet.waitForWorkflow((await fleet.operate(round.vmId, 'delete')).workflowId);
  await fleet.libvirt[input.rogueHost]!.domainUndefine({ name: round.rogueName });
  const deadline = Date.now() + input.timeoutMs;
  for (;;) {
    const open = (await fleet.inject({ method: 'GET', url: '/v1/drift?open=true' })).json<{ drift: unknown[] }>().drift;
    if (open.length === 0) return;
    if (Date.now() > deadline) throw new Error(`drift still open: ${JSON.stringify(open)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A tiny guest: 1 vCPU, 64 MiB, a 16 MiB qcow2 disk, no OS (SeaBIOS finds nothing to boot). */
export const TINY_GUEST = { vcpus: 1, memoryMib: 64, disks: [{ name: 'root', sizeMib: 16 }] };

/** Requests `count` tiny VMs at once through the API and waits until every vmCreate workflow has completed. */
export async function createAtOnce(
  fleet: Fleet,
  input: { count: number; namePrefix: string; timeoutMs: number },
): Promise<{ started: Started[]; allRunningMs: number }> {
  const began = Date.now();
  const started = await Promise.all(
    Array.from({ length: input.count }, (_, i) =>
      fleet.createVm({ name: `${input.namePrefix}${String(i).padStart(3, '0')}`, ...TINY_GUEST }),
    ),
  );
  await fleet.waitForAll(
    started.map((s) => s.workflowId),
    input.timeoutMs,
  );
  return { started, allRunningMs: Date.now() - began };
}

/** Each vmCreate step's durations across the workflows, by step name. */
export async function stepDurations(fleet: Fleet, started: Started[]): Promise<Record<string, number[]>> {
  const steps: Record<string, number[]> = {};
  for (const s of started) {
    const result = (await fleet.client.workflow.getHandle(s.workflowId).result()) as VmCreateResult;
    for (const step of result.steps) (steps[step.name] ??= []).push(step.durationMs ?? 0);
  }
  return steps;
}

/** Deletes the VMs at once through the API and returns how long until every vmDelete workflow completed. */
export async function deleteAtOnce(fleet: Fleet, input: { vmIds: string[]; timeoutMs: number }): Promise<number> {
  const began = Date.now();
  const deletes = await Promise.all(input.vmIds.map((id) => fleet.operate(id, 'delete')));
  await fleet.waitForAll(
    deletes.map((d) => d.workflowId),
    input.timeoutMs,
  );
  return Date.now() - began;
}
