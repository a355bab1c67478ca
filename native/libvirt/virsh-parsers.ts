/**
 * Parsers for what virsh prints: the state words and numbers, `Key: value` and `key=value` listings, and the lines
 * of `virsh event --timestamp`. Pure functions of text, so unit tests feed them recorded output.
 */
import {
  DirtyRateStatus,
  DomainJobType,
  DomainLifecycleEvent,
  DomainState,
  type DomainDirtyRate,
  type DomainEvent,
  type DomainJobStats,
} from './libvirt-types';

// Indexed by the numeric virDomainState that `domstats --raw` prints.
const STATE_BY_NUMBER: readonly DomainState[] = [
  DomainState.noState,
  DomainState.running,
  DomainState.blocked,
  DomainState.paused,
  DomainState.shuttingDown,
  DomainState.shutOff,
  DomainState.crashed,
  DomainState.pmSuspended,
];

// The words virsh prints for each state (virshDomainStateToString).
const STATE_BY_VIRSH_WORD: Readonly<Record<string, DomainState>> = {
  'no state': DomainState.noState,
  running: DomainState.running,
  idle: DomainState.blocked,
  paused: DomainState.paused,
  'in shutdown': DomainState.shuttingDown,
  'shut off': DomainState.shutOff,
  crashed: DomainState.crashed,
  pmsuspended: DomainState.pmSuspended,
};

const JOB_TYPE_BY_NUMBER: readonly DomainJobType[] = Object.values(DomainJobType);

const LIFECYCLE_BY_VIRSH_WORD: Readonly<Record<string, DomainLifecycleEvent>> = {
  Defined: DomainLifecycleEvent.defined,
  Undefined: DomainLifecycleEvent.undefined,
  Started: DomainLifecycleEvent.started,
  Suspended: DomainLifecycleEvent.suspended,
  Resumed: DomainLifecycleEvent.resumed,
  Stopped: DomainLifecycleEvent.stopped,
  Shutdown: DomainLifecycleEvent.shutdown,
  PMSuspended: DomainLifecycleEvent.pmSuspended,
  Crashed: DomainLifecycleEvent.crashed,
};

/** Parses one line of `virsh event --timestamp`; undefined for lines that are not events. */
export function parseEventLine(line: string): DomainEvent | undefined {
  const match =
    /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d+)([+-]\d\d)(\d\d): event '([^']+)' for domain '(.*?)'(?:: (.*))?$/.exec(
      line,
    );
  if (!match) return undefined;
  const [, date, time, tzHours, tzMinutes, type, domain, rest] = match as unknown as string[];
  const detail = rest ?? '';
  const event: DomainEvent = {
    type: type as string,
    domain: domain as string,
    timestamp: new Date(`${date}T${time}${tzHours}:${tzMinutes}`),
    detail,
  };
  if (type === 'lifecycle') {
    const space = detail.indexOf(' ');
    const word = space < 0 ? detail : detail.slice(0, space);
    const lifecycle = LIFECYCLE_BY_VIRSH_WORD[word];
    if (lifecycle) event.lifecycle = { event: lifecycle, detail: space < 0 ? '' : detail.slice(space + 1) };
  }
  return event;
}

export function stateFromNumber(value: number): DomainState {
  return STATE_BY_NUMBER[value] ?? DomainState.noState;
}

export function stateFromVirshWord(word: string): DomainState {
  return STATE_BY_VIRSH_WORD[word] ?? DomainState.noState;
}

/** `Key:   value` lines, as dominfo, nodeinfo and domjobinfo print them. */
export function parseColonFields(out: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const match = /^([^:]+?)\s*:\s*(.*?)\s*$/.exec(line);
    if (match) fields[match[1] as string] = match[2] as string;
  }
  return fields;
}

/** `  key=value` lines, as `domstats --raw` prints them. */
export function parseEqualsFields(out: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const match = /^\s+([^=\s]+)=(.*)$/.exec(line);
    if (match) fields[match[1] as string] = match[2] as string;
  }
  return fields;
}

/** `domjobinfo --rawstats`: the job type, and libvirt's typed parameters as numbers where they are numbers. */
export function parseJobStats(out: string): DomainJobStats {
  const fields = parseColonFields(out);
  const stats: Record<string, number | string> = {};
  for (const [key, value] of Object.entries(fields)) {
    if (key !== 'Job type') stats[key] = /^-?\d+(\.\d+)?$/.test(value) ? Number(value) : value;
  }
  return { type: JOB_TYPE_BY_NUMBER[Number(fields['Job type'])] ?? DomainJobType.none, stats };
}

const DIRTY_RATE_STATUS_BY_NUMBER: readonly DirtyRateStatus[] = Object.values(DirtyRateStatus);
const MiB = 1024 * 1024;

/**
 * `domstats --raw --dirtyrate`. libvirt names the rate `megabytes_per_second`, but QEMU computes it from pages in
 * units of 2^20 bytes, so it is MiB/s.
 */
export function parseDirtyRate(out: string): DomainDirtyRate {
  const fields = parseEqualsFields(out);
  const status = DIRTY_RATE_STATUS_BY_NUMBER[Number(fields['dirtyrate.calc_status'])] ?? DirtyRateStatus.unstarted;
  const mibps = Number(fields['dirtyrate.megabytes_per_second'] ?? 0);
  return {
    status,
    bytesPerSecond: status === DirtyRateStatus.measured && Number.isFinite(mibps) ? mibps * MiB : 0,
    periodSeconds: Number(fields['dirtyrate.calc_period'] ?? 0) || 0,
  };
}

/** `domstate --reason`: `paused (post-copy)` on a source in post-copy, `(post-copy failed)` after a broken link. */
export function isPostCopyStateReason(out: string): boolean {
  return /\(post-copy( failed)?\)/.test(out);
}
