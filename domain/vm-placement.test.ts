import assert from 'node:assert/strict';
import { test } from 'node:test';
import { placeVm, rejectReason, scoreHost, type PlacementHost } from './vm-placement';

const policy = { cpuOvercommit: 2, memoryReserveMib: 256 };
const idle = { vcpus: 0, memoryMib: 0, diskMib: 0, vms: 0 };

function host(id: string, over: Partial<PlacementHost> = {}): PlacementHost {
  return {
    id,
    state: 'up',
    leaseAlive: true,
    cpus: 4,
    memoryMib: 4096,
    diskMib: 100_000,
    labels: { region: 'eu', zone: 'eu-a' },
    storagePools: [],
    allocated: idle,
    ...over,
  };
}

const small = { vcpus: 1, memoryMib: 512, diskMib: 1024 };

test('filters refuse hosts that are down, in maintenance, lease-expired, full or elsewhere', () => {
  assert.equal(rejectReason(host('a', { state: 'down' }), small, policy), 'host is down');
  assert.equal(rejectReason(host('a', { state: 'maintenance' }), small, policy), 'host is maintenance');
  assert.equal(rejectReason(host('a', { leaseAlive: false }), small, policy), 'host lease has expired');
  assert.match(rejectReason(host('a'), { ...small, vcpus: 9 }, policy)!, /needs 9 vCPUs, 8 free/);
  assert.match(rejectReason(host('a'), { ...small, memoryMib: 3841 }, policy)!, /3840 free/);
  assert.equal(rejectReason(host('a'), { ...small, memoryMib: 3840 }, policy), undefined);
  assert.match(rejectReason(host('a', { diskMib: 10 }), small, policy)!, /disk/);
  assert.match(rejectReason(host('a'), { ...small, region: 'us' }, policy)!, /region eu/);
  assert.match(rejectReason(host('a'), { ...small, zone: 'eu-b' }, policy)!, /zone eu-a/);
  assert.equal(rejectReason(host('a'), { ...small, hostId: 'b' }, policy), 'not the requested host');
});

test('allocations count against capacity', () => {
  const busy = host('a', { allocated: { vcpus: 7, memoryMib: 3000, diskMib: 0, vms: 7 } });
  assert.equal(rejectReason(busy, small, policy), undefined);
  assert.match(rejectReason(busy, { ...small, vcpus: 2 }, policy)!, /vCPUs/);
  assert.match(rejectReason(busy, { ...small, memoryMib: 900 }, policy)!, /memory/);
});

test('the score prefers the emptier host, and ties go to the lowest id', () => {
  const loaded = host('a', { allocated: { vcpus: 4, memoryMib: 2048, diskMib: 0, vms: 4 } });
  assert.ok(scoreHost(host('b'), small, policy) > scoreHost(loaded, small, policy));
  const result = placeVm([loaded, host('c'), host('b')], small, policy);
  assert.ok(result.ok);
  assert.equal(result.hostId, 'b');
  assert.deepEqual(
    result.candidates.map((c) => c.hostId),
    ['b', 'c', 'a'],
  );
});

test('placing one VM after another spreads them across equal hosts', () => {
  const hosts = [host('a'), host('b'), host('c')];
  const counts: Record<string, number> = { a: 0, b: 0, c: 0 };
  for (let i = 0; i < 9; i++) {
    const result = placeVm(hosts, small, policy);
    assert.ok(result.ok);
    counts[result.hostId]!++;
    const chosen = hosts.find((h) => h.id === result.hostId)!;
    chosen.allocated = {
      vcpus: chosen.allocated.vcpus + small.vcpus,
      memoryMib: chosen.allocated.memoryMib + small.memoryMib,
      diskMib: chosen.allocated.diskMib + small.diskMib,
      vms: chosen.allocated.vms + 1,
    };
  }
  assert.deepEqual(counts, { a: 3, b: 3, c: 3 });
});

test('no candidate gives every host its reason', () => {
  const result = placeVm([host('a', { state: 'down' }), host('b', { leaseAlive: false })], small, policy);
  assert.deepEqual(result, { ok: false, reasons: { a: 'host is down', b: 'host lease has expired' } });
  assert.deepEqual(placeVm([], small, policy), { ok: false, reasons: {} });
});

test("a host offers a VM only when it mounts the VM's storage pool; every host has local", () => {
  const nfs = host('a', { storagePools: ['nfs'] });
  assert.equal(rejectReason(host('a'), { ...small, storagePool: 'nfs' }, policy), 'does not mount storage pool nfs');
  assert.equal(rejectReason(nfs, { ...small, storagePool: 'nfs' }, policy), undefined);
  assert.equal(rejectReason(nfs, { ...small, storagePool: 'local' }, policy), undefined);
  assert.equal(rejectReason(host('a'), small, policy), undefined, 'no pool named: local');
  const result = placeVm([host('b'), nfs], { ...small, storagePool: 'nfs' }, policy);
  assert.ok(result.ok);
  assert.equal(result.hostId, 'a');
});

test('excluded hosts are filtered with their reason, as a migration excludes its source', () => {
  const request = { ...small, excludeHostIds: ['a'] };
  assert.equal(rejectReason(host('a'), request, policy), 'excluded by the request');
  const result = placeVm(
    [host('a'), host('b', { allocated: { vcpus: 4, memoryMib: 2048, diskMib: 0, vms: 4 } })],
    request,
    policy,
  );
  assert.ok(result.ok);
  assert.equal(result.hostId, 'b', 'the emptier host is excluded, so the other is chosen');
  assert.deepEqual(placeVm([host('a')], request, policy), { ok: false, reasons: { a: 'excluded by the request' } });
});
