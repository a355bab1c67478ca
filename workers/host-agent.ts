/**
 * The host agent: one process per hypervisor host. It registers the host (capacity from libvirt, labels from
 * config), holds the host's lease in PostgreSQL as its heartbeat, reports the libvirt inventory with a version that
 * only grows, and polls `host-<hostId>` with the libvirt activities.
 *
 * It also runs the host's DWCP receiver (mutual TLS, certificate from agent.pkiDir) for images and migration
 * streams from peers, and the image activities that use it.
 *
 * It serves Prometheus metrics on agent.metricsPort: process metrics, lease renewals, inventory reports and the
 * outcome of every activity it runs.
 *
 * It registers the storage pools the host mounts besides its image root (agent.storagePools: VMs' disks and image
 * bases live there), the address QEMU takes incoming migrations on and the URI peers' daemons reach its libvirtd
 * by, and runs the image base and live migration activities.
 *
 * Config: agent.hostId (required), agent.libvirtUri, agent.address, agent.region, agent.zone, agent.imageRoot,
 * agent.storagePools, agent.migrationAddress, agent.peerLibvirtUri, agent.domainType, agent.dwcpPort,
 * agent.dwcpListenHost, agent.pkiDir, agent.metricsPort, agent.metricsListenHost, as NOVACRON_AGENT_* variables or
 * in a config file; DATABASE_URL and TEMPORAL_ADDRESS as for every process.
 */
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { randomUUID } from 'node:crypto';
import { mkdir, stat, statfs } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { createImageActivities } from '../activities/image-activities';
import { createImageBaseActivities } from '../activities/image-base-activities';
import { createLibvirtActivities } from '../activities/libvirt-activities';
import { createMigrationActivities } from '../activities/migration-activities';
import { ConfigError, loadConfig } from '../config/load-config';
import { inventoryStalenessBoundMs, type NovacronConfig } from '../config/schema';
import { DwcpReceiver, DwcpWorkerPool } from '../native/dwcp';
import { DiskImages, LibvirtConnection, resolveDomainType } from '../native/libvirt';
import { createLogger, temporalLoggerFrom } from '../observability/logger';
import {
  activityMetricsInterceptor,
  createHostAgentMetrics,
  createMetrics,
  serveMetrics,
} from '../observability/metrics';
import {
  acquireHostLease,
  databaseNow,
  getHostDwcpEndpoint,
  recordInventory,
  registerHost,
  renewHostLease,
  setHostDwcpEndpoint,
} from '../store/hosts';
import { migrate } from '../store/migrate';
import { createPool } from '../store/pool';
import { ensureHostTls } from './host-pki';
import { temporalTarget } from './temporal-clients';

