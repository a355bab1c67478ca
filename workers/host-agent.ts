/**
 * The host agent: one process per hypervisor host. It registers the host (capacity from libvirt, labels from
 * config), holds the host's lease in PostgreSQL as its heartbeat, reports the libvirt inventory with a version that
 * only grows, and polls `host-<hostId>` with the libvirt activities.
 *
 * It also runs the host's DWCP receiver (mutual TLS, certificate from agent.pkiDir) for images and migration
 * streams from peers, and the image activities that use it.
 *
 * It serves Prometheus metrics on agent.metricsPort: process metrics, lease renewals, inventory reports, self-fences
 * and the outcome of every activity it runs.
 *
 * It self-fences (docs/self-fencing.md): past the deadline its last successful renewal gives (self-fence.ts), it
 * destroys every NovaCron guest on its libvirtd, and so does the host watchdog it keeps running beside it
 * (host-watchdog.ts) when the agent itself dies or hangs. A guest never outlives the lease that lets it run.
 *
 * It registers the storage pools the host mounts besides its image root (agent.storagePools: VMs' disks and image
 * bases live there), the address QEMU takes incoming migrations on and the URI peers' daemons reach its libvirtd
 * by, and runs the image base and live migration activities.
 *
 * Config: agent.hostId (required), agent.libvirtUri, agent.address, agent.region, agent.zone, agent.imageRoot,
 * agent.storagePools, agent.migrationAddress, agent.peerLibvirtUri, agent.domainType, agent.dwcpPort,
 * agent.dwcpListenHost, agent.pkiDir, agent.metricsPort, agent.metricsListenHost, as NOVACRON_AGENT_* variables or
 * in a config file; failover.selfFenceMarginMs and failover.watchdog; DATABASE_URL and TEMPORAL_ADDRESS as for every
 * process.
 */
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { createImageActivities } from '../activities/image-activities';
import { createImageBaseActivities } from '../activities/image-base-activities';
import { createLibvirtActivities } from '../activities/libvirt-activities';
import { createMigrationActivities } from '../activities/migration-activities';
import { createWitnessActivities } from '../activities/witness-activities';
import { ConfigError, loadConfig } from '../config/load-config';
import { inventoryStalenessBoundMs, type NovacronConfig } from '../config/schema';
import { loadOrCreateWitnessKey } from '../native/consensus';
import { DwcpReceiver, DwcpWorkerPool } from '../native/dwcp';
import { DiskImages, LibvirtConnection, resolveDomainType } from '../native/libvirt';
import { destroyNovaCronGuests } from '../native/libvirt/guest-fence';
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
import { startHostWatchdog, type HostWatchdogLink } from './host-watchdog';
import { leaseGuardInterceptor, SelfFence, selfFenceTiming } from './self-fence';
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
/** How often the agent compares the monotonic clock with its self-fence deadline. */
const SELF_FENCE_CHECK_MS = 100;
/** libvirtd that does not answer a fence within this long is asked again at the next check. */
const FENCE_VIRSH_TIMEOUT_MS = 10_000;

/** In the image root: the lease holder a cleanly stopped agent leaves to the next agent on this host. */
const LEASE_HANDOVER_FILE = '.lease-handover';

