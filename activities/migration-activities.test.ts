/**
 * The host side of migration in MockActivityEnvironment over an in-memory libvirt: the target's check that it sees
 * the VM's disks in the shared pool, the job's parameters and its abort, the re-attach of a retried job, and the
 * look at a host that the settlement acts on. Each libvirt error is the typed one the real driver raises.
 */
import { MockActivityEnvironment } from '@temporalio/testing';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import {
  buildDomainXml,
  LibvirtErrorCode,
  LibvirtMigrationAbortedError,
  LibvirtNotFoundError,
  type DomainMigrateInput,
  type DomainState,
  type LibvirtConnection,
} from '../native/libvirt';
import {
  createMigrationActivities,
  destinationXml,
  migrationDisks,
  type MigrateDomainInput,
} from './migration-activities';

const VM_ID = '6f1c2a3e-1111-4222-8333-444455556666';
const ref = { vmId: VM_ID, name: 'web' };

/** What NovaCron defines on a source host (h1): a disk in the pool, h1's console log, h1 as the owner. */
function sourceXml(uuid: string): string {
  return buildDomainXml({
    name: 'web',
    uuid,
    vcpus: 1,
    memoryMiB: 256,
    disks: [{ path: '/pool/vms/web/root.qcow2', format: 'qcow2', target: 'vda' }],
    networks: [],
    metadata: { vmId: uuid, owner: 'h1' },
    imageRoot: '/pool',
    domainType: 'qemu',
    consoleLogPath: '/var/lib/h1/consoles/web.log',
  });
}

interface FakeDomain {
  uuid: string;
  state: DomainState;
  /** The job type domjobinfo reports. */
  job?: 'unbounded' | 'none';
}

function fakeLibvirt(domains: Record<string, FakeDomain>, migrate?: (input: DomainMigrateInput) => Promise<void>) {
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
  const conn = {
    domainGetXMLDesc: async ({ name }: { name: string }) => sourceXml(find(name, 'dumpxml').uuid),
    domainLookupByName: async ({ name }: { name: string }) => ({ name, ...find(name, 'lookup') }),
    domainGetJobStats: async ({ name }: { name: string }) => ({ type: find(name, 'jobinfo').job ?? 'none', stats: {} }),
    domainUndefine: async ({ name }: { name: string }) => {
      calls.push(`undefine ${name}`);
      find(name, 'undefine');
      delete domains[name];
    },
    domainDestroy: async ({ name }: { name: string }) => {
      calls.push(`destroy ${name}`);
      find(name, 'destroy').state = 'shutoff';
    },
    domainResume: async ({ name }: { name: string }) => {
      calls.push(`resume ${name}`);
      find(name, 'resume').state = 'running';
    },
    domainMigrateToURI3: async (input: DomainMigrateInput) => {
      calls.push(`migrate ${input.name}`);
      await migrate?.(input);
    },
  };
  return { conn: conn as unknown as LibvirtConnection, calls };
}

function activities(
  domains: Record<string, FakeDomain>,
  options: { pools?: Record<string, string>; migrate?: (input: DomainMigrateInput) => Promise<void> } = {},
) {
  const libvirt = fakeLibvirt(domains, options.migrate);
  const acts = createMigrationActivities({
    hostId: 'h2',
    conn: libvirt.conn,
    imageRoot: mkdtempSync(path.join(os.tmpdir(), 'novacron-root-')),
    storagePools: options.pools ?? {},
    logger: pino({ level: 'silent' }),
  });
  return { acts, calls: libvirt.calls };
}

/** MockActivityEnvironment.run types its result as unknown. */
const run = <R>(env: MockActivityEnvironment, work: () => Promise<R>): Promise<R> =>
  env.run<[], R, () => Promise<R>>(work);

const permanent = (type: string) => (err: unknown) =>
  err instanceof ApplicationFailure && err.nonRetryable && err.type === type;

