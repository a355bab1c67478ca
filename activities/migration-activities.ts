/**
 * Host-side activities of live migration, on `host-<hostId>`: measure the guest's dirty rate, describe the source
 * domain's disks and check the target sees them in the shared pool, run the libvirt migration job and steer it
 * (downtime, post-copy, abort), and look at, resume or clean up the domain on either host when the saga settles.
 * Each is idempotent: a retry after an agent restart finds what the first attempt did and carries on from there.
 */
import { ApplicationFailure, activityInfo, cancellationSignal, Context, sleep } from '@temporalio/activity';
import { mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import {
  childElement,
  childElements,
  isInvalidState,
  isLibvirtError,
  isMigrationAborted,
  isNotFound,
  LibvirtErrorCode,
  migrationJobSample,
  NOVACRON_METADATA_NS,
  parseXml,
  serializeXml,
  tolerate,
  type DomainState,
  type LibvirtConnection,
  type XmlElement,
} from '../native/libvirt';
import type { MigrationJobSample, MigrationParameters } from '../domain/migration';
import { LOCAL_STORAGE_POOL } from '../domain/vm-spec';
import { vmConsoleLogPath } from './storage-paths';

export interface MigrationActivityDeps {
  hostId: string;
  conn: LibvirtConnection;
  /** The `local` pool: this host's own image root. */
  imageRoot: string;
  /** Shared pools this host mounts, by name: the directory each one is mounted at. */
  storagePools: Record<string, string>;
  logger: Logger;
}

export interface MigrationDomainInput {
  vmId: string;
  name: string;
}

export interface MigrationDisk {
  target: string;
  path: string;
  /** The backing chain below the disk, nearest first (a qcow2 overlay's base image). */
  backingPaths: string[];
}

export interface MigrationSourceDescription {
  hostId: string;
  state: DomainState;
  disks: MigrationDisk[];
}

export interface PrepareMigrationTargetInput extends MigrationDomainInput {
  storagePool: string;
  disks: MigrationDisk[];
}

export interface MigrateDomainInput extends MigrationDomainInput {
  workflowId: string;
  targetHostId: string;
  /** The target's own console log for the guest (prepareMigrationTarget's): two QEMUs must not share one file. */
  targetConsoleLogPath: string;
  /** The target's libvirt URI: the destination connection (managed direct) or the peer daemon's (p2p). */
  destUri: string;
  p2p: boolean;
  /** Where QEMU streams to, for managed direct migration: tcp://<target migration address>. */
  migrateUri?: string;
  parameters: MigrationParameters;
  timeoutMs: number;
}

export interface PreparedMigrationTarget {
  hostId: string;
  /** Every disk and base file found in the pool's mount. */
  checked: string[];
  consoleLogPath: string;
}

export interface MigrateDomainResult {
  /** The migration call's own wall time on this host. */
  jobMs: number;
  /** The newest sample taken while it ran, for figures the target cannot give. */
  lastSample?: MigrationJobSample;
  /** A retry found the domain already gone from this host: an earlier attempt's job had finished. */
  resumed: boolean;
}

/** What one host holds of the VM's domain. `absent` also covers a domain of that name that is another VM's. */
export interface MigrationDomainPresence {
  hostId: string;
  state: DomainState | 'absent';
  /** Running, or paused mid-job: the guest lives here. */
  active: boolean;
  /** A domain of the VM's name with another UUID: never touched. */
  foreign: boolean;
  jobActive: boolean;
  /** libvirt's figures for the last finished migration, on the target once it received the domain. */
  completedJob?: MigrationJobSample;
}

const HEARTBEAT_MS = 2000;
const DIRTY_RATE_POLL_MS = 250;
/** How long a retried attempt waits for an earlier attempt's job to end before starting its own. */
const JOB_END_POLL_MS = 1000;

const ACTIVE_STATES: ReadonlySet<DomainState | 'absent'> = new Set(['running', 'paused', 'blocked']);

export function isActiveDomainState(state: DomainState | 'absent'): boolean {
  return ACTIVE_STATES.has(state);
}

/** File paths of a disk's <source> and of its <backingStore> chain, as libvirt reports them for a live domain. */
function diskChain(disk: XmlElement): { path?: string; backingPaths: string[] } {
  const file = childElement(disk, 'source')?.attributes['file'];
  const backingPaths: string[] = [];
  for (let store = childElement(disk, 'backingStore'); store; store = childElement(store, 'backingStore')) {
    const backing = childElement(store, 'source')?.attributes['file'];
    if (backing) backingPaths.push(backing);
  }
  return { ...(file ? { path: file } : {}), backingPaths };
}

export function migrationDisks(domainXml: string): MigrationDisk[] {
  const devices = childElement(parseXml(domainXml), 'devices');
  if (!devices) return [];
  return childElements(devices, 'disk')
    .filter((disk) => disk.attributes['device'] === 'disk' && disk.attributes['type'] === 'file')
    .flatMap((disk) => {
      const chain = diskChain(disk);
      const target = childElement(disk, 'target')?.attributes['dev'] ?? '';
      return chain.path ? [{ target, path: chain.path, backingPaths: chain.backingPaths }] : [];
    });
}

/**
 * The domain as the target runs and keeps it: the source's migratable XML with the target's own console log and the
 * target as the owner in NovaCron's metadata. libvirt compares the two definitions, not their text.
 */
export function destinationXml(sourceXml: string, input: { consoleLogPath: string; ownerHostId: string }): string {
  const rewrite = (node: XmlElement, inNovacron: boolean): XmlElement => {
    const prefix = node.name.includes(':') ? node.name.slice(0, node.name.indexOf(':')) : undefined;
    const novacron =
      inNovacron || (prefix !== undefined && node.attributes[`xmlns:${prefix}`] === NOVACRON_METADATA_NS);
    const local = prefix === undefined ? node.name : node.name.slice(prefix.length + 1);
    if (novacron && local === 'owner') return { ...node, children: [input.ownerHostId] };
    const attributes =
      node.name === 'log' && node.attributes['file'] !== undefined
        ? { ...node.attributes, file: input.consoleLogPath }
        : node.attributes;
    const children = node.children.map((c) => (typeof c === 'string' ? c : rewrite(c, novacron)));
    return { name: node.name, attributes, children };
  };
  return serializeXml(rewrite(parseXml(sourceXml), false));
}

function isInside(file: string, dir: string): boolean {
  const relative = path.relative(dir, file);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative);
}

