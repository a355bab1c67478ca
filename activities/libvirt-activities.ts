/**
 * Host-side activities: the libvirt and disk work of the VM lifecycle, run by the host agent on `host-<hostId>`.
 * Each is idempotent, so a retry after a crash converges: disks are created only if absent, the domain is defined
 * with the VM's id as its UUID (a second define updates it), and start, stop and delete accept the state they
 * would produce.
 */
import { ApplicationFailure, cancellationSignal, heartbeat, sleep } from '@temporalio/activity';
import { rm } from 'node:fs/promises';
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
import { diskTarget, type VmSpec } from '../domain/vm-spec';

export interface LibvirtActivityDeps {
  hostId: string;
  conn: LibvirtConnection;
  images: DiskImages;
  imageRoot: string;
  domainType: DomainType;
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

function vmDir(imageRoot: string, vmId: string): string {
  return path.join(imageRoot, vmId);
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

  const domainState = async (name: string): Promise<DomainState | undefined> =>
    tolerate(conn.domainGetState({ name }), isNotFound);

  return {
    async createVmDisks(input: { vmId: string; disks: VmSpec['disks'] }): Promise<VmDisk[]> {
      const out: VmDisk[] = [];
      for (const [index, disk] of input.disks.entries()) {
        const diskPath = path.join(vmDir(imageRoot, input.vmId), `${disk.name}.${disk.format}`);
        await images
          .create({ path: diskPath, format: disk.format, sizeBytes: disk.sizeMib * MiB })
          .catch(permanentOnSpecErrors);
        out.push({ name: disk.name, path: diskPath, format: disk.format, target: diskTarget(index) });
        heartbeat({ disksDone: index + 1 });
      }
      return out;
    },

    async defineVmDomain(input: {
      vmId: string;
      spec: Pick<VmSpec, 'name' | 'vcpus' | 'memoryMib' | 'network'>;
      disks: VmDisk[];
    }): Promise<{ uuid: string }> {
      try {
        const xml = buildDomainXml({
          name: input.spec.name,
          uuid: input.vmId,
          vcpus: input.spec.vcpus,
          memoryMiB: input.spec.memoryMib,
          disks: input.disks.map((d) => ({ path: d.path, format: d.format, target: d.target })),
          networks: input.spec.network === 'user' ? [{ type: 'user' }] : [],
          metadata: { vmId: input.vmId, owner: deps.hostId },
          imageRoot,
          domainType: deps.domainType,
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

    /** Destroys, undefines and removes the VM's disk directory; each part accepts that it is already done. */
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
      await rm(vmDir(imageRoot, input.vmId), { recursive: true, force: true });
      return { undefined: state !== undefined };
    },

    /** The host's libvirt inventory in one virsh call; the agent reports it, and workflows may ask for it. */
    async listInventory(_input: { reason: string }): Promise<DomainSummary[]> {
      return conn.listAllDomains();
    },
  };
}

export type LibvirtActivities = ReturnType<typeof createLibvirtActivities>;