export interface HostAgentHandle {
  hostId: string;
  taskQueue: string;
  /** Where this agent serves Prometheus metrics (the real port when agent.metricsPort is 0). */
  metricsUrl: string;
  /** The fencing token of the lease this agent holds now. */
  leaseToken(): number;
  /** Resolves when the agent stops: shutdown, a lost lease, or a fatal worker error. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

const MiB = 1024 * 1024;

/**
 * The declared pools, each an existing directory. A pool whose mount is missing must stop the agent: creating the
 * directory would give this host a private "shared" pool, whose overlays no other host could open.
 */
async function checkStoragePools(pools: Record<string, string>): Promise<Record<string, string>> {
  const checked: Record<string, string> = {};
  for (const [name, dir] of Object.entries(pools)) {
    const found = await stat(dir).catch(() => undefined);
    if (!found?.isDirectory()) {
      throw new ConfigError(`invalid config: agent.storagePools.${name}: ${dir} is not a directory (is it mounted?)`);
    }
    checked[name] = path.resolve(dir);
  }
  return checked;
}

export async function startHostAgent(input: { config: NovacronConfig; logger: Logger }): Promise<HostAgentHandle> {
  const { config, logger } = input;
  const hostId = config.agent.hostId;
  if (!hostId) throw new ConfigError('invalid config: agent.hostId: the host agent needs NOVACRON_AGENT_HOST_ID');
  if (!config.storage.databaseUrl) {
    throw new ConfigError('invalid config: storage.databaseUrl: the host agent needs DATABASE_URL');
  }
  const imageRoot = path.resolve(config.agent.imageRoot ?? path.join(config.system.dataDir, 'images', hostId));
  await mkdir(imageRoot, { recursive: true });
  const storagePools = await checkStoragePools(config.agent.storagePools);
  const domainType = resolveDomainType(config.agent.domainType);

  const conn = new LibvirtConnection({ uri: config.agent.libvirtUri });
  const [node, memory, disk] = await Promise.all([conn.nodeGetInfo(), conn.nodeGetMemoryStats(), statfs(imageRoot)]);
  const pool = createPool({
    databaseUrl: config.storage.databaseUrl,
    max: 3,
    applicationName: `novacron-agent-${hostId}`,
  });
  const stopped: Array<() => Promise<void>> = [() => pool.end()];
  try {
    const metrics = createMetrics({ service: 'host-agent', labels: { host_id: hostId } });
    const agentMetrics = createHostAgentMetrics(metrics.registry);
    const metricsServer = await serveMetrics({
      registry: metrics.registry,
      host: config.agent.metricsListenHost,
      port: config.agent.metricsPort,
    });
    stopped.unshift(() => metricsServer.close());
    await migrate(pool);
    // nodeGetMemoryStats covers all memory; nodeGetInfo counts only NUMA node 0 on some VMs (docs/libvirt-driver.md).
    await registerHost(pool, {
      id: hostId,
      address: config.agent.address,
      libvirtUri: config.agent.libvirtUri,
      cpus: node.cpus,
      memoryMib: Math.floor(memory.totalKiB / 1024),
      diskMib: Math.floor((disk.bavail * disk.bsize) / MiB),
      labels: { region: config.agent.region, zone: config.agent.zone },
      imageRoot,
      storagePools,
      ...(config.agent.migrationAddress ? { migrationAddress: config.agent.migrationAddress } : {}),
      ...(config.agent.peerLibvirtUri ? { peerLibvirtUri: config.agent.peerLibvirtUri } : {}),
    });

    const holder = `${hostId}@${os.hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
    const ttlMs = config.dwcp.consensus.leaseTtlSeconds * 1000;
    let token = await acquireHostLease(pool, { hostId, holder, ttlMs });
    logger.info({ hostId, token, ttlMs }, 'host lease acquired');

    const pkiDir = path.resolve(config.agent.pkiDir ?? path.join(config.system.dataDir, 'pki'));
    const pki = await ensureHostTls({ pkiDir, hostId, address: config.agent.address });
    if (pki.issued) logger.info({ hostId, cert: pki.certificate.certPath }, 'issued this host its DWCP certificate');
    const dwcpPool = new DwcpWorkerPool();
    stopped.unshift(() => dwcpPool.close());
    const receiver = await DwcpReceiver.start({
      tls: pki.tls,
      host: config.agent.dwcpListenHost,
      port: config.agent.dwcpPort,
      pool: dwcpPool,
      // The library's images are read-mostly: keeping their chunk index beside them spares each delta a rescan.
      indexSidecars: true,
      onAuthFailure: (err) => logger.warn({ err, hostId }, 'DWCP peer refused: bad certificate'),
    });
    stopped.unshift(() => receiver.close());
    const dwcpEndpoint = `${config.agent.address.includes(':') ? `[${config.agent.address}]` : config.agent.address}:${receiver.port}`;
    await setHostDwcpEndpoint(pool, { hostId, endpoint: dwcpEndpoint });

    const images = new DiskImages({ imageRoot, otherRoots: Object.values(storagePools) });
    const activities = createLibvirtActivities({ hostId, conn, images, imageRoot, storagePools, domainType });
    const imageActivities = createImageActivities({
      hostId,
      imageRoot,
      config,
      images,
      receiver,
      tls: pki.tls,
      pool: dwcpPool,
      lookupDwcpEndpoint: (peerHostId) => getHostDwcpEndpoint(pool, peerHostId),
    });
    const target = temporalTarget(config);
    const connection = await NativeConnection.connect({
      address: target.address,
      ...(target.tls ? { tls: target.tls } : {}),
    });
    stopped.unshift(() => connection.close());
    const taskQueue = `host-${hostId}`;
    const worker = await Worker.create({
      connection,
      namespace: target.namespace,
      taskQueue,
      activities: {
        ...activities,
        ...imageActivities,
        ...createImageBaseActivities({ hostId, imageRoot, storagePools, pool: dwcpPool }),
        ...createMigrationActivities({ hostId, conn, imageRoot, storagePools, logger }),
      },
      interceptors: { activity: [activityMetricsInterceptor(metrics)] },
      identity: `host-agent@${hostId}:${process.pid}`,
      shutdownGraceTime: '5s',
      // Cancellation reaches an activity with its heartbeat, and heartbeats carry transfer progress: keep both prompt.
      maxHeartbeatThrottleInterval: '2 seconds',
    });

    let fenced = false;
    const stopWorker = () => {
      if (worker.getState() === 'RUNNING') worker.shutdown();
    };
    const heartbeat = async () => {
      const renewal = await renewHostLease(pool, { hostId, holder, token, ttlMs });
      if (renewal === 'expired') {
        // Down in the meantime: come back under a new token, so work written under the old one stays refused.
        token = await acquireHostLease(pool, { hostId, holder, ttlMs });
        logger.warn({ hostId, token }, 'host lease had expired; re-acquired with a new fencing token');
      } else if (renewal === 'lost') {
        fenced = true;
        logger.error({ hostId, token }, 'another agent holds this host lease; this agent is fenced off and stops');
        stopWorker();
      }
      agentMetrics.leaseRenewals.inc({ outcome: renewal === 'expired' ? 'reacquired' : renewal });
    };

    let seq = 0;
    const reportInventory = async () => {
      const stop = agentMetrics.inventoryReportDuration.startTimer();
      try {
        // The database clock, taken before listing: drift is judged against VM rows written on the same clock.
        const observedAt = await databaseNow(pool);
        const domains = await activities.listInventory({ reason: 'report' });
        seq++;
        await recordInventory(pool, { hostId, leaseToken: token, seq, observedAt, domains });
      } catch (err) {
        agentMetrics.inventoryReports.inc({ outcome: 'failed' });
        stop({ outcome: 'failed' });
        throw err;
      }
      agentMetrics.inventoryReports.inc({ outcome: 'reported' });
      stop({ outcome: 'reported' });
    };

    const loops = [
      every(config.fleet.heartbeatIntervalMs, heartbeat, (err) => {
        agentMetrics.leaseRenewals.inc({ outcome: 'failed' });
        logger.warn({ err, hostId }, 'lease renewal failed');
      }),
      every(Math.max(100, Math.floor(inventoryStalenessBoundMs(config) / 4)), reportInventory, (err) =>
        logger.warn({ err, hostId }, 'inventory report failed'),
      ),
    ];
    await reportInventory();

    const done = worker.run().finally(async () => {
      for (const loop of loops) await loop.stop();
      for (const stop of stopped) await stop().catch(() => undefined);
      if (fenced) logger.error({ hostId }, 'host agent stopped: fenced off');
    });
    logger.info(
      {
        hostId,
        taskQueue,
        uri: config.agent.libvirtUri,
        imageRoot,
        storagePools,
        domainType,
        dwcpEndpoint,
        metrics: metricsServer.url,
      },
      'host agent polling',
    );
    return {
      hostId,
      taskQueue,
      metricsUrl: metricsServer.url,
      leaseToken: () => token,
      done,
      async shutdown() {
        stopWorker();
        await done;
      },
    };
  } catch (err) {
    for (const stop of stopped) await stop().catch(() => undefined);
    throw err;
  }
}

/** Runs `work` every `intervalMs`, never two at once; a failure is reported and the next tick tries again. */
function every(intervalMs: number, work: () => Promise<void>, onError: (err: unknown) => void) {
  let running: Promise<void> | undefined;
  const timer = setInterval(() => {
    running ??= work()
      .catch(onError)
      .finally(() => (running = undefined));
  }, intervalMs);
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}

async function main(): Promise<void> {
  let config: NovacronConfig;
  try {
    config = loadConfig();
  } catch (err) {
    process.stderr.write(`novacron host agent: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const logger = createLogger({ service: 'host-agent', config });
  Runtime.install({
    logger: config.system.logLevel === 'silent' ? new DefaultLogger('ERROR') : temporalLoggerFrom(logger),
  });
  const agent = await startHostAgent({ config, logger });
  const stop = () => void agent.shutdown();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  await agent.done;
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`novacron host agent: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  });
}
