/**
 * A fleet on real libvirt: harness hypervisors with a host agent process on each, a control worker, the API (inject)
 * and a Temporal client, with the operator's view of it through the API. The VM lifecycle integration test and the
 * fleet benchmark (bench/fleet) run on this one set-up, so what the benchmark times is what the test checks. Its
 * hosts all mount one storage pool, `shared` (a scratch directory), as `npm start`'s local hosts do.
 *
 * With `network: true` each harness host has a network namespace, address and link of its own, and its agent runs
 * inside that namespace with the host's address as its own: what the agent sends a peer (the migration plan's link
 * probe between DWCP endpoints) crosses the same capped link as the migration. The agents reach PostgreSQL and
 * Temporal, which listen on 127.0.0.1, through forwarders on the harness bridge's address.
 */
import { Connection, Client } from '@temporalio/client';
import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import assert from 'node:assert/strict';
import path from 'node:path';
import type { Pool } from 'pg';
import pino from 'pino';
import { buildApp, type BuiltApp } from '../../api/app';
import type { NovacronConfig } from '../../config/schema';
import { LibvirtConnection } from '../../native/libvirt';
import {
  assertHypervisorBinaries,
  startLocalHypervisors,
  type LocalHypervisor,
  type LocalHypervisors,
} from '../../native/libvirt/harness';
import { createMetrics } from '../../observability/metrics';
import { startControlWorker, type ControlWorkerHandle } from '../../workers/control-worker';
import { startEntryInNetns } from './netns-entry';
import { isolatedEnv, startEntry, type ChildHandle } from './processes';
import { scratchDir as testScratchDir, testTemporalAddress } from './services';
import { forwardTcp, parseHostPort, type TcpForward } from './tcp-forward';
import { bearer, mintToken } from './tokens';

/** Short enough that a killed agent's host goes down within seconds. */
export const TEST_FLEET_ENV = {
  NOVACRON_DWCP_CONSENSUS_LEASE_TTL_SECONDS: '3',
  NOVACRON_FLEET_HEARTBEAT_INTERVAL_MS: '500',
  NOVACRON_FLEET_MONITOR_INTERVAL_MS: '250',
  NOVACRON_FLEET_STALENESS_BOUND_MS_DATACENTER: '4000',
  // The default 3 s margin would not fit in a 3 s lease: agents stop their guests 1 s before theirs could expire.
  NOVACRON_FAILOVER_SELF_FENCE_MARGIN_MS: '1000',
  // Off as on the control side (TEST_FLEET_OVERRIDES): these agents' guests stay when the agent is killed.
  NOVACRON_FAILOVER_ENABLED: 'false',
};

/** The same settings as config overrides, for in-process control workers. */
export const TEST_FLEET_OVERRIDES = {
  dwcp: { consensus: { leaseTtlSeconds: 3 } },
  fleet: {
    heartbeatIntervalMs: 500,
    monitorIntervalMs: 250,
    stalenessBoundMs: { datacenter: 4000 },
    // Harness hosts each report this machine's 2 CPUs; 50 one-vCPU guests on 3 of them need a deep overcommit.
    cpuOvercommit: 32,
  },
  // Tests that kill agents and start them again expect their hosts back: only the failover tests turn it on.
  failover: { enabled: false, selfFenceMarginMs: 1000 },
};

/** One development CA per process, so every agent it starts trusts the others' DWCP certificates. */
const pkiDirs = new Map<(prefix: string) => string, string>();
function sharedPkiDir(scratchDir: (prefix: string) => string): string {
  if (!pkiDirs.has(scratchDir)) pkiDirs.set(scratchDir, scratchDir('pki'));
  return pkiDirs.get(scratchDir)!;
}

export const FLEET_SHARED_POOL = 'shared';

