import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { startStandInApi, type StandInApi } from '../test/support/stand-in-api';
import { CliError } from './api-client';
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
