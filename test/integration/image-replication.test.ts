/**
 * Image library end to end: two harness hypervisors with a host agent process each (each running its DWCP
 * receiver with a certificate from one development CA), a control worker, the API (inject), the real Temporal
 * server and PostgreSQL. Images move between the agents over real mutual-TLS TCP.
 */
import type { Client, Connection } from '@temporalio/client';
import type { InjectOptions } from 'fastify';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { buildApp, type BuiltApp } from '../../api/app';
import { runCli } from '../../cli/main';
import type { NovacronConfig } from '../../config/schema';
import { assertHypervisorBinaries, startLocalHypervisors, type LocalHypervisors } from '../../native/libvirt/harness';
import { createMetrics } from '../../observability/metrics';
import { startControlWorker, type ControlWorkerHandle } from '../../workers/control-worker';
import type { ReplicateImageResult } from '../../workflows/image-workflows';
import { startAgentProcess, stopAgentProcesses, TEST_FLEET_OVERRIDES, waitForHostsUp } from '../support/fleet';
import type { ChildHandle } from '../support/processes';
import { createTestDatabase, scratchDir, temporalClient, testConfig, type TestDatabase } from '../support/services';
import { bearer, mintToken } from '../support/tokens';
import { waitUntil } from '../support/wait';

const HOSTS = ['host-1', 'host-2'];
const MiB = 1024 * 1024;
/** Slow enough that a 48 MiB transfer runs for seconds: progress can be watched and the transfer cancelled. */
const RATE_LIMIT_MBPS = 80;

let db: TestDatabase;
let config: NovacronConfig;
let hypervisors: LocalHypervisors;
let imageRoots: Record<string, string>;
const agents: ChildHandle[] = [];
let worker: ControlWorkerHandle;
let built: BuiltApp;
let client: Client;
let connection: Connection;
let operatorToken: string;

function inject(options: InjectOptions) {
  return built.app.inject({ ...options, headers: { ...bearer(operatorToken), ...options.headers } });
}

before(async () => {
  assertHypervisorBinaries();
  db = await createTestDatabase();
  operatorToken = await mintToken(db.pool, { roles: ['operator'] });
  hypervisors = await startLocalHypervisors({ count: HOSTS.length, baseDir: scratchDir('hv') });
  const images = scratchDir('images');
  imageRoots = Object.fromEntries(HOSTS.map((id) => [id, path.join(images, id)]));
  config = testConfig({ databaseUrl: db.url, overrides: TEST_FLEET_OVERRIDES });
  ({ client, connection } = await temporalClient());
  worker = await startControlWorker({ config, logger: pino({ level: 'silent' }) });
  built = await buildApp({
    config,
    temporal: client,
    pool: db.pool,
    metrics: createMetrics({ service: 'image-test' }),
    logger: pino({ level: 'error' }),
  });
  for (const hypervisor of hypervisors.hosts) {
    agents.push(
      startAgentProcess({
        hypervisor,
        databaseUrl: db.url,
        imageRoot: imageRoots[hypervisor.hostId]!,
        env: { NOVACRON_DWCP_TRANSPORT_RATE_LIMIT_MBPS: String(RATE_LIMIT_MBPS) },
      }),
    );
  }
  await waitForHostsUp(db.pool, HOSTS, 90_000);
});

after(async () => {
  await stopAgentProcesses(agents);
  await built?.close();
  await worker?.shutdown();
  await connection?.close();
  await hypervisors?.stop();
  await db?.drop();
});

function libraryPath(hostId: string, imageId: string): string {
  return path.join(imageRoots[hostId]!, 'library', `${imageId}.raw`);
}

/** A raw image: `dataBytes` of random content at the start, a sparse zero tail after it. */
async function writeImage(input: { hostId: string; imageId: string; data: Buffer; sizeBytes: number }) {
  const file = libraryPath(input.hostId, input.imageId);
  await mkdir(path.dirname(file), { recursive: true });
  const handle = await open(file, 'w');
  await handle.write(input.data, 0, input.data.length, 0);
  await handle.truncate(input.sizeBytes);
  await handle.close();
  return file;
}

