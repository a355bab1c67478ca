/**
 * Set-up the live-migration fault and concurrency tests share: the test guest registered as an image on a fleet's
 * shared pool, guests booted from it, migrations requested through the API and their outcome whichever way they
 * end, and a fleet whose control worker is a child process that a test can SIGKILL and start again. startFleet runs
 * its control worker in the test's own process, which no test can kill, so this fleet is built from its parts: the
 * harness hypervisors, the agent processes and the API, with `workers/control-worker.ts` spawned beside them.
 */
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Pool } from 'pg';
import pino from 'pino';
import { vmConsoleLogPath } from '../../activities/storage-paths';
import { buildApp, type BuiltApp } from '../../api/app';
import type { NovacronConfig } from '../../config/schema';
import type { MigrationResult } from '../../domain/migration';
import { TESTGUEST_NAME } from '../../guest/build';
import { parseConsoleLog, testGuestOemStrings, type TestGuestWorkload } from '../../guest/workload';
import { LibvirtConnection } from '../../native/libvirt';
import { assertHypervisorBinaries, startLocalHypervisors, type LocalHypervisors } from '../../native/libvirt/harness';
import { createMetrics } from '../../observability/metrics';
import { FLEET_SHARED_POOL, startAgentProcess, stopAgentProcesses, waitForHostsUp, type Fleet } from './fleet';
import { isolatedEnv, startEntry, type ChildHandle } from './processes';
import { bearer, mintToken } from './tokens';
import { waitUntil } from './wait';

/** What the migration tests use of a fleet; startFleet's and startProcessFleet's both have it. */
export type MigrationFleet = Pick<
  Fleet,
  'config' | 'pool' | 'hostIds' | 'libvirt' | 'imageRoots' | 'client' | 'inject' | 'createVm' | 'waitForWorkflow'
>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export { registerTestGuest } from './test-guest-library';

export interface GuestSpec {
  name: string;
  hostId: string;
  memoryMib: number;
  workload: TestGuestWorkload;
}

/** Creates the guests at once, then waits until each prints `heartbeats` heartbeats in its host's console log. */
export async function startTestGuests(
  fleet: MigrationFleet,
  guests: GuestSpec[],
  input: { heartbeats: number; timeoutMs: number },
): Promise<string[]> {
  const started = await Promise.all(
    guests.map((g) =>
      fleet.createVm({
        name: g.name,
        vcpus: 1,
        memoryMib: g.memoryMib,
        image: TESTGUEST_NAME,
        storagePool: FLEET_SHARED_POOL,
        hostId: g.hostId,
        oemStrings: testGuestOemStrings(g.workload),
      }),
    ),
  );
  for (const s of started) await fleet.waitForWorkflow(s.workflowId, input.timeoutMs);
  await Promise.all(
    started.map((s, i) => heartbeatsOn(fleet, guests[i]!.hostId, s.vmId, input.heartbeats, input.timeoutMs)),
  );
  return started.map((s) => s.vmId);
}

/**
 * The counters in a host's own console log of the guest, once it shows at least `count` of them. A kernel panic in
 * the log fails at once, naming it: the guest will print nothing more.
 */
export async function heartbeatsOn(
  fleet: MigrationFleet,
  hostId: string,
  vmId: string,
  count: number,
  timeoutMs: number,
): Promise<number[]> {
  const log = vmConsoleLogPath({ imageRoot: fleet.imageRoots[hostId]!, vmId });
  const read = () => readFile(log, 'utf8').catch(() => '');
  const report = await waitUntil(
    `${count} heartbeats in ${log}`,
    async () => {
      const parsed = parseConsoleLog(await read());
      assert.equal(parsed.error, undefined, `the guest's workload refused to start: ${parsed.error}`);
      assert.equal(parsed.panic, undefined, `the guest's kernel on ${hostId}: ${parsed.panic}`);
      return parsed.heartbeats.length >= count ? parsed : undefined;
    },
    { timeoutMs, intervalMs: 250 },
  ).catch(async (err: unknown) => {
    // What the guest last printed says whether it hung, panicked or never wrote to this log.
    throw new Error(`${(err as Error).message}; the log ends: ${JSON.stringify((await read()).slice(-800))}`);
  });
  return report.heartbeats;
}

