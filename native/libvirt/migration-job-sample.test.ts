/**
 * migrationJobSample against `virsh domjobinfo --rawstats` output recorded from libvirt 9.0 / QEMU 7.2 (TCG) between
 * two harness hosts, with a 128 MiB test guest dirtying its 32 MiB working set (fixtures/, one file per case).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { DomainJobType } from './libvirt-types';
import { migrationJobSample } from './migration-job-sample';
import { parseDirtyRate, parseJobStats } from './virsh-parsers';

const fixture = (name: string) => readFileSync(join(__dirname, 'fixtures', name), 'utf8');
const MiB = 1024 * 1024;

test('a running pre-copy job: pass, remaining, dirty pages/s × page size, no measured downtime', () => {
  const sample = migrationJobSample({ ...parseJobStats(fixture('domjobinfo-precopy-running.txt')), postCopy: false });
  assert.deepEqual(sample, {
    state: 'running',
    phase: 'precopy',
    timeElapsedMs: 6147,
    dataTotalBytes: 134750208,
    dataProcessedBytes: 151081794,
    dataRemainingBytes: 13606912,
    memoryDirtyRateBytesPerSecond: 7176 * 4096,
    pass: 3,
    memoryBytesPerSecond: 32912647,
    setupTimeMs: 2,
  });
});

test('auto-converge reports its throttle', () => {
  const sample = migrationJobSample(parseJobStats(fixture('domjobinfo-auto-converge-running.txt')));
  assert.equal(sample.autoConvergeThrottlePercent, 70);
  assert.equal(sample.pass, 9);
  assert.equal(sample.downtimeMs, undefined, 'a running job reports only QEMU’s expected downtime');
  assert.equal(sample.phase, undefined, 'without the state reason the phase is not known');
});

test('a job switched to post-copy has the post-copy phase', () => {
  const stats = parseJobStats(fixture('domjobinfo-postcopy-running.txt'));
  assert.equal(stats.stats['memory_postcopy_requests'], 22);
  const sample = migrationJobSample({ ...stats, postCopy: true });
  assert.equal(sample.phase, 'postcopy');
  assert.equal(sample.memoryDirtyRateBytesPerSecond, 862 * 4096);
  assert.equal(sample.dataRemainingBytes, 61648896);
});

test('completed jobs give downtime, total time and bytes, on the target and on a source that kept the domain', () => {
  const incoming = migrationJobSample(parseJobStats(fixture('domjobinfo-completed-incoming.txt')));
  assert.deepEqual(incoming, {
    state: 'completed',
    timeElapsedMs: 1046,
    dataTotalBytes: 134750208,
    dataProcessedBytes: 107213786,
    dataRemainingBytes: 0,
    memoryDirtyRateBytesPerSecond: 0,
    pass: 3,
    memoryBytesPerSecond: 577529698,
    downtimeMs: 88,
    setupTimeMs: 1,
  });
  const postCopy = migrationJobSample(parseJobStats(fixture('domjobinfo-postcopy-completed-source.txt')));
  assert.equal(postCopy.state, 'completed');
  assert.equal(postCopy.downtimeMs, 9);
  assert.equal(postCopy.timeElapsedMs, 16300);
});

test('no job, failed and cancelled jobs map to their states with zero figures', () => {
  assert.deepEqual(migrationJobSample({ type: DomainJobType.none, stats: {} }), {
    state: 'none',
    timeElapsedMs: 0,
    dataTotalBytes: 0,
    dataProcessedBytes: 0,
    dataRemainingBytes: 0,
    memoryDirtyRateBytesPerSecond: 0,
    pass: 0,
    memoryBytesPerSecond: 0,
  });
  assert.equal(migrationJobSample({ type: DomainJobType.failed, stats: {} }).state, 'failed');
  assert.equal(migrationJobSample({ type: DomainJobType.cancelled, stats: { downtime: 5 } }).downtimeMs, undefined);
  // Without memory_page_size, x86's 4 KiB.
  assert.equal(
    migrationJobSample({ type: DomainJobType.unbounded, stats: { memory_dirty_rate: 10 } })
      .memoryDirtyRateBytesPerSecond,
    40960,
  );
});

test('dirty-rate statistics: unstarted, measuring, measured in MiB/s', () => {
  assert.deepEqual(parseDirtyRate(fixture('domstats-dirtyrate-unstarted.txt')), {
    status: 'unstarted',
    bytesPerSecond: 0,
    periodSeconds: 0,
  });
  assert.deepEqual(parseDirtyRate(fixture('domstats-dirtyrate-measuring.txt')), {
    status: 'measuring',
    bytesPerSecond: 0,
    periodSeconds: 1,
  });
  assert.deepEqual(parseDirtyRate(fixture('domstats-dirtyrate-measured.txt')), {
    status: 'measured',
    bytesPerSecond: 44 * MiB,
    periodSeconds: 1,
  });
});