/** The store's refusal while another holder's lease is alive (its message names the holder and the time left). */
function isLeaseHeld(err: unknown): err is Error {
  return err instanceof Error && (err as { code?: string }).code === 'HostLeaseHeld';
}

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
  const timing = selfFenceTiming(config);

  const conn = new LibvirtConnection({ uri: config.agent.libvirtUri });
  const [node, memory, disk] = await Promise.all([conn.nodeGetInfo(), conn.nodeGetMemoryStats(), statfs(imageRoot)]);
  const pool = createPool({
    databaseUrl: config.storage.databaseUrl,
    max: 3,
    applicationName: `novacron-agent-${hostId}`,
  });
  // Its own connection: renewals must not queue behind inventory reports and activities on a busy host, or a slow
  // moment would pass the self-fence deadline with the lease still alive.
  const leasePool = createPool({
    databaseUrl: config.storage.databaseUrl,
    max: 1,
    applicationName: `novacron-agent-${hostId}-lease`,
  });
  const stopped: Array<() => Promise<void>> = [() => pool.end(), () => leasePool.end()];
  // Self-fencing is failover's other half: with failover off nobody restarts a guest elsewhere, so stopping it
  // would only lose it. Agents and control workers must agree on failover.enabled (README, Adding a host).
  const selfFencing = config.failover.enabled;
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
    const pkiDir = path.resolve(config.agent.pkiDir ?? path.join(config.system.dataDir, 'pki'));
    // Registered with the host, so the control side can check this host's witness votes against it.
    const witnessKey = await loadOrCreateWitnessKey({ pkiDir, hostId });
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
      witnessPublicKey: witnessKey.publicKey,
    });

    // A clean stop hands its live lease to the next agent on this host: a restart (an upgrade) then neither waits
    // out the TTL nor lets failover take the host while its guests run. Read once, so it is used once.
    const handoverFile = path.join(imageRoot, LEASE_HANDOVER_FILE);
    const handedOver = await readFile(handoverFile, 'utf8').then(
      (text) => text.trim() || undefined,
      () => undefined,
    );
    await rm(handoverFile, { force: true });
    const holder = handedOver ?? `${hostId}@${os.hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
    if (handedOver) logger.info({ hostId, holder }, 'taking over the lease a cleanly stopped agent handed over');
    const { ttlMs } = timing;
    let token = 0;
    const fenceConn = new LibvirtConnection({ uri: config.agent.libvirtUri, commandTimeoutMs: FENCE_VIRSH_TIMEOUT_MS });
    const selfFence = new SelfFence({
      ttlMs,
      marginMs: timing.marginMs,
      now: () => process.hrtime.bigint(),
      fence: async ({ reason }) => {
        const result = await destroyNovaCronGuests(fenceConn);
        const guests = result.stopped.map((guest) => ({ name: guest.name, vmId: guest.vmId }));
        if (result.failed.length > 0) {
          logger.error({ hostId, token, guests, failed: result.failed }, 'self-fence could not stop every guest');
          throw new Error(`self-fence: ${result.failed.length} guest(s) still running`);
        }
        agentMetrics.selfFences.inc({ by: 'agent' });
        logger.error({ hostId, token, by: 'agent', reason, guests }, 'self-fenced');
      },
    });
    let watchdog: HostWatchdogLink | undefined;
    if (selfFencing && config.failover.watchdog) {
      watchdog = startHostWatchdog({
        hostId,
        libvirtUri: config.agent.libvirtUri,
        logLevel: config.system.logLevel,
        logger,
        respawnDelayMs: config.fleet.heartbeatIntervalMs,
        onFenced: () => agentMetrics.selfFences.inc({ by: 'watchdog' }),
      });
      const link = watchdog;
      // An unclean end (start-up failure, fatal worker error) leaves it armed: the lease is not renewed any more.
      stopped.push(() => Promise.resolve(link.abandon()));
    }
    const leaseRenewed = (sentAt: bigint) => watchdog?.arm(selfFence.renewed(sentAt));
    // A restarted agent waits out its predecessor's lease; the predecessor's watchdog stops its guests meanwhile.
    for (;;) {
      const sentAt = selfFence.sendTime();
      try {
        token = await acquireHostLease(leasePool, { hostId, holder, ttlMs });
        leaseRenewed(sentAt);
        break;
      } catch (err) {
        if (!isLeaseHeld(err)) throw err;
        logger.warn({ hostId, held: err.message }, 'host lease held by another holder; waiting for it to expire');
        await sleep(config.fleet.heartbeatIntervalMs);
      }
    }
    logger.info({ hostId, token, ttlMs, watchdogPid: watchdog?.pid() }, 'host lease acquired');

    // Set once the worker exists: a lost lease stops it, or, before it exists, stops the start-up.
    const started: { worker?: Worker } = {};
    let fenced = false;
    let cleanStop = false;
    const stopWorker = () => {
      if (started.worker?.getState() === 'RUNNING') started.worker.shutdown();
    };
    const heartbeat = async () => {
      const sentAt = selfFence.sendTime();
      const renewal = await renewHostLease(leasePool, { hostId, holder, token, ttlMs });
      if (renewal === 'renewed') leaseRenewed(sentAt);
      else if (renewal === 'expired') {
        // The guests have no lease any more, whatever the local clock says: they stop before a new one is taken.
        if (selfFencing) await selfFence.leaseExpired();
        // Down in the meantime: come back under a new token, so work written under the old one stays refused. A
        // HostLeaseHeld here means another holder took it: the next renewal says 'lost'.
        const reacquiredAt = selfFence.sendTime();
        token = await acquireHostLease(leasePool, { hostId, holder, ttlMs });
        leaseRenewed(reacquiredAt);
        logger.warn({ hostId, token }, 'host lease had expired; re-acquired with a new fencing token');
      } else {
        fenced = true;
        // Another holder can only have taken an expired lease, so this deadline has passed: the watchdog stays armed
        // and stops any guest this agent's own fence missed.
        logger.error({ hostId, token }, 'another agent holds this host lease; this agent is fenced off and stops');
        stopWorker();
      }
      agentMetrics.leaseRenewals.inc({ outcome: renewal === 'expired' ? 'reacquired' : renewal });
    };

    // From the first lease on, however long start-up still takes: a lapse during it must fence as well.
    const leaseLoops = [
      ...(selfFencing
        ? [
            every(
              SELF_FENCE_CHECK_MS,
              async () => selfFence.check(),
              (err) => logger.error({ err, hostId, token }, 'self-fence failed; trying again'),
            ),
          ]
        : []),
      every(config.fleet.heartbeatIntervalMs, heartbeat, (err) => {
        agentMetrics.leaseRenewals.inc({ outcome: 'failed' });
        logger.warn({ err, hostId }, 'lease renewal failed');
      }),
    ];
    stopped.unshift(async () => {
      for (const loop of leaseLoops) await loop.stop();
      if (cleanStop) await watchdog?.disarm();
      if (cleanStop && !fenced) await writeFile(handoverFile, `${holder}\n`, { mode: 0o600 });
    });

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
    const created = await Worker.create({
      connection,
      namespace: target.namespace,
      taskQueue,
      activities: {
        ...activities,
        ...imageActivities,
        ...createImageBaseActivities({ hostId, imageRoot, storagePools, pool: dwcpPool }),
        ...createMigrationActivities({ hostId, conn, imageRoot, storagePools, logger }),
        ...createWitnessActivities({ hostId, key: witnessKey, probeTimeoutMs: config.failover.witnessProbeTimeoutMs }),
      },
      interceptors: {
        activity: [
          activityMetricsInterceptor(metrics),
          ...(selfFencing
            ? [leaseGuardInterceptor({ hostId, leaseLive: () => !fenced && (selfFence.remainingMs() ?? -1) > 0 })]
            : []),
        ],
      },
      identity: `host-agent@${hostId}:${process.pid}`,
      shutdownGraceTime: '5s',
      // Cancellation reaches an activity with its heartbeat, and heartbeats carry transfer progress: keep both prompt.
      maxHeartbeatThrottleInterval: '2 seconds',
    });
    started.worker = created;
    if (fenced) throw new Error(`another agent took the lease of ${hostId} while this one started`);

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
      every(Math.max(100, Math.floor(inventoryStalenessBoundMs(config) / 4)), reportInventory, (err) =>
        logger.warn({ err, hostId }, 'inventory report failed'),
      ),
    ];
    await reportInventory();

    const done = created.run().finally(async () => {
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
        watchdogPid: watchdog?.pid(),
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
        cleanStop = true;
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
