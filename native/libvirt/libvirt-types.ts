/**
 * The libvirt driver's vocabulary: domain states, flags, job and event types by libvirt's own names, and the shapes
 * its calls return. Kept apart from the connection so that the virsh parsers and the event stream, which produce
 * these values, need not import the connection that uses them.
 */

/** virDomainState, by the names libvirt gives its states. */
export const DomainState = {
  noState: 'nostate',
  running: 'running',
  blocked: 'blocked',
  paused: 'paused',
  shuttingDown: 'shutdown',
  shutOff: 'shutoff',
  crashed: 'crashed',
  pmSuspended: 'pmsuspended',
} as const;
export type DomainState = (typeof DomainState)[keyof typeof DomainState];

/** VIR_DOMAIN_UNDEFINE_* flags, as virsh spells them. */
export const DomainUndefineFlag = {
  managedSave: 'managed-save',
  snapshotsMetadata: 'snapshots-metadata',
  checkpointsMetadata: 'checkpoints-metadata',
  nvram: 'nvram',
  keepNvram: 'keep-nvram',
  tpm: 'tpm',
  keepTpm: 'keep-tpm',
} as const;
export type DomainUndefineFlag = (typeof DomainUndefineFlag)[keyof typeof DomainUndefineFlag];

/** virDomainJobType. */
export const DomainJobType = {
  none: 'none',
  bounded: 'bounded',
  unbounded: 'unbounded',
  completed: 'completed',
  failed: 'failed',
  cancelled: 'cancelled',
} as const;
export type DomainJobType = (typeof DomainJobType)[keyof typeof DomainJobType];

/** virDomainEventType, for lifecycle events. */
export const DomainLifecycleEvent = {
  defined: 'defined',
  undefined: 'undefined',
  started: 'started',
  suspended: 'suspended',
  resumed: 'resumed',
  stopped: 'stopped',
  shutdown: 'shutdown',
  pmSuspended: 'pmsuspended',
  crashed: 'crashed',
} as const;
export type DomainLifecycleEvent = (typeof DomainLifecycleEvent)[keyof typeof DomainLifecycleEvent];

export const ShutdownOutcome = {
  shutdown: 'shutdown',
  destroyed: 'destroyed',
  alreadyOff: 'already-off',
} as const;
export type ShutdownOutcome = (typeof ShutdownOutcome)[keyof typeof ShutdownOutcome];

export interface DomainRef {
  name: string;
}

export interface DomainSummary {
  name: string;
  uuid: string;
  state: DomainState;
}

export interface DomainDescription extends DomainSummary {
  /** Only running domains have an id. */
  id: number | undefined;
  persistent: boolean;
  autostart: boolean;
}

/** virDomainInfo. `cpuTimeNs` is a double: exact up to 104 days of CPU time, then rounded. */
export interface DomainInfo {
  state: DomainState;
  vcpus: number;
  maxMemoryKiB: number;
  memoryKiB: number;
  cpuTimeNs: number;
}

/** virDomainJobOperation, the `operation` job statistic: what the job is doing. */
export const DomainJobOperation = {
  unknown: 0,
  start: 1,
  save: 2,
  restore: 3,
  migrationIn: 4,
  migrationOut: 5,
  snapshot: 6,
  snapshotRevert: 7,
  dump: 8,
  backup: 9,
  snapshotDelete: 10,
} as const;
export type DomainJobOperation = (typeof DomainJobOperation)[keyof typeof DomainJobOperation];

/** virDomainGetJobStats: the type plus libvirt's typed parameters, e.g. `data_remaining`, `memory_bps`. */
export interface DomainJobStats {
  type: DomainJobType;
  stats: Readonly<Record<string, number | string>>;
  /**
   * For a running outgoing migration only: whether it has switched to post-copy. The job statistics do not say;
   * the domain's state reason does (`paused (post-copy)` on the source).
   */
  postCopy?: boolean;
}

/** virDomainGetDirtyRate's calc_status (0, 1, 2). */
export const DirtyRateStatus = { unstarted: 'unstarted', measuring: 'measuring', measured: 'measured' } as const;
export type DirtyRateStatus = (typeof DirtyRateStatus)[keyof typeof DirtyRateStatus];

/** `domstats --dirtyrate`: the last dirty-rate calculation (`domainStartDirtyRateCalc`) of a domain. */
export interface DomainDirtyRate {
  status: DirtyRateStatus;
  /** 0 until measured. */
  bytesPerSecond: number;
  /** The calculation's period; 0 when none was started. */
  periodSeconds: number;
}

/**
 * What libvirt reports (`migrate-getspeed`, MiB/s) for a migration bandwidth it does not limit: INT64_MAX bytes/s in
 * MiB, which QEMU then sees as 9223372036853727232 bytes/s (measured here, docs/libvirt-driver.md).
 */
export const UNLIMITED_MIGRATION_BANDWIDTH_MIBPS = 8_796_093_022_207;

export interface NodeInfo {
  model: string;
  cpus: number;
  mhz: number;
  numaNodes: number;
  sockets: number;
  cores: number;
  threads: number;
  memoryKiB: number;
}

/** virNodeGetMemoryStats for all cells. */
export interface NodeMemoryStats {
  totalKiB: number;
  freeKiB: number;
  buffersKiB: number;
  cachedKiB: number;
}

export interface ConnectVersion {
  library: string;
  hypervisor: string;
}

export interface DomainEvent {
  /** The virsh event name: lifecycle, reboot, device-removed, … */
  type: string;
  domain: string;
  timestamp: Date;
  /** Everything after the domain name, e.g. `Started Booted`. */
  detail: string;
  /** Present for `lifecycle` events. */
  lifecycle?: { event: DomainLifecycleEvent; detail: string };
}