export function createMigrationActivities(deps: MigrationActivityDeps) {
  const { conn, hostId, logger } = deps;

  /** The VM's domain here, or undefined; a same-named domain of another VM is reported, never acted on. */
  const lookup = async (input: MigrationDomainInput) => {
    const described = await tolerate(conn.domainLookupByName({ name: input.name }), isNotFound);
    if (!described) return undefined;
    return { ...described, foreign: described.uuid !== input.vmId };
  };

  const requireOwn = async (input: MigrationDomainInput) => {
    const domain = await lookup(input);
    if (domain?.foreign) {
      throw ApplicationFailure.nonRetryable(
        `domain ${input.name} on ${hostId} has UUID ${domain.uuid}, not VM ${input.vmId}; not touching it`,
        'DomainNameConflict',
      );
    }
    return domain;
  };

  /** Undefined when the domain is not here, or is the incoming side of a job (libvirt samples only the source). */
  const sample = async (name: string, completed = false): Promise<MigrationJobSample | undefined> => {
    const stats = await tolerate(
      conn.domainGetJobStats({ name, ...(completed ? { completed } : {}) }),
      (e) => isNotFound(e) || (isLibvirtError(e) && e.code === LibvirtErrorCode.operationUnsupported),
    );
    return stats ? migrationJobSample(stats) : undefined;
  };

  const poolDir = (pool: string): string | undefined =>
    // hasOwn: a pool named `constructor` must not find Object's.
    pool === LOCAL_STORAGE_POOL
      ? deps.imageRoot
      : Object.hasOwn(deps.storagePools, pool)
        ? deps.storagePools[pool]
        : undefined;

  return {
    /** libvirt's dirty-rate calculation over `seconds`: distinct bytes the guest dirties per second. */
    async measureDirtyRate(
      input: MigrationDomainInput & { seconds: number },
    ): Promise<{ bytesPerSecond: number; periodSeconds: number }> {
      await requireOwn(input);
      const signal = cancellationSignal();
      await conn.domainStartDirtyRateCalc({ name: input.name, seconds: input.seconds });
      const deadline = Date.now() + input.seconds * 1000 + 30_000;
      for (;;) {
        Context.current().heartbeat({ phase: 'measuring-dirty-rate' });
        const rate = await conn.domainGetDirtyRate({ name: input.name });
        if (rate.status === 'measured')
          return { bytesPerSecond: rate.bytesPerSecond, periodSeconds: rate.periodSeconds };
        if (Date.now() > deadline) {
          throw ApplicationFailure.retryable(
            `dirty-rate calculation of ${input.name} still ${rate.status} after ${input.seconds} s + 30 s`,
            'DirtyRateTimeout',
          );
        }
        signal.throwIfAborted();
        await sleep(DIRTY_RATE_POLL_MS);
      }
    },

    /** The source domain's state and disk chains; the target checks it sees the same files. */
    async describeMigrationSource(input: MigrationDomainInput): Promise<MigrationSourceDescription> {
      const domain = await requireOwn(input);
      if (!domain || !isActiveDomainState(domain.state)) {
        throw ApplicationFailure.nonRetryable(
          `domain ${input.name} is ${domain?.state ?? 'not defined'} on ${hostId}, not running`,
          'VmNotRunning',
        );
      }
      const xml = await conn.domainGetXMLDesc({ name: input.name });
      return { hostId, state: domain.state, disks: migrationDisks(xml) };
    },

    /**
     * The target sees every disk and base image of the VM inside its mount of the VM's pool, and holds no domain
     * that would collide. An inactive definition of the same VM is a leftover of an earlier attempt: removed.
     */
    async prepareMigrationTarget(input: PrepareMigrationTargetInput): Promise<PreparedMigrationTarget> {
      const dir = poolDir(input.storagePool);
      if (!dir || input.storagePool === LOCAL_STORAGE_POOL) {
        throw ApplicationFailure.nonRetryable(
          `host ${hostId} does not mount storage pool ${input.storagePool}`,
          'TargetLacksStoragePool',
        );
      }
      const checked: string[] = [];
      for (const file of input.disks.flatMap((d) => [d.path, ...d.backingPaths])) {
        if (!isInside(file, dir)) {
          throw ApplicationFailure.nonRetryable(
            `${file} is not inside pool ${input.storagePool} (${dir} on ${hostId}): the disk is not shared`,
            'DiskOutsideStoragePool',
          );
        }
        const found = await stat(file).catch(() => undefined);
        if (!found?.isFile()) {
          throw ApplicationFailure.nonRetryable(
            `${file} is not visible on ${hostId}: pool ${input.storagePool} is not the same storage there`,
            'DiskNotVisibleOnTarget',
          );
        }
        checked.push(file);
      }
      const existing = await requireOwn(input);
      if (existing && isActiveDomainState(existing.state)) {
        throw ApplicationFailure.nonRetryable(
          `domain ${input.name} already runs on ${hostId}; the target must not hold a live copy`,
          'TargetDomainActive',
        );
      }
      if (existing) {
        await tolerate(conn.domainUndefine({ name: input.name }), isNotFound);
        logger.info({ vmId: input.vmId, hostId }, 'removed an inactive leftover definition before migrating here');
      }
      const consoleLogPath = vmConsoleLogPath({ imageRoot: deps.imageRoot, vmId: input.vmId });
      await mkdir(path.dirname(consoleLogPath), { recursive: true });
      return { hostId, checked, consoleLogPath };
    },

    /**
     * The migration job itself, on the source. Heartbeats its newest job sample; a cancel aborts the libvirt job.
     * A retry (the agent restarted mid-job) first waits out a job an earlier attempt left running, and reports
     * success when the domain has already left this host.
     */
    async migrateDomain(input: MigrateDomainInput): Promise<MigrateDomainResult> {
      const context = Context.current();
      const signal = cancellationSignal();
      let lastSample: MigrationJobSample | undefined;
      const beat = () => context.heartbeat(lastSample ?? { state: 'starting' });
      beat();
      if (activityInfo().attempt > 1) {
        while ((await sample(input.name))?.state === 'running') {
          signal.throwIfAborted();
          beat();
          await sleep(JOB_END_POLL_MS);
        }
        const domain = await requireOwn(input);
        if (!domain || !isActiveDomainState(domain.state)) return { jobMs: 0, resumed: true };
      }
      const started = Date.now();
      let sampling = false;
      const timer = setInterval(() => {
        if (sampling) return;
        sampling = true;
        sample(input.name)
          .then((s) => {
            if (s?.state === 'running') lastSample = s;
          })
          .catch(() => undefined)
          .finally(() => {
            sampling = false;
            beat();
          });
      }, HEARTBEAT_MS);
      const { parameters } = input;
      try {
        const xml = destinationXml(await conn.domainGetXMLDesc({ name: input.name, migratable: true }), {
          consoleLogPath: input.targetConsoleLogPath,
          ownerHostId: input.targetHostId,
        });
        await conn.domainMigrateToURI3({
          name: input.name,
          destUri: input.destUri,
          p2p: input.p2p,
          ...(input.migrateUri ? { migrateUri: input.migrateUri } : {}),
          persistDest: true,
          undefineSource: true,
          // prepareMigrationTarget has seen every disk and base image in the target's mount of the pool; libvirt's
          // own check guesses sharedness from the filesystem type and refuses pools it cannot classify (bind
          // mounts, one filesystem seen by two daemons), so it is skipped.
          unsafe: true,
          parallelConnections: parameters.parallelConnections,
          ...(parameters.bandwidthMiBps !== undefined ? { bandwidthMiBps: parameters.bandwidthMiBps } : {}),
          maxDowntimeMs: parameters.maxDowntimeMs,
          autoConverge: parameters.autoConverge,
          postCopy: parameters.postCopy,
          destXml: xml,
          persistentXml: xml,
          timeoutMs: input.timeoutMs,
          signal,
        });
      } catch (err) {
        signal.throwIfAborted();
        const message = `migration of ${input.name} from ${hostId}: ${err instanceof Error ? err.message : String(err)}`;
        // Another client's abort (convergence control's) is an outcome, not a fault; neither gets better retried.
        throw ApplicationFailure.nonRetryable(
          message,
          isMigrationAborted(err) ? 'MigrationJobAborted' : 'MigrationJobFailed',
        );
      } finally {
        clearInterval(timer);
      }
      const jobMs = Date.now() - started;
      logger.info({ vmId: input.vmId, hostId, destUri: input.destUri, jobMs }, 'migration job finished');
      return { jobMs, ...(lastSample ? { lastSample } : {}), resumed: false };
    },

    /** One sample of the running job; `none` once no job runs (or the domain has left this host). */
    async sampleMigrationJob(input: MigrationDomainInput): Promise<MigrationJobSample> {
      return (await sample(input.name)) ?? migrationJobSample({ type: 'none', stats: {} });
    },

    async setMigrationDowntime(input: MigrationDomainInput & { downtimeMs: number }): Promise<{ applied: boolean }> {
      const done = await tolerate(
        conn.domainMigrateSetMaxDowntime({ name: input.name, downtimeMs: input.downtimeMs }).then(() => true),
        (e) => isInvalidState(e) || isNotFound(e),
      );
      return { applied: done === true };
    },

    async startMigrationPostCopy(input: MigrationDomainInput): Promise<{ applied: boolean }> {
      const done = await tolerate(
        conn.domainMigrateStartPostCopy({ name: input.name }).then(() => true),
        (e) => isInvalidState(e) || isNotFound(e),
      );
      return { applied: done === true };
    },

    /** Aborts the running job; no job (it already ended) is not an error. */
    async abortMigrationJob(input: MigrationDomainInput): Promise<{ aborted: boolean }> {
      const done = await tolerate(
        conn.domainAbortJob({ name: input.name }).then(() => true),
        (e) => isInvalidState(e) || isNotFound(e),
      );
      return { aborted: done === true };
    },

    async inspectMigrationDomain(
      input: MigrationDomainInput & { completedJob?: boolean },
    ): Promise<MigrationDomainPresence> {
      const domain = await lookup(input);
      if (!domain || domain.foreign) {
        return { hostId, state: 'absent', active: false, foreign: domain?.foreign ?? false, jobActive: false };
      }
      const current = await sample(input.name);
      const completed = input.completedJob ? await tolerate(sample(input.name, true), isInvalidState) : undefined;
      return {
        hostId,
        state: domain.state,
        active: isActiveDomainState(domain.state),
        foreign: false,
        jobActive: current?.state === 'running',
        ...(completed && completed.state === 'completed' ? { completedJob: completed } : {}),
      };
    },

    /** Leaves the VM running here: resumes a paused domain (a job aborted at switchover), starts a stopped one. */
    async resumeMigrationSource(input: MigrationDomainInput): Promise<{ action: 'none' | 'resumed' | 'started' }> {
      const domain = await requireOwn(input);
      if (!domain) {
        throw ApplicationFailure.nonRetryable(`domain ${input.name} is not defined on ${hostId}`, 'DomainNotFound');
      }
      if (domain.state === 'paused') {
        await tolerate(conn.domainResume({ name: input.name }), isInvalidState);
        return { action: 'resumed' };
      }
      if (domain.state === 'shutoff' || domain.state === 'crashed') {
        await tolerate(conn.domainCreate({ name: input.name }), isInvalidState);
        logger.warn({ vmId: input.vmId, hostId }, 'the source domain had stopped; started it again');
        return { action: 'started' };
      }
      return { action: 'none' };
    },

    /** Destroys and undefines what a rolled-back migration left here. The disks are the shared pool's: kept. */
    async discardMigrationTarget(input: MigrationDomainInput): Promise<{ removed: boolean }> {
      const domain = await requireOwn(input);
      if (!domain) return { removed: false };
      if (domain.state !== 'shutoff') {
        await tolerate(conn.domainDestroy({ name: input.name }), (e) => isInvalidState(e) || isNotFound(e));
      }
      await tolerate(conn.domainUndefine({ name: input.name }), isNotFound);
      return { removed: true };
    },

    /** Removes the source's definition if the migration left one; a still running source is never touched. */
    async cleanupMigrationSource(input: MigrationDomainInput): Promise<{ undefined: boolean }> {
      const domain = await requireOwn(input);
      if (!domain) return { undefined: false };
      if (isActiveDomainState(domain.state)) {
        throw ApplicationFailure.nonRetryable(
          `domain ${input.name} still runs on ${hostId} after its migration; not removing it`,
          'SourceStillRunning',
        );
      }
      await tolerate(conn.domainUndefine({ name: input.name }), isNotFound);
      return { undefined: true };
    },
  };
}

export type MigrationActivities = ReturnType<typeof createMigrationActivities>;
