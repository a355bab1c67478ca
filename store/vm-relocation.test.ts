/**
 * Relocating a guest off a failed host against a real PostgreSQL: never back onto that host, only onto a host that
 * mounts its pool and has room, held by the failover workflow, and once only however often the step is retried.
 * Each test places within its own region, so the hosts of other tests are not candidates.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { vmSpecSchema, type VmSpecInput } from '../domain/vm-spec';
import { testHost } from '../test/support/hosts';
import { createTestDatabase, type TestDatabase } from '../test/support/services';
import { listEvents } from './events';
import { acquireHostLease, getHost, registerHost } from './hosts';
import { relocateVm } from './vm-relocation';
import { getVm, VmStoreError } from './vms';

let db: TestDatabase;

before(async () => {
  db = await createTestDatabase();
});

after(async () => {
  await db.drop();
});

const policy = { cpuOvercommit: 1, memoryReserveMib: 0 };

async function host(
  id: string,
  region: string,
  over: { memoryMib?: number; storagePools?: Record<string, string> } = {},
): Promise<number> {
  await registerHost(db.pool, testHost(id, { labels: { region }, ...over }));
  return acquireHostLease(db.pool, { hostId: id, holder: `${id}-agent`, ttlMs: 60_000 });
}

/** A running guest owned by `hostId` at generation 1, placed by its region. */
async function guest(hostId: string, token: number, spec: Omit<VmSpecInput, 'name'> & { region: string }) {
  const vmId = randomUUID();
  const name = `g-${vmId.slice(0, 8)}`;
  const { region, ...rest } = spec;
  const parsed = vmSpecSchema.parse({ name, ...rest, placement: { region } });
  await db.pool.query(
    `INSERT INTO vms (id, name, spec, state, host_id, owner_token, owner_generation)
     VALUES ($1, $2, $3, 'running', $4, $5, 1)`,
    [vmId, name, JSON.stringify(parsed), hostId, token],
  );
  return vmId;
}

const refusedWith = (code: VmStoreError['code'], pattern: RegExp) => (err: unknown) =>
  err instanceof VmStoreError && err.code === code && pattern.test(err.message);

test('a guest moves to a live host other than its own, held by the failover, and a retry returns the same move', async () => {
  // Its own host is the roomiest and still looks up: only the exclusion keeps the guest off it.
  const deadToken = await host('r1-dead', 'r1', { memoryMib: 16_384 });
  await host('r1-small', 'r1', { memoryMib: 1024 });
  const target = await host('r1-big', 'r1', { memoryMib: 4096 });
  const vmId = await guest('r1-dead', deadToken, { region: 'r1', vcpus: 1, memoryMib: 512 });

  const input = { vmId, fromHostId: 'r1-dead', workflowId: 'failover-r1', policy };
  const moved = await relocateVm(db.pool, input);
  assert.deepEqual(moved, { hostId: 'r1-big', ownerToken: target, generation: 2 });
  const vm = await getVm(db.pool, vmId);
  assert.equal(vm?.hostId, 'r1-big');
  assert.equal(vm?.state, 'starting');
  assert.equal(vm?.operationWorkflowId, 'failover-r1');
  assert.equal((await getHost(db.pool, 'r1-big'))?.allocated.memoryMib, 512);

  assert.deepEqual(await relocateVm(db.pool, input), moved);
  assert.equal((await getVm(db.pool, vmId))?.ownerGeneration, 2, 'the retry wrote nothing');
  const relocated = (await listEvents(db.pool, { vmId, limit: 10 })).filter((e) => e.kind === 'vm.relocated');
  assert.equal(relocated.length, 1);

  await assert.rejects(
    relocateVm(db.pool, { ...input, workflowId: 'failover-other' }),
    refusedWith('VmBusy', /busy with workflow failover-r1/),
  );
});

test('a guest on a shared pool goes only where the pool is mounted, and only where its memory fits', async () => {
  const deadToken = await host('r2-dead', 'r2', { storagePools: { nfs: '/mnt/nfs' } });
  await host('r2-nopool', 'r2', { memoryMib: 16_384 });
  await host('r2-full', 'r2', { memoryMib: 2048, storagePools: { nfs: '/mnt/nfs' } });
  await host('r2-fits', 'r2', { memoryMib: 8192, storagePools: { nfs: '/mnt/nfs' } });
  const vmId = await guest('r2-dead', deadToken, {
    region: 'r2',
    vcpus: 1,
    memoryMib: 4096,
    storagePool: 'nfs',
    disks: [{ name: 'root', sizeMib: 100_000 }],
  });
  const moved = await relocateVm(db.pool, { vmId, fromHostId: 'r2-dead', workflowId: 'failover-r2', policy });
  assert.equal(moved.hostId, 'r2-fits');
});

test('when no host can take the guest, the refusal says why for each host and the guest is left as it was', async () => {
  const deadToken = await host('r3-dead', 'r3');
  await host('r3-small', 'r3', { memoryMib: 1024 });
  const vmId = await guest('r3-dead', deadToken, { region: 'r3', vcpus: 1, memoryMib: 1536 });
  await assert.rejects(
    relocateVm(db.pool, { vmId, fromHostId: 'r3-dead', workflowId: 'failover-r3', policy }),
    refusedWith('NoHostAvailable', /r3-dead: excluded by the request.*r3-small: needs 1536 MiB memory, 1024 free/),
  );
  const vm = await getVm(db.pool, vmId);
  assert.equal(vm?.hostId, 'r3-dead');
  assert.equal(vm?.state, 'running');
  assert.equal(vm?.operationWorkflowId, undefined);

  await assert.rejects(
    relocateVm(db.pool, { vmId, fromHostId: 'r3-small', workflowId: 'failover-r3', policy }),
    refusedWith('OwnershipChanged', /is on r3-dead, not r3-small/),
  );
});