test('the disks of a live domain come with their backing chain', () => {
  const xml = `<domain type='qemu'><name>web</name><devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/pool/vm/root.qcow2'/>
      <backingStore type='file' index='1'><format type='qcow2'/><source file='/pool/library/mid.qcow2'/>
        <backingStore type='file' index='2'><format type='raw'/><source file='/pool/library/debian.raw'/>
          <backingStore/></backingStore></backingStore>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/iso/boot.iso'/><target dev='hdc'/></disk>
    <disk type='file' device='disk'><source file='/pool/vm/data.raw'/><backingStore/><target dev='vdb'/></disk>
  </devices></domain>`;
  assert.deepEqual(migrationDisks(xml), [
    {
      target: 'vda',
      path: '/pool/vm/root.qcow2',
      backingPaths: ['/pool/library/mid.qcow2', '/pool/library/debian.raw'],
    },
    { target: 'vdb', path: '/pool/vm/data.raw', backingPaths: [] },
  ]);
});

test('the destination XML names the target as owner and its own console log, and changes nothing else', () => {
  const xml = sourceXml(VM_ID);
  const moved = destinationXml(xml, { consoleLogPath: '/var/lib/h3/consoles/web.log', ownerHostId: 'h3' });
  assert.match(moved, /<novacron:owner>h3<\/novacron:owner>/);
  assert.match(moved, /<log file="\/var\/lib\/h3\/consoles\/web.log" append="off"\/>/);
  const back = destinationXml(moved, { consoleLogPath: '/var/lib/h1/consoles/web.log', ownerHostId: 'h1' });
  assert.equal(back, xml, 'only the owner and the log path differ');
});

test('the target checks every disk and base file in its mount of the pool', async () => {
  const pool = mkdtempSync(path.join(os.tmpdir(), 'novacron-pool-'));
  mkdirSync(path.join(pool, 'vm'));
  mkdirSync(path.join(pool, 'library'));
  writeFileSync(path.join(pool, 'vm', 'root.qcow2'), 'overlay');
  writeFileSync(path.join(pool, 'library', 'debian.raw'), 'base');
  const disk = (base: string) => ({ target: 'vda', path: path.join(pool, 'vm', 'root.qcow2'), backingPaths: [base] });
  const input = { ...ref, storagePool: 'nfs', disks: [disk(path.join(pool, 'library', 'debian.raw'))] };
  const env = new MockActivityEnvironment();

  const leftover: Record<string, FakeDomain> = { web: { uuid: VM_ID, state: 'shutoff' } };
  const { acts, calls } = activities(leftover, { pools: { nfs: pool } });
  const prepared = await run(env, () => acts.prepareMigrationTarget(input));
  assert.equal(prepared.checked.length, 2);
  assert.ok(prepared.consoleLogPath.endsWith(`/consoles/${VM_ID}.log`), prepared.consoleLogPath);
  assert.ok(existsSync(path.dirname(prepared.consoleLogPath)), 'the target made its console log directory');
  assert.deepEqual(calls, ['undefine web'], 'an inactive leftover of an earlier attempt is removed');

  const missing = { ...input, disks: [disk(path.join(pool, 'library', 'gone.raw'))] };
  await assert.rejects(
    env.run(() => acts.prepareMigrationTarget(missing)),
    permanent('DiskNotVisibleOnTarget'),
  );
  const outside = { ...input, disks: [disk(path.join(os.tmpdir(), 'debian.raw'))] };
  await assert.rejects(
    env.run(() => acts.prepareMigrationTarget(outside)),
    permanent('DiskOutsideStoragePool'),
  );
  const unmounted = activities({}, { pools: {} }).acts;
  await assert.rejects(
    env.run(() => unmounted.prepareMigrationTarget(input)),
    permanent('TargetLacksStoragePool'),
  );
  const live = activities({ web: { uuid: VM_ID, state: 'running' } }, { pools: { nfs: pool } }).acts;
  await assert.rejects(
    env.run(() => live.prepareMigrationTarget(input)),
    permanent('TargetDomainActive'),
  );
});

const job: MigrateDomainInput = {
  ...ref,
  workflowId: 'migrate-x',
  targetHostId: 'h3',
  targetConsoleLogPath: '/var/lib/h3/consoles/web.log',
  destUri: 'qemu+tcp://10.0.0.2/system',
  p2p: true,
  migrateUri: 'tcp://10.0.0.2',
  parameters: { parallelConnections: 2, maxDowntimeMs: 300, autoConverge: true, postCopy: false },
  timeoutMs: 60_000,
};

