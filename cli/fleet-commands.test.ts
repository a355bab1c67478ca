import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { startStandInApi, type StandInApi } from '../test/support/stand-in-api';
import { CliError } from './api-client';
import { runFleetCli } from './fleet-commands';
import { runCli } from './main';

const VM = '6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b';
let api: StandInApi;

before(async () => {
  api = await startStandInApi();
});
after(() => api.close());
beforeEach(() => {
  api.reset();
  api.answer(202, { workflowId: `vm-create-${VM}`, runId: 'r', vmId: VM, existing: false });
});

async function run(...argv: string[]): Promise<{ code: number; out: string[] }> {
  const out: string[] = [];
  const code = await runCli([...argv, '--api', api.url], (line) => out.push(line));
  return { code, out };
}

test('vm create from an image on a pool, with OEM strings, sends them as the spec names them', async () => {
  const { code, out } = await run(
    'vm',
    'create',
    'tg-1',
    '--vcpus',
    '1',
    '--memory',
    '256',
    '--image',
    'novacron-testguest',
    '--pool',
    'shared',
    '--oem-string',
    'novacron.dirty-mibps=8',
    '--oem-string',
    'novacron.working-set-mib=32',
  );
  assert.equal(code, 0);
  assert.equal(api.requests.length, 1);
  assert.equal(api.requests[0]!.url, '/v1/vms');
  assert.deepEqual(api.requests[0]!.body, {
    name: 'tg-1',
    vcpus: 1,
    memoryMib: 256,
    disks: [],
    image: 'novacron-testguest',
    storagePool: 'shared',
    oemStrings: ['novacron.dirty-mibps=8', 'novacron.working-set-mib=32'],
  });
  assert.match(out[0]!, new RegExp(`^started vm-create-${VM} \\(VM ${VM}\\)`));
});

test('vm create without them leaves the image, pool and OEM strings to the defaults', async () => {
  await run('vm', 'create', 'plain', '--vcpus', '2', '--memory', '512', '--disk', 'root:1024:raw');
  assert.deepEqual(api.requests[0]!.body, {
    name: 'plain',
    vcpus: 2,
    memoryMib: 512,
    disks: [{ name: 'root', sizeMib: 1024, format: 'raw' }],
  });
});

test('a flag without its value is one line, exit 2, and sends nothing', async () => {
  await assert.rejects(run('vm', 'create', 'tg-1', '--vcpus', '1', '--memory', '256', '--image'), (err: unknown) => {
    assert.ok(err instanceof CliError);
    assert.match(err.message, /--image/);
    assert.equal(err.exitCode, 2);
    return true;
  });
  assert.deepEqual(api.requests, []);
});

test('host list shows each host with the storage pools it mounts', async () => {
  const host = {
    id: 'host-1',
    address: '127.0.0.1',
    state: 'up',
    cpus: 2,
    memoryMib: 4096,
    storagePools: { shared: '/data/pools/shared', nfs1: '/mnt/nfs1' },
    lease: { holder: 'a', fencingToken: 3, expiresAt: '2026-01-01T00:00:00.000Z', alive: true },
    allocated: { vms: 1, vcpus: 1, memoryMib: 256, diskMib: 0 },
  };
  api.answer(200, { hosts: [host, { ...host, id: 'host-2', storagePools: {}, lease: undefined }] });
  const { out } = await run('host', 'list');
  assert.equal(api.requests[0]!.url, '/v1/hosts');
  assert.equal(out.length, 2);
  assert.match(out[0]!, /^host-1 .* token 3 .* 1 VMs, 1\/2 vCPU\/CPU, 256\/4096 MiB, pools local,nfs1,shared$/);
  assert.match(out[1]!, /^host-2 .* no lease .* pools local$/);
});

test('novacron --help lists the new vm create flags', async () => {
  const help: string[] = [];
  assert.equal(await runCli(['--help'], (line) => help.push(line)), 0);
  assert.match(help.join('\n'), /vm create NAME --vcpus N --memory MIB \[--image ID\] \[--pool NAME\]/);
  assert.match(help.join('\n'), /\[--oem-string S \.\.\.\]/);
});

test('vm create --no-ha sends ha: false; without it the spec default (true) applies', async () => {
  await run('vm', 'create', 'batch-1', '--vcpus', '1', '--memory', '256', '--no-ha', '--ha-priority', '10');
  assert.deepEqual(api.requests[0]!.body, {
    name: 'batch-1',
    vcpus: 1,
    memoryMib: 256,
    disks: [],
    haPriority: 10,
    ha: false,
  });
  api.reset();
  await run('vm', 'create', 'web-1', '--vcpus', '1', '--memory', '256');
  assert.equal('ha' in (api.requests[0]!.body as object), false);
});

