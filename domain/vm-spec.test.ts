import assert from 'node:assert/strict';
import { test } from 'node:test';
import { diskTarget, vmSpecSchema } from './vm-spec';

const valid = { name: 'web-1', vcpus: 1, memoryMib: 64, disks: [{ name: 'root', sizeMib: 64 }] };

function firstIssue(input: unknown): string {
  const result = vmSpecSchema.safeParse(input);
  assert.equal(result.success, false, `expected ${JSON.stringify(input)} to be refused`);
  const issue = result.error.issues[0]!;
  return `${issue.path.join('.')}: ${issue.message}`;
}

test('a minimal spec gets its defaults', () => {
  const spec = vmSpecSchema.parse(valid);
  assert.deepEqual(spec, {
    ...valid,
    disks: [{ name: 'root', sizeMib: 64, format: 'qcow2' }],
    network: 'none',
    ha: true,
    haPriority: 50,
    storagePool: 'local',
  });
  assert.deepEqual(vmSpecSchema.parse({ name: 'x', vcpus: 2, memoryMib: 16 }).disks, []);
});

test('each bad field is refused by name', () => {
  assert.match(firstIssue({ ...valid, name: '../etc' }), /^name: must be letters/);
  assert.match(firstIssue({ ...valid, name: 'a'.repeat(64) }), /^name:/);
  assert.match(firstIssue({ ...valid, name: 'web 1' }), /^name:/);
  assert.match(firstIssue({ ...valid, vcpus: 0 }), /^vcpus:/);
  assert.match(firstIssue({ ...valid, image: 'Debian 12' }), /^image: must be an image id/);
  assert.match(firstIssue({ ...valid, storagePool: '../nfs' }), /^storagePool: must be a storage pool name/);
  assert.match(firstIssue({ ...valid, vcpus: 1.5 }), /^vcpus:/);
  assert.match(firstIssue({ ...valid, memoryMib: 8 }), /^memoryMib:/);
  assert.match(firstIssue({ ...valid, disks: [{ name: 'Root', sizeMib: 1 }] }), /^disks\.0\.name:/);
  assert.match(firstIssue({ ...valid, disks: [{ name: 'root', sizeMib: 0 }] }), /^disks\.0\.sizeMib:/);
  assert.match(firstIssue({ ...valid, disks: [{ name: 'root', sizeMib: 1, format: 'vmdk' }] }), /^disks\.0\.format:/);
  assert.match(firstIssue({ ...valid, disks: [valid.disks[0], valid.disks[0]] }), /^disks: disk names must be unique/);
  assert.match(firstIssue({ ...valid, network: 'bridge' }), /^network:/);
  assert.match(firstIssue({ ...valid, haPriority: 101 }), /^haPriority:/);
  assert.match(firstIssue({ ...valid, hostId: 'Host_1' }), /^hostId: must be a host id/);
  assert.match(firstIssue({ ...valid, placement: { region: 'EU' } }), /^placement\.region:/);
  assert.match(firstIssue({ ...valid, color: 'blue' }), /color/);
});

test('disk targets follow the disk order', () => {
  assert.deepEqual([0, 1, 2].map(diskTarget), ['vda', 'vdb', 'vdc']);
});