/** POST /v1/vms/:id/migrate, which must be accepted; returns the migration's workflow id. */
export async function requestMigration(fleet: MigrationFleet, vmId: string, body: object): Promise<string> {
  const response = await fleet.inject({ method: 'POST', url: `/v1/vms/${vmId}/migrate`, payload: body });
  assert.equal(response.statusCode, 202, response.body);
  return response.json<{ workflowId: string }>().workflowId;
}

/**
 * How a migration ended, completed or not: the result, or for a failed run the result its failure carries (the saga
 * puts it in the details). Polls describe() rather than holding one long poll open: a busy dev server answers those
 * with DEADLINE_EXCEEDED, which says nothing about the workflow.
 */
export async function migrationOutcome(
  client: Client,
  workflowId: string,
  timeoutMs: number,
): Promise<{ status: string; result: MigrationResult }> {
  const handle = client.workflow.getHandle(workflowId);
  const status = await waitUntil(
    `${workflowId} to end`,
    async () => {
      const description = await handle.describe().catch(() => undefined);
      return description && description.status.name !== 'RUNNING' ? description.status.name : undefined;
    },
    { timeoutMs, intervalMs: 500 },
  );
  try {
    return { status, result: (await handle.result()) as MigrationResult };
  } catch (err) {
    const cause = err instanceof WorkflowFailedError ? err.cause : undefined;
    const details = cause instanceof ApplicationFailure ? cause.details : undefined;
    const result = details?.[0] as MigrationResult | undefined;
    if (!result) throw err;
    return { status, result };
  }
}

/** Where the store and every host's libvirt have a VM. */
export async function whereVmIs(
  fleet: MigrationFleet,
  vmId: string,
): Promise<{ domains: string[]; store: { hostId: string | null; state: string; generation: number } }> {
  const lists = await Promise.all(
    fleet.hostIds.map(async (hostId) =>
      (await fleet.libvirt[hostId]!.listAllDomains()).filter((d) => d.uuid === vmId).map((d) => `${hostId}:${d.state}`),
    ),
  );
  const row = (
    await fleet.pool.query<{ host_id: string | null; state: string; owner_generation: string }>(
      'SELECT host_id, state, owner_generation FROM vms WHERE id = $1',
      [vmId],
    )
  ).rows[0]!;
  return {
    domains: lists.flat(),
    store: { hostId: row.host_id, state: row.state, generation: Number(row.owner_generation) },
  };
}

export interface ProcessFleet extends MigrationFleet {
  agents: Record<string, ChildHandle>;
  /** Starts (or starts again) a host's agent process. */
  startAgent(hostId: string): ChildHandle;
  /** The control worker process now running, if any. */
  controlWorker(): ChildHandle | undefined;
  /** Starts a control worker process and waits until it polls. */
  startControlWorker(): Promise<ChildHandle>;
  /** SIGKILLs a process of the fleet and waits for it to have exited. */
  kill(child: ChildHandle): Promise<void>;
  stop(): Promise<void>;
}

export interface StartProcessFleetInput {
  /** The control plane's config: the API's, and written to a file for the control worker process to load. */
  config: NovacronConfig;
  pool: Pool;
  hostIds: string[];
  scratchDir: (prefix: string) => string;
  /** Config every agent gets on top of TEST_FLEET_ENV, as NOVACRON_* variables. */
  agentEnv?: Record<string, string>;
}

// The first start of a worker may bundle the workflows (webpack) on a loaded 2-core machine.
const WORKER_READY_MS = 180_000;

