/**
 * failoverHost on a real Temporal server with its activities mocked: the order of its steps, what ends it early
 * (the host came back within the grace, too few witnesses), restart waves by priority, a guest a witness saw
 * running withheld, and a witness whose agent never answers not holding up the round.
 */
import { Worker } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import type {
  FailoverControlActivities,
  FailoverReport,
  RestartCandidate,
} from '../activities/failover-control-activities';
import type { FailoverHostInput } from '../domain/failover';
import { vmSpecSchema } from '../domain/vm-spec';
import { workflowTestEnv } from '../test/support/workflow-test-env';
import type { failoverHost } from './failover-host';

const env = workflowTestEnv();

type Calls = Array<[string, unknown]>;

function candidate(name: string, haPriority: number): RestartCandidate {
  return {
    vmId: `vm-${name}`,
    name,
    haPriority,
    spec: vmSpecSchema.parse({ name, vcpus: 1, memoryMib: 64, storagePool: 'shared', haPriority }),
  };
}

interface Scenario {
  suspect?: boolean;
  storm?: boolean;
  /** The storm shows only at the fence, after the witnesses were asked. */
  stormAtFence?: boolean;
  confirmed?: boolean;
  candidates?: RestartCandidate[];
  /** Witness hosts with a worker; `deadWitnesses` are asked but nobody polls their queue. */
  witnesses?: string[];
  deadWitnesses?: string[];
  runningDomains?: string[];
}

async function run(scenario: Scenario): Promise<{ calls: Calls; report: FailoverReport }> {
  const suffix = randomBytes(4).toString('hex');
  const taskQueue = `failover-test-${suffix}`;
  const suspectHostId = `suspect-${suffix}`;
  const targetHostId = `target-${suffix}`;
  const witnesses = (scenario.witnesses ?? ['w1', 'w2']).map((w) => `${w}-${suffix}`);
  const dead = (scenario.deadWitnesses ?? []).map((w) => `${w}-${suffix}`);
  const calls: Calls = [];
  const record =
    <I, T>(name: string, result: (input: I) => T) =>
    async (input: I): Promise<T> => {
      calls.push([name, input]);
      return result(input);
    };
  const finished = (input: { state: FailoverReport['state']; reason?: string }): FailoverReport => ({
    id: 'x',
    hostId: suspectHostId,
    suspectToken: 7,
    state: input.state,
    suspectedAt: '',
    startedAt: '',
    vms: [],
    ...(input.reason ? { reason: input.reason } : {}),
  });
  const control: Partial<FailoverControlActivities> = {
    checkSuspect: record('checkSuspect', () =>
      scenario.storm
        ? { suspect: false, storm: true, reason: '2 of 3 hosts are suspect at once' }
        : scenario.suspect === false
          ? { suspect: false, reason: 'renewed' }
          : { suspect: true },
    ),
    pickWitnesses: record('pickWitnesses', () => ({ witnesses: [...witnesses, ...dead], agentEndpoint: 'x:1' })),
    confirmSuspect: record('confirmSuspect', (input: { votes: unknown[] }) => ({
      mode: 'majority' as const,
      asked: witnesses.length + dead.length,
      needed: 2,
      accepted: input.votes.length,
      alive: 0,
      confirmed: scenario.confirmed ?? true,
      checks: [],
    })),
    fenceSuspect: record('fenceSuspect', () =>
      scenario.stormAtFence
        ? { fenced: false, token: 7, storm: '2 of 3 hosts are suspect at once' }
        : { fenced: true, token: 8 },
    ),
    failoverCandidates: record('failoverCandidates', () => scenario.candidates ?? []),
    relocateFailoverVm: record('relocateFailoverVm', () => ({ hostId: targetHostId, ownerToken: 3 })),
    recordFailoverVmOutcome: record('recordFailoverVmOutcome', () => undefined),
    finishFailover: record('finishFailover', finished),
  };
  const vote = (witnessHostId: string) => async (input: { round: string }) => {
    calls.push(['witnessHost', witnessHostId]);
    return {
      body: {
        round: input.round,
        suspectHostId,
        suspectToken: 7,
        witnessHostId,
        verdict: 'unreachable' as const,
        agentReachable: false,
        libvirtReachable: true,
        runningDomains: scenario.runningDomains ?? [],
        issuedAt: new Date().toISOString(),
      },
      signature: 'sig',
    };
  };
  const workers = [
    await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: env.bundle,
      activities: control,
    }),
    ...(await Promise.all(
      witnesses.map((w) =>
        Worker.create({
          connection: env.nativeConnection,
          taskQueue: `host-${w}`,
          activities: { witnessHost: vote(w) },
        }),
      ),
    )),
    await Worker.create({
      connection: env.nativeConnection,
      taskQueue: `host-${targetHostId}`,
      activities: {
        locateVmDisks: record('locateVmDisks', (input: { vmId: string }) => [
          { name: 'root', path: `/pool/${input.vmId}`, format: 'qcow2', target: 'vda' },
        ]),
        defineVmDomain: record('defineVmDomain', () => ({ uuid: 'u' })),
        startVmDomain: record('startVmDomain', () => ({ alreadyRunning: false })),
      },
    }),
  ];
  const input: FailoverHostInput = {
    hostId: suspectHostId,
    suspectToken: 7,
    // The grace has already run out: suspicion began 10 s ago.
    suspectedAt: new Date(Date.now() - 10_000).toISOString(),
    settings: { graceMs: 1000, witnesses: 3, witnessProbeTimeoutMs: 300, voteMode: 'majority' },
  };
  let execution = env.client.workflow.execute<typeof failoverHost>('failoverHost', {
    taskQueue,
    workflowId: `failover-${suspectHostId}-7`,
    args: [input],
  });
  for (const worker of workers) execution = worker.runUntil(execution);
  const report = await execution;
  return { calls, report };
}

