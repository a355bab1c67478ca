import assert from 'node:assert/strict';
import { test } from 'node:test';
import { replaceSection, runLine } from './results';
import { benchCommand, startRun } from './run-metadata';

test('a docs section is replaced between its markers only, and a missing or doubled marker is an error', () => {
  const doc = ['# Doc', 'before', '<!-- bench:x:start -->', 'old', 'lines', '<!-- bench:x:end -->', 'after', ''].join(
    '\n',
  );
  assert.equal(
    replaceSection(doc, 'x', '\nnew\n'),
    ['# Doc', 'before', '<!-- bench:x:start -->', 'new', '<!-- bench:x:end -->', 'after', ''].join('\n'),
  );
  assert.throws(() => replaceSection(doc, 'y', 'new'), /bench:y:start/);
  assert.throws(() => replaceSection('<!-- bench:x:end --> <!-- bench:x:start -->', 'x', 'new'), /exactly one/);
  assert.throws(() => replaceSection(`${doc}<!-- bench:x:start -->`, 'x', 'new'), /exactly one/);
});

test('the command names the environment variables that shape the run, and nothing else', () => {
  assert.equal(
    benchCommand('fleet', {
      PATH: '/usr/bin',
      NOVACRON_BENCH_FLEET_VMS: '10',
      NOVACRON_DWCP_LINKS: 'loopback',
      NOVACRON_BENCH_EMPTY: '',
      NOVACRON_API_PORT: '8080',
    }),
    'NOVACRON_BENCH_FLEET_VMS=10 NOVACRON_DWCP_LINKS=loopback npm run bench -- fleet',
  );
  assert.equal(benchCommand('init', {}), 'npm run bench -- init');
});

test('the run line names the command, the file, the commit and the load at both ends', () => {
  const run = startRun({ benchmark: 'fleet', command: 'npm run bench -- fleet' }).finish();
  assert.match(run.git.commit, /^([0-9a-f]{40}|unknown)$/);
  assert.equal(run.loadAverage.start.length, 3);
  assert.ok(Date.parse(run.finishedAt) >= Date.parse(run.startedAt));
  const line = runLine({ file: `${__dirname}/results/fleet.json`, run });
  assert.ok(line.startsWith('Written by `npm run bench -- fleet` into `bench/results/fleet.json`.'), line);
  assert.match(line, new RegExp(`commit \`${run.git.commit.slice(0, 10)}\``));
  assert.match(
    line,
    /Load average \(1, 5, 15 min\): [\d.]+ \/ [\d.]+ \/ [\d.]+ at the start, [\d.]+ \/ [\d.]+ \/ [\d.]+ at the end\./,
  );
  const legacy = runLine({
    file: `${__dirname}/results/dwcp-2026-11-22.json`,
    legacy: { command: 'npm run bench -- dwcp', date: '2026-11-22', machine: { cpus: 2, memoryGiB: 24 } },
  });
  assert.match(legacy, /predates the run record/);
  assert.throws(() => runLine({ file: 'x.json' }), /no run record/);
});