const completed = {
  id: 'failover-host-1-7',
  hostId: 'host-1',
  suspectToken: 7,
  state: 'completed',
  suspectedAt: '2026-03-01T10:00:00.000Z',
  startedAt: '2026-03-01T10:00:00.050Z',
  graceEndedAt: '2026-03-01T10:00:02.050Z',
  confirmation: {
    mode: 'majority',
    asked: 3,
    needed: 2,
    accepted: 3,
    votes: [],
    confirmedAt: '2026-03-01T10:00:03.400Z',
  },
  fencedAt: '2026-03-01T10:00:03.450Z',
  fencedToken: 8,
  vms: [
    { vmId: VM, name: 'web-1', haPriority: 90, outcome: 'restarted', targetHostId: 'host-2', durationMs: 2100 },
    { vmId: VM, name: 'scratch', haPriority: 50, outcome: 'not-ha' },
  ],
  finishedAt: '2026-03-01T10:00:05.600Z',
  detectionMs: 3400,
  totalMs: 5550,
};
const notConfirmed = {
  id: 'failover-host-1-6',
  hostId: 'host-1',
  suspectToken: 6,
  state: 'not-confirmed',
  suspectedAt: '2026-02-28T09:00:00.000Z',
  startedAt: '2026-02-28T09:00:00.040Z',
  confirmation: { mode: 'signed', asked: 4, needed: 3, accepted: 1, votes: [] },
  vms: [],
  reason: '1 of 3 needed witnesses found host-1 unreachable',
};

test('host failovers prints one line per failover, newest first as the API gives them, with --limit in the query', async () => {
  api.answer(200, { failovers: [completed, notConfirmed] });
  const { code, out } = await run('host', 'failovers', 'host-1', '--limit', '5');
  assert.equal(code, 0);
  assert.equal(api.requests[0]!.url, '/v1/hosts/host-1/failovers?limit=5');
  assert.equal(out.length, 2);
  assert.match(
    out[0]!,
    /^failover-host-1-7 {2}completed +suspected 2026-03-01T10:00:00\.000Z {2}detection 3400 ms, total 5550 ms {2}votes 3\/2 majority {2}fenced token 8 {2}VMs restarted 1\/2$/,
  );
  assert.match(
    out[1]!,
    /^failover-host-1-6 {2}not-confirmed .* detection -, total - {2}votes 1\/3 signed {2}not fenced {2}VMs restarted 0\/0$/,
  );
});

test('host failovers --json prints the reports as JSON; none recorded says so', async () => {
  api.answer(200, { failovers: [completed] });
  const { out } = await run('host', 'failovers', 'host-1', '--json');
  assert.equal(api.requests[0]!.url, '/v1/hosts/host-1/failovers');
  assert.deepEqual(JSON.parse(out.join('\n')), [completed]);
  api.answer(200, { failovers: [] });
  assert.deepEqual((await run('host', 'failovers', 'host-1')).out, ['no failovers recorded for host host-1']);
});

test('host failovers --limit that is not an integer is one line and sends nothing', async () => {
  await assert.rejects(run('host', 'failovers', 'host-1', '--limit', 'ten'), /--limit must be an integer/);
  assert.deepEqual(api.requests, []);
});

test('failover show prints the report as JSON', async () => {
  api.answer(200, completed);
  const out: string[] = [];
  assert.equal(await runFleetCli(['failover', 'show', 'failover-host-1-7', '--api', api.url], (l) => out.push(l)), 0);
  assert.equal(api.requests[0]!.url, '/v1/failovers/failover-host-1-7');
  assert.deepEqual(JSON.parse(out.join('\n')), completed);
});

test('host readmit posts to the host and prints its state and new lease token', async () => {
  api.answer(200, {
    id: 'host-1',
    state: 'up',
    lease: { holder: 'agent', fencingToken: 9, expiresAt: '2026-03-01T11:00:00.000Z', alive: true },
  });
  const { code, out } = await run('host', 'readmit', 'host-1');
  assert.equal(code, 0);
  assert.equal(api.requests[0]!.method, 'POST');
  assert.equal(api.requests[0]!.url, '/v1/hosts/host-1/readmit');
  assert.deepEqual(out, ['host-1 is up (lease token 9)']);
});

test("a refused readmit is one line with the API's status and the store's reason, exit 1", async () => {
  api.answer(409, {
    error: 'ReadmitRefused',
    message: 'host host-1 not readmitted: no agent holds a live lease on it; start its agent first',
    requestId: 'r',
  });
  await assert.rejects(run('host', 'readmit', 'host-1'), (err: unknown) => {
    assert.ok(err instanceof CliError);
    assert.equal(
      err.message,
      '409: host host-1 not readmitted: no agent holds a live lease on it; start its agent first',
    );
    assert.equal(err.exitCode, 1);
    return true;
  });
});

test('host with an unknown subcommand names the failover commands in its usage line', async () => {
  await assert.rejects(run('host', 'fail'), /failovers ID \[--limit N\] \[--json\] \| readmit ID/);
});

test('novacron --help lists the failover commands and vm create --no-ha', async () => {
  const help: string[] = [];
  await runCli(['--help'], (line) => help.push(line));
  const text = help.join('\n');
  assert.match(text, /host failovers ID \[--limit N\] \[--json\]/);
  assert.match(text, /host readmit ID/);
  assert.match(text, /failover show ID/);
  assert.match(text, /\[--no-ha\]/);
});