test('the job runs with the plan parameters, persists on the target and undefines the source', async () => {
  let seen: DomainMigrateInput | undefined;
  const { acts } = activities(
    { web: { uuid: VM_ID, state: 'running' } },
    { migrate: async (input) => void (seen = input) },
  );
  const result = await run(new MockActivityEnvironment(), () => acts.migrateDomain(job));
  assert.equal(result.resumed, false);
  assert.ok(seen);
  const { signal, destXml, persistentXml, ...passed } = seen;
  assert.ok(signal instanceof AbortSignal);
  assert.equal(persistentXml, destXml, 'the target keeps the definition it runs');
  assert.ok(destXml?.includes('file="/var/lib/h3/consoles/web.log"'), destXml);
  assert.ok(!destXml?.includes('/var/lib/h1/'), "the source's console log stays the source's");
  assert.deepEqual(passed, {
    name: 'web',
    destUri: 'qemu+tcp://10.0.0.2/system',
    p2p: true,
    migrateUri: 'tcp://10.0.0.2',
    persistDest: true,
    undefineSource: true,
    unsafe: true,
    parallelConnections: 2,
    maxDowntimeMs: 300,
    autoConverge: true,
    postCopy: false,
    timeoutMs: 60_000,
  });
});

test('a cancelled job aborts through the signal; an abort by another client is MigrationJobAborted', async () => {
  const aborted = () =>
    new LibvirtMigrationAbortedError({
      message: 'aborted',
      code: LibvirtErrorCode.operationAborted,
      operation: 'migrate web',
    });
  // As the driver does: an abort before the job starts rejects at once, one during it when the job has stopped.
  const untilAborted = (input: DomainMigrateInput) =>
    new Promise<void>((_, reject) => {
      if (input.signal!.aborted) reject(aborted());
      input.signal!.addEventListener('abort', () => reject(aborted()));
    });
  const { acts } = activities({ web: { uuid: VM_ID, state: 'running' } }, { migrate: untilAborted });
  const env = new MockActivityEnvironment();
  env.once('heartbeat', () => env.cancel());
  await assert.rejects(
    env.run(() => acts.migrateDomain(job)),
    CancelledFailure,
  );

  const abortedElsewhere = activities(
    { web: { uuid: VM_ID, state: 'running' } },
    {
      migrate: async () => {
        throw new LibvirtMigrationAbortedError({
          message: "operation aborted: job 'migration out' canceled by client",
          code: LibvirtErrorCode.operationAborted,
          operation: 'migrate web',
        });
      },
    },
  ).acts;
  await assert.rejects(
    new MockActivityEnvironment().run(() => abortedElsewhere.migrateDomain(job)),
    permanent('MigrationJobAborted'),
  );
});

test('a retried job whose domain already left this host reports success without migrating again', async () => {
  const { acts, calls } = activities({});
  const result = await run(new MockActivityEnvironment({ attempt: 2 }), () => acts.migrateDomain(job));
  assert.deepEqual(result, { jobMs: 0, resumed: true });
  assert.deepEqual(calls, []);
});

test('inspect tells the VM from a namesake; resume, discard and cleanup act only on the VM', async () => {
  const domains: Record<string, FakeDomain> = {
    web: { uuid: VM_ID, state: 'paused', job: 'unbounded' },
    other: { uuid: '00000000-0000-4000-8000-000000000000', state: 'running' },
  };
  const { acts, calls } = activities(domains);
  const env = new MockActivityEnvironment();
  const seen = await run(env, () => acts.inspectMigrationDomain(ref));
  assert.deepEqual([seen.state, seen.active, seen.jobActive, seen.foreign], ['paused', true, true, false]);
  const namesake = await run(env, () => acts.inspectMigrationDomain({ vmId: VM_ID, name: 'other' }));
  assert.deepEqual([namesake.state, namesake.active, namesake.foreign], ['absent', false, true]);

  assert.deepEqual(await run(env, () => acts.resumeMigrationSource(ref)), { action: 'resumed' });
  await assert.rejects(
    env.run(() => acts.cleanupMigrationSource(ref)),
    permanent('SourceStillRunning'),
  );
  await assert.rejects(
    env.run(() => acts.discardMigrationTarget({ vmId: VM_ID, name: 'other' })),
    permanent('DomainNameConflict'),
  );
  assert.deepEqual(await run(env, () => acts.discardMigrationTarget(ref)), { removed: true });
  assert.deepEqual(await run(env, () => acts.discardMigrationTarget(ref)), { removed: false });
  assert.deepEqual(calls, ['resume web', 'destroy web', 'undefine web']);
  assert.equal(domains.other?.state, 'running');
});
