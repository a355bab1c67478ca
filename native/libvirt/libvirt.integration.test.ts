/**
 * Runs the driver against two real libvirtd instances started by the harness. Without libvirt installed this
 * fails (it does not skip): CI installs the packages, and a silent skip would hide a broken install step.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { DiskImages } from './disk-images';
import { buildDomainXml, detectDomainType } from './domain-xml';
import type { DomainSpec } from './domain-xml';
import {
  LibvirtAlreadyExistsError,
  LibvirtConnectionLostError,
  LibvirtInvalidStateError,
  LibvirtNotFoundError,
  isInvalidState,
  tolerate,
} from './errors';
import { assertHypervisorBinaries, startLocalHypervisors } from './harness';
import type { LocalHypervisors } from './harness';
import type { DomainEventStream } from './domain-event-stream';
import { LibvirtConnection } from './libvirt-connection';
import { DomainJobType, DomainState, ShutdownOutcome, type DomainEvent } from './libvirt-types';

const GUEST = 'it-guest-1';
const MiB = 1024 * 1024;

let scratch: string;
let hypervisors: LocalHypervisors | undefined;
let hostA: LibvirtConnection;
let hostB: LibvirtConnection;
let images: DiskImages;
let events: DomainEventStream;
const seen: DomainEvent[] = [];
let spec: DomainSpec;

before(async () => {
  assertHypervisorBinaries();
  scratch = await mkdtemp(join(tmpdir(), 'novacron-libvirt-'));
  hypervisors = await startLocalHypervisors({ count: 2, baseDir: join(scratch, 'hv') });
  const [a, b] = hypervisors.hosts;
  assert.ok(a && b);
  hostA = new LibvirtConnection({ uri: a.uri });
  hostB = new LibvirtConnection({ uri: b.uri });
  images = new DiskImages({ imageRoot: join(scratch, 'images') });
  events = hostA.domainEvents();
  void (async () => {
    for await (const event of events) seen.push(event);
  })().catch(() => undefined);
  await events.ready;
  const disk = join(scratch, 'images', GUEST, 'root.qcow2');
  spec = {
    name: GUEST,
    uuid: randomUUID(),
    vcpus: 1,
    memoryMiB: 64,
    disks: [{ path: disk, format: 'qcow2', target: 'vda' }],
    networks: [{ type: 'user' }],
    metadata: { vmId: 'vm-it-1', owner: 'integration' },
    imageRoot: join(scratch, 'images'),
    domainType: detectDomainType(),
  };
});

after(async () => {
  await events?.close();
  await hypervisors?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

async function waitFor(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function sawLifecycle(event: string): boolean {
  return seen.some((e) => e.domain === GUEST && e.lifecycle?.event === event);
}

test('the two hosts are separate hypervisors', async () => {
  const [a, b] = hypervisors?.hosts ?? [];
  assert.notEqual(a?.hostUuid, b?.hostUuid);
  assert.notEqual(a?.uri, b?.uri);
  assert.match((await hostA.connectGetVersion()).library, /^libvirt \d+\./);
  const node = await hostA.nodeGetInfo();
  assert.ok(node.cpus >= 1 && node.memoryKiB > 0);
  assert.ok((await hostA.nodeGetFreeMemory()) > 0);
  assert.ok((await hostA.nodeGetMemoryStats()).totalKiB > 0);
});

/**
 * One guest's whole life on host A: each step acts on what the step before left (the disk, the defined domain, the
 * running guest, ...), so the steps are one test, run in order, and a step after a failed one is skipped rather
 * than failing for a reason that is not its own.
 */
