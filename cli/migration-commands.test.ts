import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { MigrationPlan } from '../domain/migration';
import { startStandInApi, type StandInApi } from '../test/support/stand-in-api';
import { CliError } from './api-client';
import { runCli } from './main';
import { planLine, runMigrationCli } from './migration-commands';

const VM = '6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b';

const plan: MigrationPlan = {
  mode: 'datacenter',
  parameters: { parallelConnections: 2, maxDowntimeMs: 300, autoConverge: true, postCopy: false },
  prediction: { converges: true, passes: 3, totalMs: 2400, downtimeMs: 12.4, bytes: 300 * 1024 * 1024 },
  mitigation: 'none',
  deadlineMs: 60_000,
  inputs: {
    memoryBytes: 256 * 1024 * 1024,
    dirtyRateBytesPerSecond: 8 * 1024 * 1024,
    linkBandwidthBytesPerSecond: 1200 * 1024 * 1024,
    linkRttMs: 0.2,
    mode: 'datacenter',
  },
};

let api: StandInApi;

before(async () => {
  api = await startStandInApi();
});
after(() => api.close());
beforeEach(() => {
  api.reset();
  api.answer(202, { workflowId: `migrate-${VM}-abc`, runId: 'r', vmId: VM, existing: false, plan });
});

async function run(...argv: string[]): Promise<{ code: number; out: string[] }> {
  const out: string[] = [];
  const code = await runMigrationCli([...argv, '--api', api.url], { out: (l) => out.push(l) });
  return { code, out };
}

async function refused(argv: string[], message: RegExp): Promise<void> {
  await assert.rejects(run(...argv), (err: unknown) => {
    assert.ok(err instanceof CliError, String(err));
    assert.match(err.message, message);
    assert.equal(err.exitCode, 2);
    assert.doesNotMatch(err.message, /\n/, 'one line');
    return true;
  });
  assert.deepEqual(api.requests, [], 'nothing was sent');
}

describe('novacron vm migrate: arguments', () => {
  test('policy flags become the policy; the target and request id go with it', async () => {
    const { code, out } = await run(
      'vm',
      'migrate',
      VM,
      '--to',
      'host-b',
      '--max-downtime-ms',
      '500',
      '--allow-post-copy',
      '--no-auto-converge',
      '--bandwidth-mibps',
      '64',
      '--forbid-escalation',
      '--request-id',
      'r-1',
    );
    assert.equal(code, 0);
    assert.equal(api.requests.length, 1);
    const [request] = api.requests;
    assert.equal(request!.url, `/v1/vms/${VM}/migrate`);
    assert.equal(request!.headers['idempotency-key'], 'r-1');
    assert.deepEqual(request!.body, {
      targetHostId: 'host-b',
      policy: {
        maxDowntimeMs: 500,
        bandwidthMiBps: 64,
        allowPostCopy: true,
        allowAutoConverge: false,
        escalation: 'forbidden',
      },
    });
    assert.deepEqual(out, [
      `started migrate-${VM}-abc (VM ${VM})`,
      planLine(plan),
      `follow it with novacron migration show migrate-${VM}-abc`,
    ]);
  });

  test('no flags send an empty body: placement and the default policy', async () => {
    await run('vm', 'migrate', VM);
    assert.deepEqual(api.requests[0]!.body, {});
    assert.equal(api.requests[0]!.headers['idempotency-key'], undefined);
  });

  test('--policy-json is sent as it is', async () => {
    await run('vm', 'migrate', VM, '--policy-json', '{"maxDowntimeMs":800,"stallPasses":3}');
    assert.deepEqual(api.requests[0]!.body, { policy: { maxDowntimeMs: 800, stallPasses: 3 } });
  });

  test('bad arguments are one line, exit 2, and send nothing', async () => {
    await refused(['vm', 'migrate'], /^usage: novacron vm migrate ID/);
    await refused(['vm', 'migrate', VM, '--policy-json', '{}', '--max-downtime-ms', '5'], /replaces --max-downtime-ms/);
    await refused(['vm', 'migrate', VM, '--policy-json', '{"maxDowntimeMs":'], /^--policy-json is not JSON: /);
    await refused(['vm', 'migrate', VM, '--policy-json', '[1]'], /^--policy-json must be a JSON object/);
    await refused(['vm', 'migrate', VM, '--max-downtime-ms', '1.5'], /^--max-downtime-ms must be a whole number/);
    await refused(['vm', 'migrate', VM, '--bandwidth-mibps', 'fast'], /^--bandwidth-mibps must be a whole number/);
    await refused(['vm', 'migrate', VM, '--downtime', '5'], /Unknown option '--downtime'/);
    await refused(['vm', 'migrate', VM, 'extra'], /^unexpected argument "extra"/);
    await refused(['migration', 'show'], /^usage: /);
  });

  test("the API's refusal is one line with its status, exit 1", async () => {
    api.answer(422, {
      error: 'MigrationRefused',
      message: 'migration of web-1 refused: does not converge',
      requestId: 'x',
    });
    await assert.rejects(run('vm', 'migrate', VM, '--forbid-escalation'), {
      message: '422: migration of web-1 refused: does not converge',
      exitCode: 1,
    });
  });
});

