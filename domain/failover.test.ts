import assert from 'node:assert/strict';
import test from 'node:test';
import { decideFailoverVm, domainsSeenRunning, failoverWorkflowId, judgeStorm, restartWaves } from './failover';

test('a storm is more than the threshold of the fleet suspect at once, and never an empty suspicion', () => {
  assert.equal(judgeStorm({ suspect: 1, total: 3, threshold: 0.55 }).storm, false);
  assert.equal(judgeStorm({ suspect: 2, total: 3, threshold: 0.55 }).storm, true);
  // Exactly at the threshold is not above it.
  assert.equal(judgeStorm({ suspect: 11, total: 20, threshold: 0.55 }).storm, false);
  assert.equal(judgeStorm({ suspect: 12, total: 20, threshold: 0.55 }).storm, true);
  assert.equal(judgeStorm({ suspect: 0, total: 0, threshold: 0.55 }).storm, false);
  assert.equal(judgeStorm({ suspect: 2, total: 4, threshold: 0.55 }).share, 0.5);
});

test('only running HA guests on a shared pool restart, and the others say why', () => {
  const vm = { vmId: 'v', name: 'web', ha: true, haPriority: 50, storagePool: 'shared', state: 'running' };
  assert.deepEqual(decideFailoverVm(vm), { kind: 'restart' });
  assert.equal(decideFailoverVm({ ...vm, ha: false }).kind === 'skip' && 'not-ha', 'not-ha');
  const local = decideFailoverVm({ ...vm, storagePool: 'local' });
  assert.ok(local.kind === 'skip' && local.outcome === 'not-restartable' && /local storage/.test(local.reason));
  const stopped = decideFailoverVm({ ...vm, state: 'stopped' });
  assert.ok(stopped.kind === 'skip' && /stopped/.test(stopped.reason));
});

test('restart waves go by priority, highest first, equal priorities together, ties by name', () => {
  const waves = restartWaves([
    { name: 'c', haPriority: 10 },
    { name: 'b', haPriority: 90 },
    { name: 'a', haPriority: 10 },
    { name: 'd', haPriority: 90 },
    { name: 'e', haPriority: 50 },
  ]);
  assert.deepEqual(
    waves.map((w) => w.map((v) => v.name)),
    [['b', 'd'], ['e'], ['a', 'c']],
  );
  assert.deepEqual(restartWaves([]), []);
});

test('a failover is per host incarnation, and what any witness saw running is kept', () => {
  const at = '2026-12-01T14:48:46.448Z';
  assert.equal(
    failoverWorkflowId({ hostId: 'host-1', suspectToken: 7, suspectedAt: at }),
    'failover-host-1-7-1796136526448',
  );
  assert.notEqual(
    failoverWorkflowId({ hostId: 'host-1', suspectToken: 7, suspectedAt: at }),
    failoverWorkflowId({ hostId: 'host-1', suspectToken: 8, suspectedAt: at }),
  );
  // The same token in another database's history (its lease expired at another time) is another failover.
  assert.notEqual(
    failoverWorkflowId({ hostId: 'host-1', suspectToken: 7, suspectedAt: at }),
    failoverWorkflowId({ hostId: 'host-1', suspectToken: 7, suspectedAt: '2026-12-01T14:50:00.000Z' }),
  );
  assert.deepEqual([...domainsSeenRunning([{ runningDomains: ['a'] }, {}, { runningDomains: ['b', 'a'] }])].sort(), [
    'a',
    'b',
  ]);
});
