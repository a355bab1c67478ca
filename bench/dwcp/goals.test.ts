import assert from 'node:assert/strict';
import { test } from 'node:test';
import { evaluateDwcpGoals, renderGoalsTable } from './goals';
import type { DwcpBenchRun, Scenario } from './measure';

const CAPPED = 'veth-tbf-100mbit';
const LINKS = [
  { name: 'loopback', rateMbps: null },
  { name: CAPPED, rateMbps: 100 },
];

/** A run moving 800 MB of logical content in `seconds`, with `cpu` seconds at each end. */
function run(link: string, tool: string, scenario: Scenario, seconds: number, cpu = 1): DwcpBenchRun {
  return {
    link,
    tool,
    scenario,
    seconds,
    logicalMBps: 800 / seconds,
    wireBytes: 1,
    senderCpuSeconds: cpu,
    receiverCpuSeconds: cpu,
    verified: true,
    loadAvg1: 1,
  };
}

const byGoal = (runs: DwcpBenchRun[]) =>
  new Map(evaluateDwcpGoals({ runs, links: LINKS }).map((g) => [g.goal, g] as const));

test('each goal is judged on rows of the run: ratios of logical throughput, CPU as a ceiling', () => {
  const goals = byGoal([
    run('loopback', 'raw-tcp', 'first', 1, 1),
    run('loopback', 'rsync', 'first', 2),
    run('loopback', 'rsync', 'delta', 2),
    run('loopback', 'dwcp-datacenter', 'first', 0.5, 1.4),
    run('loopback', 'dwcp-datacenter', 'delta', 1.5),
    run(CAPPED, 'dwcp-auto', 'first', 8),
    run(CAPPED, 'zstd-1-nc', 'first', 8),
    run(CAPPED, 'dwcp-auto', 'stream-image', 8),
    run(CAPPED, 'raw-tcp', 'stream-image', 64),
  ]);
  const verdict = (goal: string) => {
    const g = goals.get(goal);
    assert.ok(g, `no goal ${goal}`);
    return [g.verdict, g.measured === undefined ? undefined : Number(g.measured.toFixed(3))];
  };
  assert.deepEqual(verdict('loopback first copy, × raw TCP stream'), ['met', 2]);
  assert.deepEqual(verdict('loopback first copy, × rsync'), ['met', 4]);
  assert.deepEqual(verdict("loopback v1→v2 delta, × rsync's delta"), ['not met', 1.333]);
  assert.deepEqual(verdict("loopback v1→v2 delta, × DWCP's own first copy"), ['not met', 0.333]);
  // 2.8 CPU s against nc's 2: 1.4×, under the 1.5× ceiling.
  assert.deepEqual(verdict("CPU s per GB logical, both ends, × nc's (loopback first copy)"), ['met', 1.4]);
  // Exactly the target meets it.
  assert.deepEqual(verdict(`${CAPPED} first copy, × zstd-1-nc (zstd -1 -T0, nc)`), ['met', 1]);
  // 100 MB/s of logical content over a 12.5 MB/s link.
  assert.deepEqual(verdict(`${CAPPED} stream-image, × the link rate (100 Mbit/s)`), ['met', 8]);
  assert.deepEqual(verdict(`${CAPPED} v1→v2 delta, × rsync's delta`), ['not measured', undefined]);
  assert.deepEqual(verdict('loopback stream-random, × a direct TCP connection'), ['not measured', undefined]);
});

test('a run without the capped link judges only the loopback goals, and the table counts what it met', () => {
  const runs = [run('loopback', 'raw-tcp', 'first', 1, 1), run('loopback', 'dwcp-datacenter', 'first', 2, 1)];
  const goals = evaluateDwcpGoals({ runs, links: [{ name: 'loopback', rateMbps: null }] });
  assert.ok(goals.every((g) => g.goal.startsWith('loopback') || g.goal.startsWith('CPU')));
  assert.equal(goals.length, 8);
  const table = renderGoalsTable({ runs, links: [{ name: 'loopback', rateMbps: null }] });
  assert.match(table, /1 of 8 met/);
  assert.match(table, /\| loopback first copy, × raw TCP stream \| ≥ 1.5× \| 0.50× \| .* \| not met \|/);
  assert.match(table, /\| CPU s per GB logical.* \| ≤ 1.5× \| 1.00× \| .* \| met \|/);
  // Every row has the header's five cells: no figure carries a stray pipe.
  for (const line of table.split('\n').filter((l) => l.startsWith('| '))) assert.equal(line.split(' | ').length, 5);
});
