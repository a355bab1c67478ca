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

/** virDomainGetJobStats: the type plus libvirt's typed parameters, e.g. `data_remaining`, `memory_bps`. */
export interface DomainJobStats {
  type: DomainJobType;
  stats: Readonly<Record<string, number | string>>;
}

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