export async function startProcessFleet(input: StartProcessFleetInput): Promise<ProcessFleet> {
  assertHypervisorBinaries();
  const { config, pool, hostIds } = input;
  const databaseUrl = config.storage.databaseUrl!;
  const temporalAddress = config.temporal.address!;
  const agents: Record<string, ChildHandle> = {};
  let worker: ChildHandle | undefined;
  let hypervisors: LocalHypervisors | undefined;
  let connection: Connection | undefined;
  let built: BuiltApp | undefined;

  const kill = async (child: ChildHandle): Promise<void> => {
    if (child.child.exitCode === null && child.child.signalCode === null) child.child.kill('SIGKILL');
    await child.exited;
  };
  const stop = async (): Promise<void> => {
    await stopAgentProcesses(Object.values(agents));
    await built?.close();
    if (worker && worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill('SIGTERM');
    await worker?.exited;
    await connection?.close();
    await hypervisors?.stop();
  };

  try {
    const operatorToken = await mintToken(pool, { roles: ['operator'] });
    hypervisors = await startLocalHypervisors({ count: hostIds.length, baseDir: input.scratchDir('hv') });
    const started = hypervisors;
    const libvirt = Object.fromEntries(started.hosts.map((h) => [h.hostId, new LibvirtConnection({ uri: h.uri })]));
    const images = input.scratchDir('images');
    const imageRoots = Object.fromEntries(hostIds.map((id) => [id, path.join(images, id)]));
    const storagePools = { [FLEET_SHARED_POOL]: input.scratchDir('pool') };
    connection = await Connection.connect({ address: temporalAddress });
    const client = new Client({ connection });

    // The worker loads the very config the API runs with; info level, so that it says when it polls.
    const configFile = path.join(input.scratchDir('control-config'), 'novacron.json');
    await writeFile(configFile, JSON.stringify({ ...config, system: { ...config.system, logLevel: 'info' } }));
    const startControlWorker = async (): Promise<ChildHandle> => {
      assert.ok(!worker || worker.child.exitCode !== null || worker.child.signalCode !== null, 'one worker at once');
      worker = startEntry('workers/control-worker.ts', isolatedEnv({ NOVACRON_CONFIG: configFile }));
      await worker.waitForOutput(/control worker polling/, WORKER_READY_MS);
      return worker;
    };
    await startControlWorker();

    built = await buildApp({
      config,
      temporal: client,
      pool,
      metrics: createMetrics({ service: 'fleet' }),
      logger: pino({ level: 'error' }),
    });
    const app = built.app;
    const inject = (options: InjectOptions): Promise<LightMyRequestResponse> =>
      app.inject({ ...options, headers: { ...bearer(operatorToken), ...options.headers } });

    const startAgent = (hostId: string): ChildHandle => {
      const hypervisor = started.hosts.find((h) => h.hostId === hostId);
      if (!hypervisor) throw new Error(`no harness host ${hostId}`);
      agents[hostId] = startAgentProcess({
        hypervisor,
        databaseUrl,
        imageRoot: imageRoots[hostId]!,
        storagePools,
        temporalAddress,
        scratchDir: input.scratchDir,
        ...(input.agentEnv ? { env: input.agentEnv } : {}),
      });
      return agents[hostId];
    };
    for (const hostId of hostIds) startAgent(hostId);
    await waitForHostsUp(pool, hostIds, 90_000);

    return {
      config,
      pool,
      hostIds,
      libvirt,
      imageRoots,
      client,
      agents,
      inject,
      startAgent,
      controlWorker: () => worker,
      startControlWorker,
      kill,
      stop,
      async createVm(body) {
        const response = await inject({ method: 'POST', url: '/v1/vms', payload: body });
        assert.equal(response.statusCode, 202, response.body);
        return response.json<{ workflowId: string; vmId: string }>();
      },
      async waitForWorkflow(workflowId, timeoutMs = 120_000) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const response = await inject({ method: 'GET', url: `/v1/workflows/${workflowId}` });
          if (response.statusCode >= 500 && Date.now() < deadline) {
            await sleep(500);
            continue;
          }
          assert.equal(response.statusCode, 200, response.body);
          const body = response.json<{ status: string; result?: unknown; failure?: unknown }>();
          if (body.status !== 'RUNNING') {
            assert.equal(body.status, 'COMPLETED', `${workflowId}: ${JSON.stringify(body.failure)}`);
            return body.result as Awaited<ReturnType<Fleet['waitForWorkflow']>>;
          }
          if (Date.now() > deadline) throw new Error(`${workflowId} still running after ${timeoutMs} ms`);
          await sleep(200);
        }
      },
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
