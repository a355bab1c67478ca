/**
 * `npm start` / `novacron up`: the whole stack on one machine. PostgreSQL and Temporal are embedded unless
 * DATABASE_URL / TEMPORAL_ADDRESS point elsewhere; the control worker and the API run as supervised children;
 * a cluster init runs at every start, and the URLs are printed once /ready answers 200. Once the local hosts are
 * up, the test guest is offered in the image library (test-guest-image.ts).
 */
import { Client, Connection } from '@temporalio/client';
import path from 'node:path';
import { ConfigError, loadConfig } from '../config/load-config';
import type { NovacronConfig } from '../config/schema';
import { clusterInitInput } from '../domain/cluster-init';
import { startTemporalDevServer, type TemporalDevServer } from '../native/temporal';
import { builtTemporalBinary } from '../native/temporal/build';
import { createLogger } from '../observability/logger';
import { startEmbeddedPostgres, type EmbeddedPostgresHandle } from '../store/embedded-postgres';
import { createInitialAdminToken } from '../store/api-tokens';
import { migrate } from '../store/migrate';
import { createPool, redactDatabaseUrl } from '../store/pool';
import { LOCAL_SHARED_POOL, startLocalHostAgents } from './host-agent-local';
import { systemProbes, stackContext } from './prerequisite-probes';
import { checkPrerequisites, formatCheck, PREREQUISITES, type Prerequisite } from './prerequisites';
import { superviseService, type SupervisedService } from './supervisor';
import { temporalTarget } from './temporal-clients';
import { offerTestGuest } from './test-guest-image';

/** Without these the stack runs, with no local hosts: a control plane needs no hypervisor on its own machine. */
const LOCAL_HOST_PREREQUISITES = new Set<Prerequisite>(['hypervisors', 'openssl']);
const TEST_ONLY_PREREQUISITES = new Set<Prerequisite>(['network', 'guest']);

export interface StackHandle {
  apiUrl: string;
  temporalAddress: string;
  webUiUrl?: string;
  databaseUrl: string;
  initWorkflowId: string;
  readyMs: number;
  stop(): Promise<void>;
}

