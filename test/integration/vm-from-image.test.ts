/**
 * VMs from an image on a shared storage pool, end to end on real libvirt: the test guest (guest/, built or taken
 * from its cache) is registered from host-1's library; a VM from it on the fleet's `shared` pool, pinned to host-2,
 * brings the image to host-2 by DWCP, makes the pool's base from that copy and boots from an overlay on it (its
 * heartbeat shows in its console log on host-2); a second VM on host-1 reuses the base. Deleting both leaves the
 * base and the library copies. Fails without libvirt or the guest's build packages, as the other harness tests do.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { vmConsoleLogPath } from '../../activities/storage-paths';
import { TESTGUEST_NAME } from '../../guest/build';
import { parseConsoleLog, testGuestOemStrings } from '../../guest/workload';
import { isNotFound, tolerate } from '../../native/libvirt';
import { FLEET_SHARED_POOL, startFleet, TEST_FLEET_OVERRIDES, type Fleet } from '../support/fleet';
import { createTestDatabase, scratchDir, testConfig, type TestDatabase } from '../support/services';
import { registerTestGuest } from '../support/test-guest-library';
import { waitUntil } from '../support/wait';

const HOSTS = ['host-1', 'host-2'];
// A bound for a broken boot on a loaded 2-core TCG machine, not a speed requirement (a boot takes seconds).
const HEARTBEAT_TIMEOUT_MS = 120_000;

let db: TestDatabase;
let fleet: Fleet;

before(async () => {
  db = await createTestDatabase();
  fleet = await startFleet({
    config: testConfig({ databaseUrl: db.url, overrides: TEST_FLEET_OVERRIDES }),
    pool: db.pool,
    hostIds: HOSTS,
    scratchDir,
  });
  await registerTestGuest(fleet);
});

after(async () => {
  await fleet?.stop();
  await db?.drop();
});

interface CreatedVm {
  vmId: string;
  name: string;
  hostId: string;
  steps: string[];
  consoleLog: string;
}

async function createFromImage(name: string, hostId: string): Promise<CreatedVm> {
  const started = await fleet.createVm({
    name,
    vcpus: 1,
    memoryMib: 256,
    image: TESTGUEST_NAME,
    storagePool: FLEET_SHARED_POOL,
    hostId,
    oemStrings: testGuestOemStrings({ dirtyMiBps: 0 }),
  });
  const created = await fleet.waitForWorkflow(started.workflowId, 300_000);
  assert.equal(created.hostId, hostId);
  return {
    vmId: started.vmId,
    name,
    hostId,
    steps: created.steps.map((s) => `${s.name}:${s.status}`),
    consoleLog: vmConsoleLogPath({ imageRoot: fleet.imageRoots[hostId]!, vmId: started.vmId }),
  };
}

async function heartbeats(vm: CreatedVm, count: number): Promise<number[]> {
  const report = await waitUntil(
    `${count} heartbeats from ${vm.name}`,
    async () => {
      const parsed = parseConsoleLog(await readFile(vm.consoleLog, 'utf8').catch(() => ''));
      assert.equal(parsed.error, undefined, `${vm.name}'s workload refused to start`);
      return parsed.heartbeats.length >= count ? parsed : undefined;
    },
    { timeoutMs: HEARTBEAT_TIMEOUT_MS, intervalMs: 250 },
  );
  return report.heartbeats;
}

interface QemuImgInfo {
  format: string;
  'backing-filename'?: string;
}

function qemuImgInfo(file: string): QemuImgInfo {
  const out = execFileSync('qemu-img', ['info', '--force-share', '--output=json', file], { encoding: 'utf8' });
  return JSON.parse(out) as QemuImgInfo;
}

test('VMs from the test guest on the shared pool boot from overlays on one base, which outlives them', async (t) => {
  const pool = fleet.storagePools[FLEET_SHARED_POOL]!;
  const base = path.join(pool, 'bases', `${TESTGUEST_NAME}.raw`);

  const first = await createFromImage('tg-shared-1', 'host-2');
  t.diagnostic(`first VM: ${first.steps.join(' ')}`);
  assert.deepEqual(first.steps, [
    'place:ok',
    'image:ok',
    'image-base:ok',
    'replicate-image:ok',
    'create-disks:ok',
    'define:ok',
    'start:ok',
    'record:ok',
  ]);
  const image = (await fleet.inject({ method: 'GET', url: `/v1/images/${TESTGUEST_NAME}` })).json<{
    sha256: string;
    replicas: Array<{ hostId: string; state: string }>;
  }>();
  assert.deepEqual(
    image.replicas.map((r) => `${r.hostId}:${r.state}`),
    ['host-1:ready', 'host-2:ready'],
    'host-2 got its copy by replication',
  );
  const overlay = path.join(pool, 'vms', first.vmId, 'root.qcow2');
  assert.deepEqual(
    { format: qemuImgInfo(overlay).format, backing: qemuImgInfo(overlay)['backing-filename'] },
    { format: 'qcow2', backing: base },
  );
  const baseSha = execFileSync('sha256sum', [base], { encoding: 'utf8' }).split(' ')[0];
  assert.equal(baseSha, image.sha256, 'the base is the image, byte for byte');

  const second = await createFromImage('tg-shared-2', 'host-1');
  assert.ok(!second.steps.includes('replicate-image:ok'), `the second VM reuses the base: ${second.steps.join(' ')}`);

  for (const vm of [first, second]) {
    const beats = await heartbeats(vm, 3);
    assert.deepEqual(
      beats,
      beats.map((_, i) => i),
      `${vm.name} counts from 0 without a gap`,
    );
    // Its console log is its own host's, never the other's.
    const other = HOSTS.find((h) => h !== vm.hostId)!;
    assert.ok(!existsSync(vmConsoleLogPath({ imageRoot: fleet.imageRoots[other]!, vmId: vm.vmId })));
  }

  for (const vm of [first, second]) {
    await fleet.waitForWorkflow((await fleet.operate(vm.vmId, 'delete')).workflowId);
    assert.equal(
      await tolerate(fleet.libvirt[vm.hostId]!.domainLookupByName({ name: vm.name }), isNotFound),
      undefined,
    );
    assert.ok(!existsSync(path.join(pool, 'vms', vm.vmId)), `${vm.name}'s overlay directory is gone`);
    assert.ok(!existsSync(vm.consoleLog), `${vm.name}'s console log is gone`);
  }
  assert.ok(existsSync(base), 'the base outlives the VMs made from it');
  for (const hostId of HOSTS) {
    assert.ok(existsSync(path.join(fleet.imageRoots[hostId]!, 'library', `${TESTGUEST_NAME}.raw`)));
  }
});