export function startAgentProcess(input: {
  hypervisor: LocalHypervisor;
  databaseUrl: string;
  imageRoot: string;
  /** Pools the agent mounts besides its image root, by name. */
  storagePools?: Record<string, string>;
  env?: Record<string, string>;
  /** Default: the services `npm test` started, and its scratch directory. */
  temporalAddress?: string;
  scratchDir?: (prefix: string) => string;
  /**
   * Runs the agent inside the hypervisor's network namespace (it must have one), with its address as the agent's:
   * the database and Temporal addresses must then be ones that namespace reaches.
   */
  inNetns?: boolean;
}): ChildHandle {
  const scratchDir = input.scratchDir ?? testScratchDir;
  const { netns } = input.hypervisor;
  if (input.inNetns && !netns)
    throw new Error(`${input.hypervisor.hostId} has no network namespace to run its agent in`);
  const env = isolatedEnv({
    ...TEST_FLEET_ENV,
    DATABASE_URL: input.databaseUrl,
    TEMPORAL_ADDRESS: input.temporalAddress ?? testTemporalAddress(),
    NOVACRON_DATA_DIR: scratchDir('agent-data'),
    NOVACRON_LOG_LEVEL: 'warn',
    NOVACRON_AGENT_HOST_ID: input.hypervisor.hostId,
    NOVACRON_AGENT_LIBVIRT_URI: input.hypervisor.uri,
    NOVACRON_AGENT_IMAGE_ROOT: input.imageRoot,
    NOVACRON_AGENT_DWCP_PORT: '0',
    NOVACRON_AGENT_METRICS_PORT: '0',
    NOVACRON_AGENT_PKI_DIR: sharedPkiDir(scratchDir),
    NOVACRON_AGENT_STORAGE_POOLS: JSON.stringify(input.storagePools ?? {}),
    NOVACRON_AGENT_MIGRATION_ADDRESS: input.hypervisor.migrationAddress,
    ...(input.hypervisor.peerUri ? { NOVACRON_AGENT_PEER_LIBVIRT_URI: input.hypervisor.peerUri } : {}),
    ...(input.inNetns ? { NOVACRON_AGENT_ADDRESS: input.hypervisor.migrationAddress } : {}),
    ...input.env,
  });
  return input.inNetns && netns
    ? startEntryInNetns({ netns, entry: 'workers/host-agent.ts', env })
    : startEntry('workers/host-agent.ts', env);
}

