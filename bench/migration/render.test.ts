import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RunMetadata } from '../run-metadata';
import { goalVerdicts, renderMigration, totalOf, type MigrationResults, type MigrationSample } from './render';

const run = (load: number): RunMetadata => ({
  benchmark: 'migration',
  command: 'npm run bench -- migration',
  startedAt: '2026-12-01T10:00:00.000Z',
  finishedAt: '2026-12-01T10:20:00.000Z',
  git: { commit: 'a'.repeat(40), dirty: false, changes: [], changeCount: 0 },
  machine: { cpus: 2, cpuModel: 'AMD EPYC', memoryGiB: 24, kernel: 'Linux 6.1', node: 'v20.20.2' },
  loadAverage: { start: [load, load, load], end: [load, load, load] },
});

const plan = (totalMs: number | null): NonNullable<MigrationSample['plan']> => ({
  mode: 'datacenter',
  mitigation: 'none',
  deadlineMs: 60_000,
  parameters: { parallelConnections: 1, maxDowntimeMs: 300, autoConverge: true, postCopy: false },
  prediction: { converges: totalMs !== null, passes: 2, totalMs, downtimeMs: 20, bytes: 1 },
  inputs: { dirtyRateBytesPerSecond: 0, linkBandwidthBytesPerSecond: 1e8, linkRttMs: 1 },
});

const defaults = (wallMs: number, outcome: MigrationSample['outcome'] = 'completed'): MigrationSample => ({
  method: 'libvirt-defaults',
  from: 'host-1',
  to: 'host-2',
  outcome,
  wallMs,
  loadAvg1: 1,
  guestSurvived: true,
  ...(outcome === 'completed' ? { jobMs: wallMs, libvirtTotalMs: wallMs, downtimeMs: 100, bytes: 1, passes: 3 } : {}),
});

const novacron = (input: { workflowMs: number; jobMs: number; downtimeMs: number; predicted: number | null }) =>
  ({
    method: 'novacron',
    from: 'host-1',
    to: 'host-2',
    outcome: 'completed',
    wallMs: input.workflowMs + 50,
    workflowMs: input.workflowMs,
    jobMs: input.jobMs,
    libvirtTotalMs: input.jobMs,
    downtimeMs: input.downtimeMs,
    bytes: 1,
    passes: 3,
    overheadMs: input.workflowMs - input.jobMs,
    plan: plan(input.predicted),
    loadAvg1: 1,
    guestSurvived: true,
  }) satisfies MigrationSample;

const results = (samples: MigrationSample[], load = 1): MigrationResults => ({
  run: run(load),
  benchmark: 'migration',
  domainType: 'qemu',
  guest: { vcpus: 1, memoryMib: 256, workingSetMiB: 64, dirtyMiBps: { idle: 0, busy: 50 } },
  repetitions: 2,
  linkCapMbit: 100,
  deadlineMs: 60_000,
  agentsInHostNamespaces: true,
  agentDwcpMode: 'profile',
  cases: [
    {
      guest: 'busy',
      link: 'veth',
      dirtyRateBytesPerSecond: 40 * 2 ** 20,
      samples,
    },
  ],
});

const verdict = (r: MigrationResults, prefix: string) => goalVerdicts(r).find((v) => v.goal.startsWith(prefix))!;

test("NovaCron's total is its workflow's time, libvirt's defaults' the driver call", () => {
  assert.equal(totalOf(novacron({ workflowMs: 4000, jobMs: 1000, downtimeMs: 10, predicted: 1000 })), 4000);
  assert.equal(totalOf(defaults(2500)), 2500);
});

test('the goals are judged on the medians, and a baseline that never converged is named as such', () => {
  const fast = results([
    defaults(9000),
    defaults(9000),
    novacron({ workflowMs: 5000, jobMs: 4900, downtimeMs: 250, predicted: 5500 }),
    novacron({ workflowMs: 6000, jobMs: 5800, downtimeMs: 320, predicted: 5800 }),
  ]);
  assert.equal(verdict(fast, '≥ 1.5×').met, true);
  assert.match(verdict(fast, '≥ 1.5×').figure, /^1\.80× end to end/);
  assert.equal(verdict(fast, 'downtime').met, false, 'the worst downtime decides');
  assert.equal(verdict(fast, 'orchestration').met, true);
  assert.equal(verdict(fast, 'predicted total').met, true);

  const slow = results([
    defaults(6000),
    defaults(6000),
    novacron({ workflowMs: 5000, jobMs: 1000, downtimeMs: 100, predicted: 2000 }),
    novacron({ workflowMs: 5000, jobMs: 1000, downtimeMs: 100, predicted: 2000 }),
  ]);
  assert.equal(verdict(slow, '≥ 1.5×').met, false);
  assert.equal(verdict(slow, 'orchestration').met, false);
  assert.equal(verdict(slow, 'predicted total').met, false);

  const stuck = results([
    defaults(60_000, 'not-converged'),
    novacron({ workflowMs: 30_000, jobMs: 29_000, downtimeMs: 100, predicted: null }),
  ]);
  assert.equal(verdict(stuck, '≥ 1.5×').met, true);
  assert.match(verdict(stuck, '≥ 1.5×').figure, /completed none of 1 within 60\.0 s/);
  assert.equal(verdict(stuck, 'predicted total').met, undefined, 'no finite prediction, no verdict');
});

test('a run on a loaded machine says a quiet rerun is due', () => {
  const samples = [defaults(2000), novacron({ workflowMs: 3000, jobMs: 1000, downtimeMs: 100, predicted: 1000 })];
  assert.match(renderMigration('/x/bench/results/migration.json', results(samples, 9)), /a rerun on a quiet machine/);
  assert.doesNotMatch(renderMigration('/x/bench/results/migration.json', results(samples, 1)), /quiet machine/);
});
