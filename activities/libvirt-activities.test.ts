/**
 * The host activities' idempotence, heartbeats and cancellation, in MockActivityEnvironment over an in-memory
 * libvirt: each libvirt error is the typed one the real driver raises (native/libvirt covers the mapping).
 */
import { MockActivityEnvironment } from '@temporalio/testing';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  LibvirtErrorCode,
  LibvirtInvalidStateError,
  LibvirtNotFoundError,
  type DiskImages,
  type DomainState,
  type LibvirtConnection,
} from '../native/libvirt';
import { createLibvirtActivities, type VmDisk } from './libvirt-activities';

const VM_ID = '6f1c2a3e-1111-4222-8333-444455556666';

/** A hypervisor whose guests have no OS: ACPI shutdown is accepted and ignored, as on the harness. */
function fakeLibvirt(domains: Record<string, { uuid: string; state: DomainState }>) {
  const calls: string[] = [];
  const find = (name: string, op: string) => {
    const domain = domains[name];
    if (!domain) {
      throw new LibvirtNotFoundError({
        message: `failed to get domain '${name}'`,
        code: LibvirtErrorCode.noDomain,
        operation: op,
      });
    }
    return domain;
  };
  const invalid = (op: string) =>
    new LibvirtInvalidStateError({
      message: 'Domain is already active',
      code: LibvirtErrorCode.operationInvalid,
      operation: op,
    });
  const conn = {
    domainGetState: async ({ name }: { name: string }) => find(name, 'state').state,
    domainLookupByName: async ({ name }: { name: string }) => ({ name, ...find(name, 'lookup') }),
    domainCreate: async ({ name }: { name: string }) => {
      calls.push(`create ${name}`);
      const domain = find(name, 'start');
      if (domain.state === 'running') throw invalid('start');
      domain.state = 'running';
    },
    domainShutdown: async ({ name }: { name: string }) => void calls.push(`shutdown ${name}`),
    domainDestroy: async ({ name }: { name: string }) => {
      calls.push(`destroy ${name}`);
      const domain = find(name, 'destroy');
      if (domain.state !== 'running') throw invalid('destroy');
      domain.state = 'shutoff';
    },
    domainUndefine: async ({ name }: { name: string }) => {
      calls.push(`undefine ${name}`);
      find(name, 'undefine');
      delete domains[name];
    },
    domainDefineXML: async ({ xml }: { xml: string }) => {
      calls.push(`define ${xml}`);
      return { name: /<name>([^<]+)<\/name>/.exec(xml)?.[1], uuid: /<uuid>([^<]+)<\/uuid>/.exec(xml)?.[1] };
    },
  };
  return { conn: conn as unknown as LibvirtConnection, calls };
}

function activities(
  domains: Record<string, { uuid: string; state: DomainState }>,
  imageRoot = '/srv/images',
  storagePools: Record<string, string> = { shared: '/srv/pools/shared' },
) {
  const libvirt = fakeLibvirt(domains);
  const created: string[] = [];
  const overlays: Array<{ path: string; backingPath: string; backingFormat: string; sizeBytes?: number }> = [];
  const images = {
    create: async (input: { path: string }) => void created.push(input.path),
    createOverlay: async (input: (typeof overlays)[number]) => {
      overlays.push(input);
      created.push(input.path);
    },
  } as unknown as DiskImages;
  const acts = createLibvirtActivities({
    hostId: 'h1',
    conn: libvirt.conn,
    images,
    imageRoot,
    storagePools,
    domainType: 'qemu',
  });
  return { acts, calls: libvirt.calls, created, overlays };
}

test('start is idempotent: a retry finds the guest running and succeeds', async () => {
  const { acts, calls } = activities({ web: { uuid: VM_ID, state: 'shutoff' } });
  const env = new MockActivityEnvironment();
  assert.deepEqual(await env.run(() => acts.startVmDomain({ vmId: VM_ID, name: 'web' })), { alreadyRunning: false });
  assert.deepEqual(await env.run(() => acts.startVmDomain({ vmId: VM_ID, name: 'web' })), { alreadyRunning: true });
  assert.deepEqual(calls, ['create web', 'create web']);
});