test('a guest on host A from its disk to its removal', async (t) => {
  let failed: string | undefined;
  const step = (name: string, fn: () => Promise<void>) =>
    t.test(name, async (s) => {
      if (failed !== undefined) return s.skip(`"${failed}" failed first`);
      await fn().catch((err: unknown) => {
        failed = name;
        throw err;
      });
    });

  await step('disk images are created idempotently and conflicts are refused', async () => {
    const disk = spec.disks[0]!;
    const first = await images.create({ path: disk.path, format: 'qcow2', sizeBytes: 64 * MiB });
    assert.equal(first.created, true);
    assert.equal(first.info.virtualSizeBytes, 64 * MiB);
    const again = await images.create({ path: disk.path, format: 'qcow2', sizeBytes: 64 * MiB });
    assert.equal(again.created, false);
    await assert.rejects(images.create({ path: disk.path, format: 'qcow2', sizeBytes: 128 * MiB }), /already exists/);
    await assert.rejects(images.create({ path: join(scratch, 'elsewhere.qcow2'), format: 'raw', sizeBytes: MiB }));
  });

  await step('a guest defined and started on host A runs there and not on host B', async () => {
    const defined = await hostA.domainDefineXML({ xml: buildDomainXml(spec), validate: true });
    assert.equal(defined.uuid, spec.uuid);
    assert.equal(defined.state, DomainState.shutOff);
    await hostA.domainCreate({ name: GUEST });
    const onA = await hostA.listAllDomains();
    assert.deepEqual(onA, [{ name: GUEST, uuid: spec.uuid, state: DomainState.running }]);
    assert.deepEqual(await hostB.listAllDomains(), []);
    await assert.rejects(hostB.domainLookupByName({ name: GUEST }), LibvirtNotFoundError);
    await waitFor('the started event', () => sawLifecycle('started'));
    const info = await hostA.domainGetInfo({ name: GUEST });
    assert.equal(info.state, DomainState.running);
    assert.equal(info.vcpus, 1);
    assert.equal(info.maxMemoryKiB, 64 * 1024);
    await waitFor('guest CPU time', async () => (await hostA.domainGetInfo({ name: GUEST })).cpuTimeNs > 0);
    assert.equal((await hostA.domainGetJobStats({ name: GUEST })).type, DomainJobType.none);
    assert.equal((await hostA.domainLookupByName({ name: GUEST })).persistent, true);
    assert.ok((await images.info({ path: spec.disks[0]!.path }))?.format === 'qcow2', 'info reads a locked image');
  });

  await step(
    'starting a running guest is InvalidState; redefining is idempotent; another uuid is AlreadyExists',
    async () => {
      await assert.rejects(hostA.domainCreate({ name: GUEST }), LibvirtInvalidStateError);
      assert.equal((await hostA.domainDefineXML({ xml: buildDomainXml(spec) })).uuid, spec.uuid);
      await assert.rejects(
        hostA.domainDefineXML({ xml: buildDomainXml({ ...spec, uuid: randomUUID() }) }),
        LibvirtAlreadyExistsError,
      );
    },
  );

  await step('reboot, reset, suspend and resume', async () => {
    await hostA.domainReboot({ name: GUEST });
    await hostA.domainReset({ name: GUEST });
    await hostA.domainSuspend({ name: GUEST });
    assert.equal(await hostA.domainGetState({ name: GUEST }), DomainState.paused);
    await waitFor('the suspended event', () => sawLifecycle('suspended'));
    await hostA.domainResume({ name: GUEST });
    assert.equal(await hostA.domainGetState({ name: GUEST }), DomainState.running);
    await waitFor('the resumed event', () => sawLifecycle('resumed'));
    await assert.rejects(hostA.domainResume({ name: GUEST }), LibvirtInvalidStateError);
    await waitFor('a reboot event', () => seen.some((e) => e.domain === GUEST && e.type === 'reboot'));
  });

  await step('shutdownOrDestroy destroys a guest that ignores ACPI, then reports already-off', async () => {
    // The guest has no OS, so nothing answers the ACPI power button and the helper must fall back to destroy.
    const result = await hostA.domainShutdownOrDestroy({ name: GUEST, timeoutMs: 1_500 });
    assert.equal(result.outcome, ShutdownOutcome.destroyed);
    assert.equal(await hostA.domainGetState({ name: GUEST }), DomainState.shutOff);
    await waitFor('the stopped event', () => sawLifecycle('stopped'));
    assert.deepEqual(await hostA.domainShutdownOrDestroy({ name: GUEST, timeoutMs: 1_000 }), {
      outcome: ShutdownOutcome.alreadyOff,
    });
    await assert.rejects(hostA.domainDestroy({ name: GUEST }), LibvirtInvalidStateError);
    assert.equal(await tolerate(hostA.domainDestroy({ name: GUEST }), isInvalidState), undefined);
    await assert.rejects(hostA.domainGetJobStats({ name: GUEST }), LibvirtInvalidStateError);
  });

  await step('undefine removes the guest and the disk can be cleaned up', async () => {
    await hostA.domainUndefine({ name: GUEST, flags: ['nvram', 'managed-save'] });
    assert.deepEqual(await hostA.listAllDomains(), []);
    await assert.rejects(hostA.domainLookupByName({ name: GUEST }), LibvirtNotFoundError);
    await waitFor('the undefined event', () => sawLifecycle('undefined'));
    assert.deepEqual(await images.remove({ path: spec.disks[0]!.path }), { removed: true });
    assert.deepEqual(await images.remove({ path: spec.disks[0]!.path }), { removed: false });
    assert.equal(await images.info({ path: spec.disks[0]!.path }), undefined);
  });
});

test('unknown domains are NotFound for every kind of call', async () => {
  const name = 'no-such-domain';
  await assert.rejects(hostA.domainCreate({ name }), LibvirtNotFoundError);
  await assert.rejects(hostA.domainDestroy({ name }), LibvirtNotFoundError);
  await assert.rejects(hostA.domainGetInfo({ name }), LibvirtNotFoundError);
  await assert.rejects(hostA.domainUndefine({ name }), LibvirtNotFoundError);
  await assert.rejects(hostA.domainGetXMLDesc({ name }), LibvirtNotFoundError);
});

test('an unreachable daemon is ConnectionLost, and so is an event stream whose host stops', async () => {
  const nowhere = new LibvirtConnection({ uri: `qemu:///system?socket=${join(scratch, 'nowhere', 'libvirt-sock')}` });
  await assert.rejects(nowhere.listAllDomains(), LibvirtConnectionLostError);
  // A hypervisor of its own to stop, so that no other test finds host A or B gone.
  const doomed = await startLocalHypervisors({ count: 1, baseDir: join(scratch, 'hv-stopped') });
  try {
    const host = new LibvirtConnection({ uri: doomed.hosts[0]!.uri });
    const hostEvents = host.domainEvents();
    await hostEvents.ready;
    await doomed.stop();
    await assert.rejects(async () => {
      for await (const _ of hostEvents) assert.fail('no event expected');
    }, LibvirtConnectionLostError);
    await assert.rejects(host.listAllDomains(), LibvirtConnectionLostError);
  } finally {
    await doomed.stop();
  }
});