/** SIGTERM to every agent still running, then waits for all of them to exit. */
export async function stopAgentProcesses(agents: Iterable<ChildHandle>): Promise<void> {
  const all = [...agents];
  for (const agent of all) {
    if (agent.child.exitCode === null && agent.child.signalCode === null) agent.child.kill('SIGTERM');
  }
  await Promise.all(all.map((agent) => agent.exited));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until each host is registered with a live lease and has reported its inventory. */
export async function waitForHostsUp(pool: Pool, hostIds: string[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await pool.query<{ id: string }>(
      `SELECT h.id FROM hosts h JOIN leases l ON l.resource = 'host:' || h.id
       JOIN inventory_reports r ON r.host_id = h.id
       WHERE h.state = 'up' AND l.expires_at > now() AND h.id = ANY($1)`,
      [hostIds],
    );
    if (result.rowCount === hostIds.length) return;
    if (Date.now() > deadline) {
      throw new Error(`hosts not up after ${timeoutMs} ms: up ${result.rows.map((r) => r.id).join(', ') || 'none'}`);
    }
    await sleep(200);
  }
}

export interface HostView {
  state: string;
  lease: { fencingToken: number; alive: boolean };
}

export interface DriftView {
  vmId?: string;
  hostId: string;
  domainName: string;
  kind: string;
  expected?: string;
  actual?: string;
  action: string;
  detectedAt: string;
}

interface WorkflowView {
  status: string;
  result?: { hostId: string; state: string; steps: Array<{ name: string; status: string; durationMs?: number }> };
  failure?: { message: string };
}
export type WorkflowOutcome = Required<WorkflowView>['result'];

export interface VmView {
  state: string;
  hostId?: string;
  ownerToken?: number;
}

export interface Started {
  workflowId: string;
  vmId: string;
}

export interface Fleet {
  config: NovacronConfig;
  pool: Pool;
  hostIds: string[];
  hypervisors: LocalHypervisors;
  libvirt: Record<string, LibvirtConnection>;
  imageRoots: Record<string, string>;
  /** The pools every agent of the fleet mounts: `shared`. */
  storagePools: Record<string, string>;
  agents: Record<string, ChildHandle>;
  client: Client;
  adminToken: string;
  startAgent(hostId: string): ChildHandle;
  /** An API request, as the operator unless another token is given. */
  inject(options: InjectOptions, token?: string): Promise<LightMyRequestResponse>;
  createVm(body: Record<string, unknown>): Promise<Started>;
  operate(vmId: string, operation: 'start' | 'stop' | 'reboot' | 'delete', payload?: object): Promise<Started>;
  waitForWorkflow(workflowId: string, timeoutMs?: number): Promise<WorkflowOutcome>;
  waitForAll(workflowIds: string[], timeoutMs: number): Promise<void>;
  getHost(hostId: string): Promise<HostView>;
  allDomains(): Promise<Array<{ hostId: string; name: string; uuid: string; state: string }>>;
  /** The first open drift matching, and how long after `since` it was detected. */
  waitForDrift(match: (d: DriftView) => boolean, since: number, timeoutMs: number): Promise<FoundDrift>;
  /** SIGKILLs a host's agent and returns how long after the kill the monitor marked the host down. */
  killAgentUntilDown(hostId: string, timeoutMs: number): Promise<number>;
  stop(): Promise<void>;
}

export interface FoundDrift {
  drift: DriftView;
  latencyMs: number;
}

export interface StartFleetInput {
  /** The control plane's config: its database, Temporal address and task queue, and the fleet settings. */
  config: NovacronConfig;
  pool: Pool;
  hostIds: string[];
  scratchDir: (prefix: string) => string;
  hostsUpTimeoutMs?: number;
  /** Hosts with network namespaces and links of their own (harness `network`), each agent inside its host's. */
  network?: boolean;
  /** Config every agent gets on top of TEST_FLEET_ENV, as NOVACRON_* variables. */
  agentEnv?: Record<string, string>;
}

/** The database URL and Temporal address as a networked harness's hosts reach them: forwarders on its bridge. */
async function forwardServices(input: {
  bridgeAddress: string;
  databaseUrl: string;
  temporalAddress: string;
}): Promise<{ databaseUrl: string; temporalAddress: string; forwards: TcpForward[] }> {
  const url = new URL(input.databaseUrl);
  const database = await forwardTcp({
    listenHost: input.bridgeAddress,
    target: { host: url.hostname, port: Number(url.port || 5432) },
  });
  const temporal = await forwardTcp({
    listenHost: input.bridgeAddress,
    target: parseHostPort(input.temporalAddress),
  }).catch(async (err: unknown) => {
    await database.close();
    throw err;
  });
  url.hostname = database.host;
  url.port = String(database.port);
  return { databaseUrl: url.toString(), temporalAddress: temporal.address, forwards: [database, temporal] };
}

export async function startFleet(input: StartFleetInput): Promise<Fleet> {
  assertHypervisorBinaries();
  const { config, pool, hostIds } = input;
  const { databaseUrl } = config.storage;
  const temporalAddress = config.temporal.address;
  if (!databaseUrl || !temporalAddress) {
    throw new Error(
      'startFleet: the config must name its database (storage.databaseUrl) and Temporal (temporal.address)',
    );
  }
  const agents: Record<string, ChildHandle> = {};
  const forwards: TcpForward[] = [];
  let hypervisors: LocalHypervisors | undefined;
  let connection: Connection | undefined;
  let worker: ControlWorkerHandle | undefined;
  let built: BuiltApp | undefined;

  const stop = async (): Promise<void> => {
    await stopAgentProcesses(Object.values(agents));
    for (const forward of forwards) await forward.close();
    await built?.close();
    await worker?.shutdown();
    await connection?.close();
    await hypervisors?.stop();
  };

  try {
    const operatorToken = await mintToken(pool, { roles: ['operator'] });
    const adminToken = await mintToken(pool, { roles: ['admin'] });
    hypervisors = await startLocalHypervisors({
      count: hostIds.length,
      baseDir: input.scratchDir('hv'),
      ...(input.network ? { network: true } : {}),
    });
    const started = hypervisors;
    const reached = started.network
      ? await forwardServices({ bridgeAddress: started.network.address, databaseUrl, temporalAddress })
      : { databaseUrl, temporalAddress, forwards: [] };
    forwards.push(...reached.forwards);
    const libvirt = Object.fromEntries(started.hosts.map((h) => [h.hostId, new LibvirtConnection({ uri: h.uri })]));
    const images = input.scratchDir('images');
    const imageRoots = Object.fromEntries(hostIds.map((id) => [id, path.join(images, id)]));
    const storagePools = { [FLEET_SHARED_POOL]: input.scratchDir('pool') };
    connection = await Connection.connect({ address: temporalAddress });
    const client = new Client({ connection });
    worker = await startControlWorker({ config, logger: pino({ level: 'silent' }) });
    built = await buildApp({
      config,
      temporal: client,
      pool,
      metrics: createMetrics({ service: 'fleet' }),
      // Errors only: a 500 is diagnosable from the output.
      logger: pino({ level: 'error' }),
    });
    const app = built.app;

    const startAgent = (hostId: string): ChildHandle => {
      const hypervisor = started.hosts.find((h) => h.hostId === hostId);
      if (!hypervisor) throw new Error(`no harness host ${hostId}`);
      agents[hostId] = startAgentProcess({
        hypervisor,
        databaseUrl: reached.databaseUrl,
        imageRoot: imageRoots[hostId]!,
        storagePools,
        temporalAddress: reached.temporalAddress,
        scratchDir: input.scratchDir,
        inNetns: started.network !== undefined,
        ...(input.agentEnv ? { env: input.agentEnv } : {}),
      });
      return agents[hostId];
    };
    const inject = (options: InjectOptions, token = operatorToken) =>
      app.inject({ ...options, headers: { ...bearer(token), ...options.headers } });

    const fleet: Fleet = {
      config,
      pool,
      hostIds,
      hypervisors: started,
      libvirt,
      imageRoots,
      storagePools,
      agents,
      client,
      adminToken,
      startAgent,
      inject,
      stop,
      async createVm(body) {
        const response = await inject({ method: 'POST', url: '/v1/vms', payload: body });
        assert.equal(response.statusCode, 202, response.body);
        return response.json<Started>();
      },
      async operate(vmId, operation, payload = {}) {
        const response = await inject(
          operation === 'delete'
            ? { method: 'DELETE', url: `/v1/vms/${vmId}` }
            : { method: 'POST', url: `/v1/vms/${vmId}/${operation}`, payload },
        );
        assert.equal(response.statusCode, 202, response.body);
        return response.json<Started>();
      },
      // Follows the workflow through the API, as an operator would.
      async waitForWorkflow(workflowId, timeoutMs = 120_000) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const response = await inject({ method: 'GET', url: `/v1/workflows/${workflowId}` });
          // A 5xx here is a transient Temporal error on a busy server; poll again.
          if (response.statusCode >= 500 && Date.now() < deadline) {
            await sleep(500);
            continue;
          }
          assert.equal(response.statusCode, 200, response.body);
          const body = response.json<WorkflowView>();
          if (body.status !== 'RUNNING') {
            assert.equal(body.status, 'COMPLETED', `${workflowId}: ${JSON.stringify(body.failure)}`);
            return body.result!;
          }
          if (Date.now() > deadline) throw new Error(`${workflowId} still running after ${timeoutMs} ms`);
          await sleep(200);
        }
      },
      // Polls describe() rather than holding one result() long poll per workflow open: under load the dev server
      // answers those with DEADLINE_EXCEEDED, which says nothing about the workflows.
      async waitForAll(workflowIds, timeoutMs) {
        const deadline = Date.now() + timeoutMs;
        const open = new Set(workflowIds);
        while (open.size > 0) {
          assert.ok(Date.now() < deadline, `${open.size} workflows still running after ${timeoutMs} ms`);
          for (const workflowId of [...open]) {
            // A busy dev server has transient answers (DEADLINE_EXCEEDED, a namespace cache miss): ask again.
            const description = await client.workflow
              .getHandle(workflowId)
              .describe()
              .catch(() => undefined);
            if (!description || description.status.name === 'RUNNING') continue;
            assert.equal(description.status.name, 'COMPLETED', workflowId);
            open.delete(workflowId);
          }
          await sleep(500);
        }
      },
      async getHost(hostId) {
        return (await inject({ method: 'GET', url: `/v1/hosts/${hostId}` })).json<HostView>();
      },
      async allDomains() {
        const lists = await Promise.all(
          hostIds.map(async (hostId) => (await libvirt[hostId]!.listAllDomains()).map((d) => ({ hostId, ...d }))),
        );
        return lists.flat();
      },
      async waitForDrift(match, since, timeoutMs) {
        for (;;) {
          const response = await inject({ method: 'GET', url: '/v1/drift?open=true' });
          const found = response.json<{ drift: DriftView[] }>().drift.find(match);
          if (found) return { drift: found, latencyMs: new Date(found.detectedAt).getTime() - since };
          if (Date.now() - since > timeoutMs) throw new Error(`no matching drift after ${timeoutMs} ms`);
          await sleep(50);
        }
      },
      async killAgentUntilDown(hostId, timeoutMs) {
        const agent = agents[hostId]!;
        const killedAt = Date.now();
        agent.child.kill('SIGKILL');
        assert.equal((await agent.exited).signal, 'SIGKILL');
        for (;;) {
          const host = await fleet.getHost(hostId);
          if (host.state === 'down') {
            assert.equal(host.lease.alive, false);
            return Date.now() - killedAt;
          }
          assert.ok(Date.now() - killedAt < timeoutMs, `${hostId} was not marked down within ${timeoutMs} ms`);
          await sleep(50);
        }
      },
    };
    for (const hostId of hostIds) startAgent(hostId);
    await waitForHostsUp(pool, hostIds, input.hostsUpTimeoutMs ?? 90_000);
    return fleet;
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
