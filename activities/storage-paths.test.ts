import assert from 'node:assert/strict';
import { test } from 'node:test';
import { allVmDiskDirs, imageBasePath, storagePoolDir, vmDiskDir } from './storage-paths';

const storage = { imageRoot: '/srv/hv-a', storagePools: { shared: '/srv/pools/shared' } };
const VM = '6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b';

test('local disks sit under the image root and use the library copy; a shared pool has its own vms/ and bases/', () => {
  assert.equal(vmDiskDir(storage, { pool: 'local', vmId: VM }), `/srv/hv-a/${VM}`);
  assert.equal(vmDiskDir(storage, { pool: 'shared', vmId: VM }), `/srv/pools/shared/vms/${VM}`);
  assert.equal(
    imageBasePath(storage, { pool: 'shared', imageId: 'guest', format: 'raw' }),
    '/srv/pools/shared/bases/guest.raw',
  );
  assert.deepEqual(allVmDiskDirs(storage, VM), [`/srv/hv-a/${VM}`, `/srv/pools/shared/vms/${VM}`]);
});

test('a pool the host does not mount is a permanent failure, even one named like an Object property', () => {
  for (const pool of ['nfs1', 'constructor']) {
    assert.throws(
      () => storagePoolDir(storage, pool),
      (err: Error & { type?: string; nonRetryable?: boolean }) => {
        assert.equal(err.type, 'StoragePoolNotMounted');
        assert.equal(err.nonRetryable, true);
        assert.match(err.message, new RegExp(`does not mount storage pool ${pool} \\(it has local, shared\\)`));
        return true;
      },
    );
  }
});
