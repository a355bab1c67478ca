/**
 * Host-side activities: the libvirt and disk work of the VM lifecycle, run by the host agent on `host-<hostId>`.
 * Each is idempotent, so a retry after a crash converges: disks are created only if absent, the domain is defined
 * with the VM's id as its UUID (a second define updates it), and start, stop and delete accept the state they
 * would produce. A VM's disks live in its storage pool (storage-paths.ts); a VM made from an image has a qcow2
 * overlay on the image's base as its first disk.
 */
import { ApplicationFailure, cancellationSignal, heartbeat, sleep } from '@temporalio/activity';
import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import {
  buildDomainXml,
  DiskImageError,
  DomainSpecError,
  isAlreadyExists,
  isInvalidState,
  isNotFound,
  tolerate,
  type DiskImages,
  type DomainState,
  type DomainSummary,
  type DomainType,
  type LibvirtConnection,
} from '../native/libvirt';
import type { ImageFormat } from '../domain/image';
import { diskTarget, LOCAL_STORAGE_POOL, type VmSpec } from '../domain/vm-spec';
import { allVmDiskDirs, storagePoolDir, vmConsoleLogPath, vmDiskDir, type HostStorage } from './storage-paths';

export interface LibvirtActivityDeps {
  hostId: string;
  conn: LibvirtConnection;
  images: DiskImages;
  imageRoot: string;
  /** Shared pools this host mounts (config agent.storagePools); `local` is imageRoot. */
  storagePools?: Readonly<Record<string, string>>;
  domainType: DomainType;
}

export interface CreateVmDisksInput {
  vmId: string;
  disks: VmSpec['disks'];
  /** Default `local`. */
  storagePool?: string;
  /** The image base the first disk overlays, in the VM's pool (ensureImageBase). */
  base?: { path: string; format: ImageFormat };
}

export interface VmDisk {
  name: string;
  path: string;
  format: 'qcow2' | 'raw';
  target: string;
}

export interface DomainInput {
  vmId: string;
  name: string;
}

const MiB = 1024 * 1024;
const POLL_MS = 250;
// Well inside the workflows' 30 s heartbeat timeout: a virsh start of many guests at once can run for minutes.
const HEARTBEAT_MS = 5000;

/**
 * Heartbeats while one long libvirt call runs. Without it a slow but healthy call looks like a dead agent after
 * the heartbeat timeout, and the retry queues a second call behind the first on the domain's job lock.
 */
async function heartbeating<T>(step: string, work: Promise<T>): Promise<T> {
  heartbeat({ step });
  const timer = setInterval(() => heartbeat({ step }), HEARTBEAT_MS);
  try {
    return await work;
  } finally {
    clearInterval(timer);
  }
}

/** Bad input and conflicting leftovers do not get better with retries. */
function permanentOnSpecErrors(err: unknown): never {
  if (err instanceof DomainSpecError) throw ApplicationFailure.nonRetryable(err.message, 'DomainSpecError');
  if (err instanceof DiskImageError && err.code === 'conflict') {
    throw ApplicationFailure.nonRetryable(err.message, 'DiskImageConflict');
  }
  if (isAlreadyExists(err)) throw ApplicationFailure.nonRetryable(err.message, 'DomainNameConflict');
  throw err;
}

