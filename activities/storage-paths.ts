/**
 * Where a host keeps a VM's files, by storage pool. `local` is the host's own image root; another pool is a
 * directory every host of the pool mounts at the path its config names, so a qcow2 overlay's backing path, written
 * into the overlay on one host, opens on every other:
 *
 *   local   <imageRoot>/<vmId>/<disk>.<fmt>        base: <imageRoot>/library/<imageId>.<fmt> (the host's replica)
 *   shared  <pool>/vms/<vmId>/<disk>.<fmt>         base: <pool>/bases/<imageId>.<fmt> (one copy for the pool)
 *
 * The serial console log is always the host's own (<imageRoot>/consoles/<vmId>.log): two QEMUs writing one file, as
 * source and target do during a migration, truncate each other.
 */
import { ApplicationFailure } from '@temporalio/activity';
import path from 'node:path';
import { imageFileName, type ImageFormat } from '../domain/image';
import { LOCAL_STORAGE_POOL } from '../domain/vm-spec';

export interface HostStorage {
  /** The `local` pool. */
  imageRoot: string;
  /** Shared pools this host mounts, by name. */
  storagePools: Readonly<Record<string, string>>;
}

/** The pool's directory on this host; a pool the host does not mount is a permanent failure of the step. */
export function storagePoolDir(storage: HostStorage, pool: string): string {
  if (pool === LOCAL_STORAGE_POOL) return storage.imageRoot;
  // hasOwn: a pool named `constructor` must not find Object's.
  const dir = Object.hasOwn(storage.storagePools, pool) ? storage.storagePools[pool] : undefined;
  if (dir === undefined) {
    const mounted = [LOCAL_STORAGE_POOL, ...Object.keys(storage.storagePools)].join(', ');
    throw ApplicationFailure.nonRetryable(
      `this host does not mount storage pool ${pool} (it has ${mounted})`,
      'StoragePoolNotMounted',
    );
  }
  return dir;
}

export function vmDiskDir(storage: HostStorage, input: { pool: string; vmId: string }): string {
  const dir = storagePoolDir(storage, input.pool);
  return input.pool === LOCAL_STORAGE_POOL ? path.join(dir, input.vmId) : path.join(dir, 'vms', input.vmId);
}

/** Every directory that may hold a VM's disks on this host: one per pool it mounts. */
export function allVmDiskDirs(storage: HostStorage, vmId: string): string[] {
  return [LOCAL_STORAGE_POOL, ...Object.keys(storage.storagePools)].map((pool) => vmDiskDir(storage, { pool, vmId }));
}

/** The file a VM's overlay in this pool names as its backing file. */
export function imageBasePath(
  storage: HostStorage,
  input: { pool: string; imageId: string; format: ImageFormat },
): string {
  const dir = storagePoolDir(storage, input.pool);
  const ref = { imageId: input.imageId, format: input.format };
  return input.pool === LOCAL_STORAGE_POOL
    ? path.join(dir, imageFileName(ref))
    : path.join(dir, 'bases', `${ref.imageId}.${ref.format}`);
}

export function vmConsoleLogPath(input: { imageRoot: string; vmId: string }): string {
  return path.join(input.imageRoot, 'consoles', `${input.vmId}.log`);
}