test('disks go under the VM directory in order, with a heartbeat per disk', async () => {
  const { acts, created } = activities({});
  const env = new MockActivityEnvironment();
  const beats: unknown[] = [];
  env.on('heartbeat', (d: unknown) => beats.push(d));
  const disks = await env.run<[], VmDisk[], () => Promise<VmDisk[]>>(() =>
    acts.createVmDisks({
      vmId: VM_ID,
      disks: [
        { name: 'root', sizeMib: 16, format: 'qcow2' as const },
        { name: 'data', sizeMib: 8, format: 'raw' as const },
      ],
    }),
  );
  assert.deepEqual(
    disks.map((d) => [d.path, d.target]),
    [
      [`/srv/images/${VM_ID}/root.qcow2`, 'vda'],
      [`/srv/images/${VM_ID}/data.raw`, 'vdb'],
    ],
  );
  assert.deepEqual(
    created,
    disks.map((d) => d.path),
  );
  assert.deepEqual(beats, [{ disksDone: 1 }, { disksDone: 2 }]);
});

test('stop heartbeats while the guest ignores ACPI, then destroys it; a stopped guest is left alone', async () => {
  const domains = { web: { uuid: VM_ID, state: 'running' as DomainState } };
  const { acts, calls } = activities(domains);
  const env = new MockActivityEnvironment();
  let beats = 0;
  env.on('heartbeat', () => beats++);
  // 2.5 s of waiting is ten 250 ms polls: even a machine ten times slower than usual heartbeats twice.
  const result = await env.run(() => acts.stopVmDomain({ vmId: VM_ID, name: 'web', timeoutMs: 2_500 }));
  assert.deepEqual(result, { outcome: 'destroyed' });
  assert.ok(beats >= 2, `heartbeats while waiting: ${beats}`);
  assert.deepEqual(calls, ['shutdown web', 'destroy web']);
  assert.deepEqual(await env.run(() => acts.stopVmDomain({ vmId: VM_ID, name: 'web', timeoutMs: 600 })), {
    outcome: 'already-off',
  });
});

test('a cancelled stop stops waiting and destroys nothing', async () => {
  const domains = { web: { uuid: VM_ID, state: 'running' as DomainState } };
  const { acts, calls } = activities(domains);
  const env = new MockActivityEnvironment();
  env.once('heartbeat', () => env.cancel());
  await assert.rejects(
    env.run(() => acts.stopVmDomain({ vmId: VM_ID, name: 'web', timeoutMs: 60_000 })),
    CancelledFailure,
  );
  assert.deepEqual(calls, ['shutdown web']);
  assert.equal(domains.web.state, 'running');
});

test('delete removes domain and disks, repeats harmlessly, and never touches a namesake with another UUID', async () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'novacron-act-'));
  mkdirSync(path.join(root, VM_ID));
  writeFileSync(path.join(root, VM_ID, 'root.qcow2'), 'x');
  const domains: Record<string, { uuid: string; state: DomainState }> = {
    web: { uuid: VM_ID, state: 'running' },
    other: { uuid: '00000000-0000-4000-8000-000000000000', state: 'running' },
  };
  const { acts } = activities(domains, root);
  const env = new MockActivityEnvironment();
  assert.deepEqual(await env.run(() => acts.deleteVmDomain({ vmId: VM_ID, name: 'web' })), { undefined: true });
  assert.equal(domains.web, undefined);
  assert.ok(!existsSync(path.join(root, VM_ID)));
  assert.deepEqual(await env.run(() => acts.deleteVmDomain({ vmId: VM_ID, name: 'web' })), { undefined: false });
  await assert.rejects(
    env.run(() => acts.deleteVmDomain({ vmId: VM_ID, name: 'other' })),
    (err: unknown) => err instanceof ApplicationFailure && err.nonRetryable && err.type === 'DomainNameConflict',
  );
  assert.equal(domains.other?.state, 'running');
});

test('on a shared pool the disks go under <pool>/vms/<vmId>, the first an overlay on the base', async () => {
  const { acts, created, overlays } = activities({});
  const env = new MockActivityEnvironment();
  const base = { path: '/srv/pools/shared/bases/guest.raw', format: 'raw' as const };
  const disks = await env.run<[], VmDisk[], () => Promise<VmDisk[]>>(() =>
    acts.createVmDisks({
      vmId: VM_ID,
      storagePool: 'shared',
      base,
      disks: [
        { name: 'root', sizeMib: 16, format: 'qcow2' as const },
        { name: 'data', sizeMib: 8, format: 'qcow2' as const },
      ],
    }),
  );
  assert.deepEqual(
    disks.map((d) => d.path),
    [`/srv/pools/shared/vms/${VM_ID}/root.qcow2`, `/srv/pools/shared/vms/${VM_ID}/data.qcow2`],
  );
  assert.deepEqual(overlays, [
    { path: disks[0]!.path, backingPath: base.path, backingFormat: 'raw', sizeBytes: 16 * 1024 * 1024 },
  ]);
  assert.deepEqual(created, [disks[0]!.path, disks[1]!.path]);
});

