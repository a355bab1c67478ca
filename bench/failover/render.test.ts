import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RunMetadata } from '../run-metadata';
import { goalVerdicts, renderFailover, type FailoverResults, type FailoverRunSample } from './render';

const run = (load: number): RunMetadata => ({
  benchmark: 'failover',
  command: 'npm run bench -- failover',
  startedAt: '2026-12-01T15:00:00.000Z',
  finishedAt: '2026-12-01T15:10:00.000Z',
  git: { commit: 'b'.repeat(40), dirty: false, changes: [], changeCount: 0 },
  machine: { cpus: 2, cpuModel: 'AMD EPYC', memoryGiB: 24, kernel: 'Linux 6.1', node: 'v20.20.2' },
  loadAverage: { start: [load, load, load], end: [load, load, load] },
});

const done = (index: number, killToRunningMs: number): FailoverRunSample => ({
  index,
  victimHostId: 'host-1',
  vmId: 'vm-1',
  killedAt: '2026-12-01T15:00:00.000Z',
  loadAverage: [1, 1, 1],
  status: 'completed',
  killToRunningMs,
  pollResolutionMs: 120,
  runningOn: ['host-2'],
  failoverState: 'completed',
  outcome: 'restarted',
  confirmation: { asked: 2, needed: 2, accepted: 2 },
  phases: { killToExpiryMs: 2700, expiryToStartedMs: 200, expiryToConfirmedMs: 1500, fencedToRestartedMs: 900 },
});

const failed = (index: number): FailoverRunSample => ({
  index,
  victimHostId: 'host-2',
  vmId: 'vm-1',
  killedAt: '2026-12-01T15:01:00.000Z',
  loadAverage: [1, 1, 1],
  status: 'failed',
  error: 'the guest ran on no other host within 120000 ms',
});

const settings = {
  leaseTtlSeconds: 3,
  heartbeatIntervalMs: 500,
  selfFenceMarginMs: 1000,
  graceMs: 1000,
  monitorIntervalMs: 250,
  witnessProbeTimeoutMs: 1000,
};

const results = (runs: FailoverRunSample[], load = 1): FailoverResults => ({
  run: run(load),
  benchmark: 'failover',
  hosts: 3,
  domainType: 'qemu',
  guest: { vcpus: 1, memoryMib: 64, diskMib: 16, storagePool: 'shared' },
  runsAsked: runs.length,
  boundMs: 120_000,
  pollIntervalMs: 50,
  settings,
  shippedDefaults: { ...settings, leaseTtlSeconds: 15, graceMs: 2000, heartbeatIntervalMs: 2000 },
  goals: { p50Ms: 10_000, p99Ms: 15_000 },
  runs,
});

const tenRuns = (slowest: number) => [
  ...[4, 5, 5, 5, 6, 6, 6, 7, 7].map((s, i) => done(i + 1, s * 1000)),
  done(10, slowest),
];

test('with 10 runs p99 is the slowest run, and the goals are judged against it and the median', () => {
  const fast = goalVerdicts(results(tenRuns(9000)));
  assert.deepEqual(
    fast.map((v) => v.met),
    [true, true],
  );
  assert.match(fast[1]!.figure, /^p99 9\.00 s \(the slowest run\) over 10 runs$/);
  const slowTail = goalVerdicts(results(tenRuns(16_000)));
  assert.deepEqual(
    slowTail.map((v) => v.met),
    [true, false],
  );
});

test('a failed run counts as slower than any goal', () => {
  const verdicts = goalVerdicts(results([...tenRuns(5000).slice(0, 9), failed(10)]));
  assert.equal(verdicts[0]!.met, true);
  assert.equal(verdicts[1]!.met, false);
  assert.match(verdicts[1]!.figure, /^p99 failed \(the slowest run\) over 10 runs, 1 failed$/);
});

test('the section names the kill, the settings beside the verdicts, the failures and the unmeasured defaults', () => {
  const text = renderFailover('/x/bench/results/failover.json', results([...tenRuns(5000).slice(0, 9), failed(10)]));
  assert.match(text, /libvirtd stays up/);
  assert.match(text, /with 10 runs, p99 is the slowest run/);
  assert.match(text, /\*\*1 of 10 runs failed\*\*: run 10 \(host-2\)/);
  assert.match(text, /\| lease TTL 3 s, heartbeat 500 ms, self-fence margin 1 s, grace 1 s, monitor tick 250 ms/);
  assert.match(text, /shipped defaults were not measured/);
  assert.match(text, /12\.0 s \+ 1\.00 s = 13\.0 s/);
  assert.match(text, /expires at least 13\.0 s after the kill/);
  assert.doesNotMatch(text, /quiet machine/);
  assert.match(renderFailover('/x/bench/results/failover.json', results(tenRuns(5000), 9)), /quiet machine/);
});