async function sha256Of(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

interface Started {
  workflowId: string;
  imageId: string;
  existing: boolean;
}

interface ImageView {
  id: string;
  sha256: string;
  sizeBytes: number;
  replicas: Array<{ hostId: string; state: string; error?: string }>;
}

interface WorkflowView {
  status: string;
  progress?: { link?: { mode: string }; steps: Array<{ name: string }> };
  pendingActivities: Array<{
    activityType: string;
    heartbeatDetails?: { phase: string; logicalBytes: number; totalBytes: number; wireBytes: number };
  }>;
  failure?: { message: string; type?: string };
}

async function post(url: string, payload: object, expected = 202): Promise<Started> {
  const response = await inject({ method: 'POST', url, payload });
  assert.equal(response.statusCode, expected, response.body);
  return response.json<Started>();
}

async function register(imageId: string, hostId = 'host-1'): Promise<ImageView> {
  const started = await post('/v1/images', { id: imageId, hostId });
  await client.workflow.getHandle(started.workflowId).result();
  const response = await inject({ method: 'GET', url: `/v1/images/${imageId}` });
  assert.equal(response.statusCode, 200, response.body);
  return response.json<ImageView>();
}

async function replicate(
  imageId: string,
  hostId: string,
): Promise<{ workflowId: string; result: ReplicateImageResult }> {
  const { workflowId } = await post(`/v1/images/${imageId}/replicate`, { hostId });
  return { workflowId, result: (await client.workflow.getHandle(workflowId).result()) as ReplicateImageResult };
}

async function rowCounts(): Promise<{ images: string; probes: string }> {
  const rows = await db.pool.query<{ images: string; probes: string }>(
    'SELECT (SELECT count(*) FROM images) AS images, (SELECT count(*) FROM link_probes) AS probes',
  );
  return rows.rows[0]!;
}

test('bad requests are refused with the field named, and nothing is written', async () => {
  const before = await rowCounts();
  const cases: Array<[{ method: 'GET' | 'POST'; url: string; payload?: object }, number, RegExp]> = [
    [{ method: 'POST', url: '/v1/images', payload: { id: 'Bad Id', hostId: 'host-1' } }, 400, /body\.id/],
    [
      { method: 'POST', url: '/v1/images', payload: { id: 'x', hostId: 'host-1', format: 'vmdk' } },
      400,
      /body\.format/,
    ],
    [{ method: 'POST', url: '/v1/images', payload: { id: 'x', hostId: 'nope' } }, 404, /body\.hostId/],
    [{ method: 'POST', url: '/v1/images/none/replicate', payload: { hostId: 'host-2' } }, 404, /image none/],
    [{ method: 'POST', url: '/v1/images/none/replicate', payload: { hostId: '../etc' } }, 400, /body\.hostId/],
    [{ method: 'POST', url: '/v1/images/none/replicate', payload: { hostId: 'host-2', x: 1 } }, 400, /x/],
    [{ method: 'GET', url: '/v1/links?limit=0' }, 400, /limit/],
  ];
  for (const [request, status, message] of cases) {
    const response = await inject(request);
    assert.equal(response.statusCode, status, `${request.method} ${request.url}: ${response.body}`);
    assert.match(response.json<{ message: string }>().message, message);
  }
  assert.deepEqual(await rowCounts(), before);
});

test('registering a file that is not on the host fails the workflow with a clear cause and records nothing', async () => {
  const started = await post('/v1/images', { id: 'missing', hostId: 'host-1' });
  await assert.rejects(client.workflow.getHandle(started.workflowId).result());
  const view = (await inject({ method: 'GET', url: `/v1/workflows/${started.workflowId}` })).json<WorkflowView>();
  assert.equal(view.status, 'FAILED');
  assert.equal(view.failure?.type, 'ImageFileMissing');
  assert.match(view.failure?.message ?? '', /no image file at .*missing\.raw on host host-1/);
  assert.equal((await inject({ method: 'GET', url: '/v1/images/missing' })).statusCode, 404);
});

test('an image registered on one host replicates to another byte for byte, with the link probe stored', async () => {
  const file = await writeImage({ hostId: 'host-1', imageId: 'base', data: randomBytes(8 * MiB), sizeBytes: 32 * MiB });
  const image = await register('base');
  assert.equal(image.sha256, await sha256Of(file));
  assert.equal(image.sizeBytes, 32 * MiB);
  assert.deepEqual(
    image.replicas.map((r) => [r.hostId, r.state]),
    [['host-1', 'ready']],
  );

  const { workflowId, result } = await replicate('base', 'host-2');
  assert.equal(result.alreadyPresent, false);
  assert.equal(await sha256Of(libraryPath('host-2', 'base')), image.sha256);
  assert.ok(result.transfer!.chunks.zero > 0, 'the zero tail is skipped, not sent');
  assert.ok(result.transfer!.wireBytes < 12 * MiB, `wire bytes ${result.transfer!.wireBytes} for 8 MiB of data`);

  const after = (await inject({ method: 'GET', url: '/v1/images/base' })).json<ImageView>();
  assert.deepEqual(
    after.replicas.map((r) => [r.hostId, r.state]),
    [
      ['host-1', 'ready'],
      ['host-2', 'ready'],
    ],
  );
  const links = (await inject({ method: 'GET', url: '/v1/links?sourceHostId=host-1' })).json<{
    probes: Array<{ targetHostId: string; rttMs: number; bandwidthMbps: number; mode: string; workflowId?: string }>;
  }>();
  const probes = links.probes.filter((p) => p.workflowId === workflowId);
  assert.equal(probes.length, 1, 'this replication stored one probe');
  assert.equal(probes[0]!.targetHostId, 'host-2');
  assert.ok(probes[0]!.bandwidthMbps > 0 && probes[0]!.rttMs >= 0);
  assert.equal(result.link?.mode, probes[0]!.mode);

  const again = await replicate('base', 'host-2');
  assert.equal(again.result.alreadyPresent, true, 'a ready replica is not copied again');
});

test('a new version sends only its changed chunks when the target holds the old one', async () => {
  // The old version is already in the target's library (the receiver offers every library file as a base).
  const old = randomBytes(8 * MiB);
  await writeImage({ hostId: 'host-2', imageId: 'delta-v1', data: old, sizeBytes: 32 * MiB });
  const changed = Buffer.from(old);
  randomBytes(512 * 1024).copy(changed, 3 * MiB);
  await writeImage({ hostId: 'host-1', imageId: 'delta-v2', data: changed, sizeBytes: 32 * MiB });
  const image = await register('delta-v2');
  const { result } = await replicate('delta-v2', 'host-2');
  assert.equal(await sha256Of(libraryPath('host-2', 'delta-v2')), image.sha256);
  assert.ok(result.transfer!.chunks.refs > 0, 'unchanged chunks are copied from base on the target');
  assert.ok(
    result.transfer!.wireBytes < 2 * MiB,
    `wire bytes ${result.transfer!.wireBytes} for a 512 KiB change in 8 MiB of data`,
  );
});

test('a replication shows its progress while it runs, and cancelling it stops both hosts and leaves nothing', async () => {
  await writeImage({ hostId: 'host-1', imageId: 'large', data: randomBytes(48 * MiB), sizeBytes: 48 * MiB });
  await register('large');
  const started = await post('/v1/images/large/replicate', { hostId: 'host-2' });
  const { view, seen } = await waitUntil('partial progress of the transfer', async () => {
    const current = (await inject({ method: 'GET', url: `/v1/workflows/${started.workflowId}` })).json<WorkflowView>();
    const sending = current.pendingActivities.find((a) => a.activityType === 'transferImage')?.heartbeatDetails;
    return sending && sending.logicalBytes > 0 && sending.logicalBytes < sending.totalBytes
      ? { view: current, seen: sending }
      : undefined;
  });
  assert.equal(seen.phase, 'sending');
  assert.equal(seen.totalBytes, 48 * MiB);
  assert.ok(view.progress?.link?.mode, 'the progress query names the link mode');

  const cancel = await inject({ method: 'POST', url: `/v1/workflows/${started.workflowId}/cancel` });
  assert.ok([200, 202].includes(cancel.statusCode), cancel.body);
  await assert.rejects(client.workflow.getHandle(started.workflowId).result());
  assert.equal((await client.workflow.getHandle(started.workflowId).describe()).status.name, 'CANCELLED');

  const image = (await inject({ method: 'GET', url: '/v1/images/large' })).json<ImageView>();
  const replica = image.replicas.find((r) => r.hostId === 'host-2');
  assert.deepEqual([replica?.state, replica?.error], ['failed', 'cancelled']);
  assert.equal(existsSync(libraryPath('host-2', 'large')), false);
  const leftovers = (await readdir(path.dirname(libraryPath('host-2', 'large')))).filter((f) => f.startsWith('large'));
  assert.deepEqual(leftovers, [], 'no partial file or journal is left on the target');
});

test('the CLI follows a replication with byte counts, lists images and probes, and refuses bad usage in one line', async () => {
  // 48 MiB at the agents' rate limit take seconds, so --wait prints progress before the end.
  await writeImage({ hostId: 'host-1', imageId: 'cli-large', data: randomBytes(48 * MiB), sizeBytes: 48 * MiB });
  await register('cli-large');
  await writeImage({ hostId: 'host-1', imageId: 'cli-small', data: randomBytes(MiB), sizeBytes: 2 * MiB });
  await register('cli-small');
  const api = await built.app.listen({ host: '127.0.0.1', port: 0 });
  process.env.NOVACRON_API_TOKEN = operatorToken;
  const lines: string[] = [];
  const out = (line: string) => lines.push(line);

  assert.equal(await runCli(['image', 'replicate', 'cli-large', '--to', 'host-2', '--wait', '--api', api], out), 0);
  assert.match(lines.join('\n'), /sending [\d.]+ MiB of 48\.0 MiB \(\d+%\), [\d.]+ MiB on the wire/);
  assert.equal(lines.at(-1), 'COMPLETED');

  lines.length = 0;
  assert.equal(await runCli(['image', 'list', '--api', api], out), 0);
  assert.match(lines.join('\n'), /^cli-large\s+raw\s+48\.0 MiB\s+[0-9a-f]{12}\s+on host-1, host-2$/m);
  assert.match(lines.join('\n'), /^cli-small\s+raw\s+2\.0 MiB\s+[0-9a-f]{12}\s+on host-1$/m);

  lines.length = 0;
  assert.equal(await runCli(['link', 'list', '--from', 'host-1', '--api', api], out), 0);
  const stored = await db.pool.query("SELECT 1 FROM link_probes WHERE source_host_id = 'host-1'");
  assert.equal(lines.length, stored.rowCount, `one line per stored probe:\n${lines.join('\n')}`);
  assert.match(lines[0]!, /host-1 -> host-2 {2}rtt [\d.]+ ms {2}\d+ Mbit\/s {2}(datacenter|hybrid|internet)$/);

  await assert.rejects(runCli(['image', 'replicate', 'base', '--api', api], out), /needs --to H/);
  await assert.rejects(
    runCli(['image', 'replicate', 'none', '--to', 'host-2', '--api', api], out),
    /404: image none does not exist/,
  );
});

test('the target agent killed mid-transfer comes back and the replication resumes from its journal', async () => {
  const data = randomBytes(48 * MiB);
  await writeImage({ hostId: 'host-1', imageId: 'resumable', data, sizeBytes: 48 * MiB });
  const image = await register('resumable');
  const started = await post('/v1/images/resumable/replicate', { hostId: 'host-2' });
  // Past the receiver's first journal flush (1 s), so the restarted agent has something to resume from.
  await waitUntil('20 MiB of the transfer to be sent', async () => {
    const view = (await inject({ method: 'GET', url: `/v1/workflows/${started.workflowId}` })).json<WorkflowView>();
    const beat = view.pendingActivities.find((a) => a.activityType === 'transferImage')?.heartbeatDetails;
    return beat !== undefined && beat.logicalBytes > 20 * MiB;
  });
  const target = agents[1]!;
  target.child.kill('SIGKILL');
  await target.exited;
  const hypervisor = hypervisors.hosts.find((h) => h.hostId === 'host-2')!;
  agents[1] = startAgentProcess({
    hypervisor,
    databaseUrl: db.url,
    imageRoot: imageRoots['host-2']!,
    env: { NOVACRON_DWCP_TRANSPORT_RATE_LIMIT_MBPS: String(RATE_LIMIT_MBPS) },
  });

  const result = (await client.workflow.getHandle(started.workflowId).result()) as ReplicateImageResult;
  assert.equal(await sha256Of(libraryPath('host-2', 'resumable')), image.sha256);
  assert.ok(result.transfer!.chunks.resumed > 0, `nothing resumed: ${JSON.stringify(result.transfer!.chunks)}`);
  assert.ok(result.transfer!.attempts > 1, 'the sender reconnected');
});