async function waitFor(what: string, timeoutMs: number, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  while (Date.now() < deadline) {
    try {
      if (await probe()) return;
    } catch (err) {
      lastError = err instanceof Error ? err.message : String(err);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (${lastError})` : ''}`);
}

export async function startStack(input: {
  config: NovacronConfig;
  env?: NodeJS.ProcessEnv;
  print?: (line: string) => void;
  /** False when the prerequisite checks found this machine cannot run them (they printed why). Default true. */
  localHypervisors?: boolean;
  /** Offer the test guest in the image library once local hosts are up. Default true. */
  testGuest?: boolean;
}): Promise<StackHandle> {
  const { config } = input;
  const print = input.print ?? ((line: string) => process.stdout.write(`${line}\n`));
  const logger = createLogger({ service: 'stack', config });
  const startedClock = Date.now();
  // Processes that use the servers stop first, then the servers in reverse order of start: a worker must never
  // outlive the Temporal server it polls (it would retry against a closed port until killed).
  const stopServices: Array<() => Promise<void>> = [];
  const cleanups: Array<() => Promise<void>> = [];
  let temporalStarting: Promise<TemporalDevServer> | undefined;
  let localHostsStarting: Promise<{ hostIds: string[] }> | undefined;
  let offeringGuest: Promise<void> | undefined;
  const guestOffer = new AbortController();
  const stop = async () => {
    // Anything still starting registers its own stop when it is up; wait for that first.
    await Promise.allSettled([temporalStarting, localHostsStarting]);
    // A build already running finishes (its tools are not interrupted halfway); nothing after it starts.
    guestOffer.abort();
    await offeringGuest;
    const report = (err: unknown) => logger.error({ err }, 'stop failed');
    await Promise.all(stopServices.splice(0).map((stopService) => stopService().catch(report)));
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(report);
  };

  // Temporal starts while PostgreSQL does. With the server already built, the worker and API start as soon as
  // PostgreSQL is up: their module loading overlaps the server's few seconds of start, and they wait for it
  // (connectWithRetry). A first start builds the server for minutes, longer than they wait, so they start after.
  const mustBuildTemporal = !config.temporal.address && builtTemporalBinary() === undefined;
  if (!config.temporal.address) {
    if (mustBuildTemporal)
      print('the Temporal server is built first; the control worker and the API start once it is up');
    print(`starting the embedded Temporal server on 127.0.0.1:${config.temporal.embedded.port}`);
    temporalStarting = startTemporalDevServer({
      port: config.temporal.embedded.port,
      uiPort: config.temporal.embedded.uiPort,
      dbFile: path.join(config.system.dataDir, 'temporal', 'temporal.db'),
      namespaces: [config.temporal.namespace],
      buildLog: print,
      onLog: (line: string) => logger.debug({ component: 'temporal' }, line),
    }).then((server) => {
      cleanups.push(() => server.stop());
      return server;
    });
    // Observed below; this only keeps an early PostgreSQL failure from leaving the rejection unhandled.
    temporalStarting.catch(() => undefined);
  }

  try {
    let databaseUrl = config.storage.databaseUrl;
    if (!databaseUrl) {
      print(
        `starting embedded PostgreSQL on 127.0.0.1:${config.storage.embedded.port} (data in ${config.system.dataDir}/postgres)`,
      );
      const pg: EmbeddedPostgresHandle = await startEmbeddedPostgres({
        dataDir: config.system.dataDir,
        port: config.storage.embedded.port,
        onLog: (line) => logger.debug({ component: 'postgres' }, line),
      });
      cleanups.push(() => pg.stop());
      databaseUrl = pg.databaseUrl;
    }
    const pool = createPool({ databaseUrl, applicationName: 'novacron-stack', max: 2 });
    cleanups.push(() => pool.end());
    const migrated = await migrate(pool);
    if (migrated.applied.length > 0)
      print(`applied migrations ${migrated.applied.join(', ')} (schema version ${migrated.version})`);
    // Printed, never logged: the one moment the secret exists outside its owner's hands is on this terminal.
    const initialToken = await createInitialAdminToken(pool);
    if (initialToken) {
      print('');
      print('Created the first admin API token. It is shown only this once; store it now:');
      print(`  NOVACRON_API_TOKEN=${initialToken}`);
      print('');
    }

    const announcedAddress =
      config.temporal.address ??
      (config.temporal.embedded.port !== 0 ? `127.0.0.1:${config.temporal.embedded.port}` : undefined);
    // Named before the API starts: its /ready follows this start's own boot, not an earlier one or a manual init.
    const initWorkflowId = `cluster-init-boot-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    const launchServices = (temporalAddress: string): SupervisedService[] => {
      const childEnv: NodeJS.ProcessEnv = {
        ...(input.env ?? process.env),
        DATABASE_URL: databaseUrl,
        TEMPORAL_ADDRESS: temporalAddress,
        NOVACRON_BOOT_WORKFLOW_ID: initWorkflowId,
      };
      const services = [
        superviseService({ name: 'control-worker', entry: 'workers/control-worker.ts', env: childEnv }, logger),
        superviseService({ name: 'api', entry: 'api/server.ts', env: childEnv }, logger),
      ];
      stopServices.push(...services.map((service) => () => service.stop()));
      return services;
    };
    const launchEarly = announcedAddress !== undefined && !mustBuildTemporal;
    if (launchEarly) launchServices(announcedAddress);

    const embedded = await temporalStarting;
    const temporalAddress = embedded?.address ?? announcedAddress!;
    const webUiUrl = embedded?.uiUrl;
    const readyClock = Date.now();
    if (!launchEarly) launchServices(temporalAddress);
    // Local hypervisors are not part of readiness: a libvirtd's first start probes QEMU for tens of seconds, so
    // hosts join in the background and register themselves when their agents are up.
    if (input.localHypervisors !== false) {
      localHostsStarting = startLocalHostAgents({
        config,
        env: { ...(input.env ?? process.env), DATABASE_URL: databaseUrl, TEMPORAL_ADDRESS: temporalAddress },
        logger,
        print,
      }).then((localHosts) => {
        stopServices.push(() => localHosts.stop());
        if (localHosts.hostIds.length > 0)
          print(`local hypervisors up: ${localHosts.hostIds.join(', ')} (see /v1/hosts)`);
        return localHosts;
      });
      localHostsStarting.catch(() => undefined);
    }

    const effective: NovacronConfig = { ...config, temporal: { ...config.temporal, address: temporalAddress } };
    const target = temporalTarget(effective);
    const connection = await Connection.connect({
      address: target.address,
      ...(target.tls ? { tls: target.tls } : {}),
    });
    cleanups.push(() => connection.close());
    const client = new Client({ connection, namespace: target.namespace });
    const init = await client.workflow.start('initializeCluster', {
      workflowId: initWorkflowId,
      taskQueue: config.temporal.taskQueue,
      args: [clusterInitInput(config)],
    });
    // This start's own boot must finish; an earlier boot's record must not make us report ready.
    await init.result();

    const scheme = config.api.tls ? 'https' : 'http';
    const apiUrl = `${scheme}://${config.api.host}:${config.api.port}`;
    if (localHostsStarting && input.testGuest !== false) {
      offeringGuest = localHostsStarting.then(
        async ({ hostIds }) => {
          const [hostId] = hostIds;
          if (hostId === undefined || guestOffer.signal.aborted) return;
          await offerTestGuest({
            config,
            pool,
            client,
            hostId,
            storagePool: LOCAL_SHARED_POOL,
            apiUrl,
            print,
            signal: guestOffer.signal,
          });
        },
        () => undefined,
      );
    }
    await waitFor('the API to report ready', 180_000, async () => {
      const response = await fetch(`${apiUrl}/ready`);
      return response.status === 200;
    });
    const readyMs = Date.now() - readyClock;

    print('');
    print(`NovaCron is ready (${readyMs} ms after Temporal was up, ${Date.now() - startedClock} ms in all)`);
    print(`  API          ${apiUrl}   (OpenAPI: ${apiUrl}/openapi.json, metrics: ${apiUrl}/metrics)`);
    if (webUiUrl) print(`  Temporal UI  ${webUiUrl}/namespaces/${config.temporal.namespace}/workflows`);
    print(`  Temporal     ${temporalAddress} (namespace ${config.temporal.namespace})`);
    print(`  PostgreSQL   ${redactDatabaseUrl(databaseUrl)}`);
    print(`  Boot report  ${apiUrl}/v1/workflows/${initWorkflowId}`);
    print('');

    return { apiUrl, temporalAddress, ...(webUiUrl ? { webUiUrl } : {}), databaseUrl, initWorkflowId, readyMs, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Runs the stack in the foreground until SIGINT/SIGTERM; shared by `npm start` and `novacron up`. */
export async function runStackFromCli(configFile?: string): Promise<void> {
  let config: NovacronConfig;
  try {
    config = loadConfig(configFile ? { file: configFile } : {});
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`novacron: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  // Checked before anything starts: a missing program is one line with its fix, not minutes of failing services.
  // The test guest's build tools and the harness's host networks are for the tests (`novacron doctor` lists them):
  // the stack offers the test guest only where its build can run, and its local hosts share the root namespace.
  const results = await checkPrerequisites(
    systemProbes(),
    stackContext(config),
    PREREQUISITES.filter((prerequisite) => !TEST_ONLY_PREREQUISITES.has(prerequisite)),
  );
  const failed = results.filter((result) => !result.ok);
  for (const result of failed) process.stderr.write(`${formatCheck(result)}\n`);
  const hard = failed.filter((result) => !LOCAL_HOST_PREREQUISITES.has(result.prerequisite));
  if (hard.length > 0) {
    process.stderr.write('novacron: not started; fix the lines above (`novacron doctor` checks them again)\n');
    process.exit(1);
  }
  const localHypervisors = failed.length === 0;
  if (!localHypervisors)
    process.stderr.write(
      'novacron: starting without local hypervisors; fix the lines above for two local hosts, ' +
        'or add hosts: see README "Adding a hypervisor host"\n',
    );
  const stack = await startStack({ config, localHypervisors });
  let stopping = false;
  await new Promise<void>((resolve) => {
    const shutdown = () => {
      if (stopping) return;
      stopping = true;
      process.stdout.write('stopping NovaCron...\n');
      stack.stop().then(resolve, resolve);
    };
    process.on('SIGINT', shutdown);
    process.on('SIGTERM', shutdown);
  });
}

if (require.main === module) {
  const configArg = process.argv.indexOf('--config');
  runStackFromCli(configArg > 0 ? process.argv[configArg + 1] : undefined).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`novacron: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
