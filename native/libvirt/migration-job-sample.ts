/**
 * libvirt's job statistics (`domjobinfo --rawstats`) as the MigrationJobSample the migration workflow reasons in:
 * milliseconds, bytes and bytes per second. Pure, so unit tests feed it recorded output (fixtures/).
 */
import type { MigrationJobSample } from '../../domain/migration';
import { DomainJobType, type DomainJobStats } from './libvirt-types';

const STATE_BY_JOB_TYPE: Readonly<Record<DomainJobType, MigrationJobSample['state']>> = {
  [DomainJobType.none]: 'none',
  [DomainJobType.bounded]: 'running',
  [DomainJobType.unbounded]: 'running',
  [DomainJobType.completed]: 'completed',
  [DomainJobType.failed]: 'failed',
  [DomainJobType.cancelled]: 'cancelled',
};

// x86's page size: what QEMU reports in memory_page_size when it reports it at all.
const DEFAULT_PAGE_SIZE = 4096;

/**
 * Maps one domainGetJobStats answer, of a running job or (with `completed: true`) of the last finished one.
 * `memory_dirty_rate` is in pages per second; QEMU computes it once a pass has ended, so it is 0 during the first.
 * A running job's `downtime` is QEMU's expected downtime, not a measurement, so downtimeMs comes from finished jobs
 * only.
 */
export function migrationJobSample(stats: DomainJobStats): MigrationJobSample {
  const state = STATE_BY_JOB_TYPE[stats.type];
  const number = (key: string): number | undefined => {
    const value = stats.stats[key];
    return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
  };
  const pageSize = number('memory_page_size') ?? DEFAULT_PAGE_SIZE;
  const throttle = number('auto_converge_throttle');
  const downtime = state === 'completed' ? number('downtime') : undefined;
  const setupTime = number('setup_time');
  return {
    state,
    ...(state === 'running' && stats.postCopy !== undefined ? { phase: stats.postCopy ? 'postcopy' : 'precopy' } : {}),
    timeElapsedMs: number('time_elapsed') ?? 0,
    dataTotalBytes: number('data_total') ?? 0,
    dataProcessedBytes: number('data_processed') ?? 0,
    dataRemainingBytes: number('data_remaining') ?? 0,
    memoryDirtyRateBytesPerSecond: (number('memory_dirty_rate') ?? 0) * pageSize,
    pass: number('memory_iteration') ?? 0,
    memoryBytesPerSecond: number('memory_bps') ?? 0,
    ...(throttle === undefined ? {} : { autoConvergeThrottlePercent: throttle }),
    ...(downtime === undefined ? {} : { downtimeMs: downtime }),
    ...(setupTime === undefined ? {} : { setupTimeMs: setupTime }),
  };
}