test('a pool the host does not mount, or a raw first disk on an image, fails the step for good', async () => {
  const { acts, created } = activities({});
  const env = new MockActivityEnvironment();
  const disks = [{ name: 'root', sizeMib: 16, format: 'raw' as const }];
  await assert.rejects(
    env.run(() => acts.createVmDisks({ vmId: VM_ID, storagePool: 'nfs-9', disks })),
    (err: unknown) =>
      err instanceof ApplicationFailure &&
      err.nonRetryable &&
      err.type === 'StoragePoolNotMounted' &&
      /does not mount storage pool nfs-9 \(it has local, shared\)/.test(err.message),
  );
  await assert.rejects(
    env.run(() =>
      acts.createVmDisks({ vmId: VM_ID, disks, base: { path: '/srv/images/library/guest.raw', format: 'raw' } }),
    ),
    (err: unknown) => err instanceof ApplicationFailure && err.nonRetryable && err.type === 'InvalidVmSpec',
  );
  assert.deepEqual(created, []);
});

test('the domain logs its console under this host and carries the OEM strings; disks may lie in the pool', async () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'novacron-act-'));
  const { acts, calls } = activities({}, root, { shared: '/srv/pools/shared' });
  const env = new MockActivityEnvironment();
  const disk = { name: 'root', path: `/srv/pools/shared/vms/${VM_ID}/root.qcow2`, format: 'qcow2' as const };
  await env.run(() =>
    acts.defineVmDomain({
      vmId: VM_ID,
      spec: {
        name: 'web',
        vcpus: 1,
        memoryMib: 128,
        network: 'none',
        storagePool: 'shared',
        oemStrings: ['novacron.dirty-mibps=4'],
      },
      disks: [{ ...disk, target: 'vda' }],
    }),
  );
  const xml = calls.find((c) => c.startsWith('define '))!;
  assert.match(xml, new RegExp(`<source file="${disk.path}"`));
  assert.match(xml, new RegExp(`<log file="${root}/consoles/${VM_ID}\\.log"`));
  assert.match(xml, /<entry>novacron\.dirty-mibps=4<\/entry>/);
  assert.ok(existsSync(path.join(root, 'consoles')), 'virtlogd needs the console directory to exist');
  // A local VM's disk may not point into the pool: every disk of a VM lies in its own pool.
  await assert.rejects(
    env.run(() =>
      acts.defineVmDomain({
        vmId: VM_ID,
        spec: { name: 'web', vcpus: 1, memoryMib: 128, network: 'none', storagePool: 'local' },
        disks: [{ ...disk, target: 'vda' }],
      }),
    ),
    (err: unknown) => err instanceof ApplicationFailure && err.type === 'DomainSpecError',
  );
});

test('delete removes the VM directory in every pool and its console log, and leaves the image bases', async () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'novacron-act-'));
  const shared = path.join(root, 'pools', 'shared');
  const imageRoot = path.join(root, 'images');
  const files = {
    overlay: path.join(shared, 'vms', VM_ID, 'root.qcow2'),
    base: path.join(shared, 'bases', 'guest.raw'),
    replica: path.join(imageRoot, 'library', 'guest.raw'),
    console: path.join(imageRoot, 'consoles', `${VM_ID}.log`),
    otherVm: path.join(shared, 'vms', '00000000-0000-4000-8000-000000000000', 'root.qcow2'),
  };
  for (const file of Object.values(files)) {
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, 'x');
  }
  const { acts } = activities({ web: { uuid: VM_ID, state: 'shutoff' } }, imageRoot, { shared });
  await new MockActivityEnvironment().run(() => acts.deleteVmDomain({ vmId: VM_ID, name: 'web' }));
  assert.deepEqual(Object.fromEntries(Object.entries(files).map(([what, file]) => [what, existsSync(file)])), {
    overlay: false,
    base: true,
    replica: true,
    console: false,
    otherVm: true,
  });
});