const names = (calls: Calls) => calls.map(([name]) => name);

test('a host that came back within the grace is neither witnessed nor fenced', async () => {
  const { calls, report } = await run({ suspect: false });
  assert.deepEqual(names(calls), ['checkSuspect', 'finishFailover']);
  assert.equal(report.state, 'aborted');
  assert.match(report.reason ?? '', /not suspect any more: renewed/);
});

test('a storm seen after the grace withholds the failover before any witness is asked', async () => {
  const { calls, report } = await run({ storm: true });
  assert.deepEqual(names(calls), ['checkSuspect', 'finishFailover']);
  assert.equal(report.state, 'withheld');
  assert.match(report.reason ?? '', /suspect at once/);
});

test('a storm that grew while the witnesses were asked withholds the failover unfenced, nothing restarted', async () => {
  const { calls, report } = await run({ stormAtFence: true, candidates: [candidate('a', 50)] });
  assert.deepEqual(
    names(calls).filter((n) => n !== 'witnessHost'),
    ['checkSuspect', 'pickWitnesses', 'confirmSuspect', 'fenceSuspect', 'finishFailover'],
  );
  assert.equal(report.state, 'withheld');
  assert.match(report.reason ?? '', /suspect at once/);
});

test('without confirmation nothing is fenced and nothing restarts', async () => {
  const { calls, report } = await run({ confirmed: false, candidates: [candidate('a', 50)] });
  assert.deepEqual(
    names(calls).filter((n) => n !== 'witnessHost'),
    ['checkSuspect', 'pickWitnesses', 'confirmSuspect', 'finishFailover'],
  );
  assert.equal(report.state, 'not-confirmed');
});

test('confirmed: fenced before any restart, waves by priority, a guest seen running withheld', async () => {
  const { calls, report } = await run({
    candidates: [candidate('low', 10), candidate('seen', 90), candidate('high', 90)],
    runningDomains: ['seen'],
  });
  const order = names(calls).filter((n) => n !== 'witnessHost');
  assert.deepEqual(order.slice(0, 5), [
    'checkSuspect',
    'pickWitnesses',
    'confirmSuspect',
    'fenceSuspect',
    'failoverCandidates',
  ]);
  const relocated = calls.filter(([n]) => n === 'relocateFailoverVm').map(([, i]) => (i as { vmId: string }).vmId);
  assert.deepEqual(relocated, ['vm-high', 'vm-low'], 'the seen guest is never relocated; high goes before low');
  const outcomes = calls
    .filter(([n]) => n === 'recordFailoverVmOutcome')
    .map(([, i]) => i as { outcome: { name: string; outcome: string }; release?: string });
  // seen and high are one wave, side by side, so only the set is fixed.
  assert.deepEqual(outcomes.map((o) => [o.outcome.name, o.outcome.outcome, o.release]).sort(), [
    ['high', 'restarted', 'running'],
    ['low', 'restarted', 'running'],
    ['seen', 'withheld', undefined],
  ]);
  // high's wave finished before low's began.
  const startOf = (vmId: string) =>
    calls.findIndex(([n, i]) => n === 'relocateFailoverVm' && (i as { vmId: string }).vmId === vmId);
  const highDone = calls.findIndex(
    ([n, i]) => n === 'recordFailoverVmOutcome' && (i as { outcome: { name: string } }).outcome.name === 'high',
  );
  assert.ok(highDone < startOf('vm-low'));
  assert.equal(report.state, 'withheld');
  assert.match(report.reason ?? '', /1 of 3 HA guests did not restart: seen \(withheld/);
});

test('a witness whose agent never answers does not hold up the round', async () => {
  const { calls } = await run({ witnesses: ['w1', 'w2'], deadWitnesses: ['gone'], candidates: [] });
  const confirm = calls.find(([n]) => n === 'confirmSuspect')![1] as { asked: string[]; votes: unknown[] };
  assert.equal(confirm.asked.length, 3);
  assert.equal(confirm.votes.length, 2, 'the two live witnesses voted; the dead one timed out');
});