export function createLibvirtActivities(deps: LibvirtActivityDeps) {
  const { conn, images, imageRoot } = deps;
  const storage: HostStorage = { imageRoot, storagePools: deps.storagePools ?? {} };

  const domainState = async (name: string): Promise<DomainState | undefined> =>
    tolerate(conn.domainGetState({ name }), isNotFound);

  return {
    /** Blank disks, except that with `base` the first one is a qcow2 overlay on it, at least the base's size. */
    async createVmDisks(input: CreateVmDisksInput): Promise<VmDisk[]> {
      const dir = vmDiskDir(storage, { pool: input.storagePool ?? LOCAL_STORAGE_POOL, vmId: input.vmId });
      if (input.base && input.disks[0]?.format !== 'qcow2') {
        throw ApplicationFailure.nonRetryable(
          'the first disk of a VM made from an image must be qcow2',
          'InvalidVmSpec',
        );
      }
      const out: VmDisk[] = [];
      for (const [index, disk] of input.disks.entries()) {
        const diskPath = path.join(dir, `${disk.name}.${disk.format}`);
        const sizeBytes = disk.sizeMib * MiB;
        const created =
          index === 0 && input.base
            ? images.createOverlay({
                path: diskPath,
                backingPath: input.base.path,
                backingFormat: input.base.format,
                sizeBytes,
              })
            : images.create({ path: diskPath, format: disk.format, sizeBytes });
        await created.catch(permanentOnSpecErrors);
        out.push({ name: disk.name, path: diskPath, format: disk.format, target: diskTarget(index) });
        heartbeat({ disksDone: index + 1 });
      }
      return out;
    },

    /**
     * The disks of a VM that exists already, as this host sees them in its pool: a failover restarts a guest of a
     * failed host from them. A disk this host cannot see means the VM cannot run here, which no retry changes.
     */
    async locateVmDisks(input: { vmId: string; spec: Pick<VmSpec, 'disks' | 'storagePool'> }): Promise<VmDisk[]> {
      const dir = vmDiskDir(storage, { pool: input.spec.storagePool, vmId: input.vmId });
      const disks = input.spec.disks.map((disk, index) => ({
        name: disk.name,
        path: path.join(dir, `${disk.name}.${disk.format}`),
        format: disk.format,
        target: diskTarget(index),
      }));
      const missing: string[] = [];
      for (const disk of disks) if (!(await stat(disk.path).catch(() => undefined))?.isFile()) missing.push(disk.path);
      if (missing.length > 0) {
        throw ApplicationFailure.nonRetryable(
          `host ${deps.hostId} cannot see disk ${missing.join(', ')} in pool ${input.spec.storagePool}`,
          'VmDisksMissing',
        );
      }
      return disks;
    },

    async defineVmDomain(input: {
      vmId: string;
      spec: Pick<VmSpec, 'name' | 'vcpus' | 'memoryMib' | 'network'> &
        Partial<Pick<VmSpec, 'oemStrings' | 'storagePool'>>;
      disks: VmDisk[];
    }): Promise<{ uuid: string }> {
      try {
        const consoleLogPath = vmConsoleLogPath({ imageRoot, vmId: input.vmId });
        await mkdir(path.dirname(consoleLogPath), { recursive: true });
        const xml = buildDomainXml({
          name: input.spec.name,
          uuid: input.vmId,
          vcpus: input.spec.vcpus,
          memoryMiB: input.spec.memoryMib,
          disks: input.disks.map((d) => ({ path: d.path, format: d.format, target: d.target })),
          networks: input.spec.network === 'user' ? [{ type: 'user' }] : [],
          metadata: { vmId: input.vmId, owner: deps.hostId },
          // Every disk of a VM lies in its pool; an overlay's base is its backing file, not a disk of the domain.
          imageRoot: storagePoolDir(storage, input.spec.storagePool ?? LOCAL_STORAGE_POOL),
          domainType: deps.domainType,
          consoleLogPath,
          ...(input.spec.oemStrings?.length ? { oemStrings: input.spec.oemStrings } : {}),
        });
        const defined = await heartbeating('define', conn.domainDefineXML({ xml }));
        return { uuid: defined.uuid };
      } catch (err) {
        return permanentOnSpecErrors(err);
      }
    },

    async startVmDomain(input: DomainInput): Promise<{ alreadyRunning: boolean }> {
      // Already running is what a retry after a lost completion sees.
      const started = await heartbeating(
        'start',
        tolerate(
          conn.domainCreate({ name: input.name }).then(() => true),
          isInvalidState,
        ),
      );
      return { alreadyRunning: started === undefined };
    },

    /**
     * ACPI shutdown, then destroy once `timeoutMs` has passed (or at once with `force`). Heartbeats while it
     * waits and stops waiting when the workflow cancels it.
     */
    async stopVmDomain(input: DomainInput & { timeoutMs: number; force?: boolean }): Promise<{ outcome: string }> {
      const signal = cancellationSignal();
      let state = await domainState(input.name);
      if (state === undefined)
        throw ApplicationFailure.nonRetryable(`domain ${input.name} is not defined`, 'DomainNotFound');
      if (state === 'shutoff') return { outcome: 'already-off' };
      if (!input.force) {
        await tolerate(conn.domainShutdown({ name: input.name }), isInvalidState);
        const deadline = Date.now() + input.timeoutMs;
        while (Date.now() < deadline) {
          heartbeat({ waitedMs: input.timeoutMs - (deadline - Date.now()) });
          await sleep(POLL_MS);
          if (signal.aborted) throw new Error('stop cancelled');
          state = await domainState(input.name);
          if (state === 'shutoff' || state === undefined) return { outcome: 'shutdown' };
        }
      }
      await tolerate(conn.domainDestroy({ name: input.name }), isInvalidState);
      return { outcome: 'destroyed' };
    },

    /** `hard` resets the guest; ACPI reboot needs a guest OS that listens. */
    async rebootVmDomain(input: DomainInput & { hard?: boolean }): Promise<void> {
      const state = await domainState(input.name);
      if (state !== 'running') {
        throw ApplicationFailure.nonRetryable(
          `domain ${input.name} is ${state ?? 'not defined'}, not running`,
          'NotRunning',
        );
      }
      if (input.hard) await conn.domainReset({ name: input.name });
      else await conn.domainReboot({ name: input.name });
    },

    /**
     * Destroys, undefines and removes the VM's disk directory and console log; each part accepts that it is already
     * done. The VM's directory in every pool this host mounts goes (its id is its own), never an image base.
     */
    async deleteVmDomain(input: DomainInput): Promise<{ undefined: boolean }> {
      const state = await domainState(input.name);
      if (state !== undefined) {
        const described = await tolerate(conn.domainLookupByName({ name: input.name }), isNotFound);
        if (described && described.uuid !== input.vmId) {
          throw ApplicationFailure.nonRetryable(
            `domain ${input.name} has UUID ${described.uuid}, not VM ${input.vmId}; not touching it`,
            'DomainNameConflict',
          );
        }
        if (state !== 'shutoff') {
          await heartbeating(
            'destroy',
            tolerate(conn.domainDestroy({ name: input.name }), (e) => isInvalidState(e) || isNotFound(e)),
          );
        }
        await heartbeating('undefine', tolerate(conn.domainUndefine({ name: input.name }), isNotFound));
      }
      heartbeat({ step: 'disks' });
      for (const dir of allVmDiskDirs(storage, input.vmId)) await rm(dir, { recursive: true, force: true });
      await rm(vmConsoleLogPath({ imageRoot, vmId: input.vmId }), { force: true });
      return { undefined: state !== undefined };
    },

    /** The host's libvirt inventory in one virsh call; the agent reports it, and workflows may ask for it. */
    async listInventory(_input: { reason: string }): Promise<DomainSummary[]> {
      return conn.listAllDomains();
    },
  };
}

export type LibvirtActivities = ReturnType<typeof createLibvirtActivities>;
