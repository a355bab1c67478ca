/**
 * Fenced VM ownership against a real PostgreSQL: tokens of different hosts are not comparable, so moving a VM is
 * judged by the writer's own live lease and by the VM's ownership generation.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { testHost } from '../test/support/hosts';
import { createTestDatabase, type TestDatabase } from '../test/support/services';
import { acquireHostLease, registerHost } from './hosts';
import { vmSpecSchema } from '../domain/vm-spec';
import { assignVmOwner, claimVm, getVm, VmStoreError } from './vms';

let db: TestDatabase;

before(async () => {
  db = await createTestDatabase();
});

after(async () => {
  await db.drop();
});

/** A host whose live lease has exactly `token`: a long-lived host has a high token, a new one a low token. */
async function hostWithToken(hostId: string, token: number, storagePools: Record<string, string> = {}): Promise<void> {
  await registerHost(db.pool, testHost(hostId, { storagePools }));
  await acquireHostLease(db.pool, { hostId, holder: `${hostId}-agent`, ttlMs: 60_000 });
  await db.pool.query(`UPDATE leases SET fencing_token = $2 WHERE resource = 'host:' || $1`, [hostId, token]);
}

async function newVm(name: string): Promise<string> {
  const vmId = randomUUID();
  await db.pool.query(`INSERT INTO vms (id, name, spec, state) VALUES ($1, $2, '{}', 'running')`, [vmId, name]);
  return vmId;
}

const refusedWith = (code: VmStoreError['code']) => (err: unknown) => err instanceof VmStoreError && err.code === code;

test('a VM moves from a host with token 57 to a host with token 3', async () => {
  await hostWithToken('old-host', 57);
  await hostWithToken('new-host', 3);
  const vmId = await newVm('mover');
  const first = await assignVmOwner(db.pool, { vmId, hostId: 'old-host', token: 57 });
  const moved = await assignVmOwner(db.pool, {
    vmId,
    hostId: 'new-host',
    token: 3,
    expectedGeneration: first.generation,
  });
  assert.equal(moved.generation, first.generation + 1);
  const vm = await getVm(db.pool, vmId);
  assert.equal(vm?.hostId, 'new-host');
  assert.equal(vm?.ownerToken, 3);
  assert.equal(vm?.ownerGeneration, moved.generation);
});

test('a writer whose lease is not live with its token is refused', async () => {
  await hostWithToken('fenced-host', 9);
  const vmId = await newVm('fenced');
  await assert.rejects(
    assignVmOwner(db.pool, { vmId, hostId: 'fenced-host', token: 8 }),
    refusedWith('StaleFencingToken'),
  );
  await db.pool.query(`UPDATE leases SET expires_at = now() - interval '1 second' WHERE resource = 'host:fenced-host'`);
  await assert.rejects(
    assignVmOwner(db.pool, { vmId, hostId: 'fenced-host', token: 9 }),
    refusedWith('StaleFencingToken'),
  );
  assert.equal((await getVm(db.pool, vmId))?.hostId, undefined);
});

test('a write over a stale generation is refused and changes nothing', async () => {
  await hostWithToken('gen-a', 4);
  await hostWithToken('gen-b', 5);
  const vmId = await newVm('generations');
  const { generation } = await assignVmOwner(db.pool, { vmId, hostId: 'gen-a', token: 4 });
  // Someone else moved it meanwhile: a writer that read `generation` before must not overwrite that.
  await assignVmOwner(db.pool, { vmId, hostId: 'gen-b', token: 5, expectedGeneration: generation });
  await assert.rejects(
    assignVmOwner(db.pool, { vmId, hostId: 'gen-a', token: 4, expectedGeneration: generation }),
    refusedWith('OwnershipChanged'),
  );
  const vm = await getVm(db.pool, vmId);
  assert.equal(vm?.hostId, 'gen-b');
  assert.equal(vm?.ownerGeneration, generation + 1);
});

test('ownership of a VM that does not exist is refused as such', async () => {
  await hostWithToken('lonely', 1);
  await assert.rejects(
    assignVmOwner(db.pool, { vmId: randomUUID(), hostId: 'lonely', token: 1 }),
    refusedWith('VmNotFound'),
  );
});

test('a claim places a VM only on a host that mounts its storage pool', async () => {
  await hostWithToken('pool-less', 2);
  await hostWithToken('pool-host', 2, { 'claim-pool': '/mnt/claim-pool' });
  const spec = vmSpecSchema.parse({ name: 'pooled', vcpus: 1, memoryMib: 64, storagePool: 'claim-pool' });
  const policy = { cpuOvercommit: 1, memoryReserveMib: 0 };
  const claim = await claimVm(db.pool, { vmId: randomUUID(), spec, workflowId: 'create-pooled', policy });
  assert.equal(claim.hostId, 'pool-host');
  assert.ok(claim.placement?.ok);
  assert.equal(claim.placement.candidates.length, 1);
  const nowhere = vmSpecSchema.parse({ name: 'unpooled', vcpus: 1, memoryMib: 64, storagePool: 'no-such-pool' });
  await assert.rejects(
    claimVm(db.pool, { vmId: randomUUID(), spec: nowhere, workflowId: 'create-unpooled', policy }),
    (err: unknown) =>
      err instanceof VmStoreError && err.code === 'NoHostAvailable' && /pool-less: does not mount/.test(err.message),
  );
});