describe('novacron migration list|show', () => {
  const record = {
    id: `migrate-${VM}-abc`,
    vmId: VM,
    sourceHostId: 'host-a',
    targetHostId: 'host-b',
    state: 'completed',
    escalations: [],
    createdAt: '2026-01-01T00:00:00.000Z',
    plan,
    result: {
      workflowId: `migrate-${VM}-abc`,
      vmId: VM,
      outcome: 'completed',
      finalHostId: 'host-b',
      sourceHostId: 'host-a',
      escalations: [],
      measured: { totalMs: 700, downtimeMs: 21, bytes: 1024 * 1024, passes: 3, jobMs: 700 },
      workflowMs: 3000,
    },
  };

  test('list passes the filters and prints a line per migration', async () => {
    api.answer(200, { migrations: [record] });
    const { out } = await run('migration', 'list', '--vm', VM, '--state', 'completed', '--limit', '5');
    assert.equal(api.requests[0]!.url, `/v1/migrations?vmId=${VM}&state=completed&limit=5`);
    assert.deepEqual(out, [
      `2026-01-01T00:00:00.000Z  completed ${VM}  host-a -> host-b  migrate-${VM}-abc  21 ms downtime`,
    ]);
  });

  test('show prints hosts, plan and result', async () => {
    api.answer(200, record);
    const { out } = await run('migration', 'show', record.id);
    assert.equal(api.requests[0]!.url, `/v1/migrations/${record.id}`);
    assert.equal(out[0], `${record.id}  completed  VM ${VM}  host-a -> host-b`);
    assert.equal(out[2], `  ${planLine(plan)}`);
    assert.match(out[3]!, /^ {2}completed: VM .* runs on host-b after 3 s, downtime 21 ms, 1\.0 MiB in 3 passes$/);
  });
});

test('planLine says what the plan predicts and from which figures', () => {
  assert.equal(
    planLine(plan),
    'plan: datacenter, predicted 2 s, 12 ms downtime, 3 passes; 2 connections, memory 256 MiB, ' +
      'dirty rate 8.0 MiB/s, link 1200 MiB/s',
  );
  assert.match(
    planLine({
      ...plan,
      mitigation: 'auto-converge',
      prediction: { ...plan.prediction, converges: false, reason: 'dirty rate above link rate' },
    }),
    /^plan: datacenter, not predicted to converge at 300 ms \(dirty rate above link rate\), relies on auto-converge;/,
  );
});

test('novacron routes vm migrate and migration to these commands, and lists them in its help', async () => {
  await assert.rejects(runCli(['vm', 'migrate']), /^CliError: usage: novacron vm migrate ID/);
  await assert.rejects(
    runCli(['migration', 'bogus']),
    /^CliError: usage: novacron vm migrate ID \[options\] \| migration/,
  );
  const help: string[] = [];
  assert.equal(await runCli(['--help'], (l) => help.push(l)), 0);
  assert.match(help.join('\n'), /vm migrate ID \[--to HOST\]/);
  assert.match(help.join('\n'), /migration show ID \[--json\]/);
});
