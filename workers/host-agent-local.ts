/**
 * Local hypervisors for `npm start`: two harness libvirtd instances on this machine, each with a supervised host
 * agent, when libvirt is installed and we run as root. Otherwise it prints how to add hosts and starts nothing.
 * Both hosts mount the storage pool `shared`, one directory on this machine (as NFS or a cluster filesystem would
 * be for real hosts), so VMs on it can migrate live between them.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { NovacronConfig } from '../config/schema';
import { assertHypervisorBinaries, HarnessError, startLocalHypervisors } from '../native/libvirt/harness';
import { superviseService } from './supervisor';

export const LOCAL_HOST_COUNT = 2;
export const LOCAL_SHARED_POOL = 'shared';

/** The shared pool's directory under the data dir; every local host sees it at this one path. */
function localSharedPoolDir(config: NovacronConfig): string {
  return path.resolve(config.system.dataDir, 'pools', LOCAL_SHARED_POOL);
}

export async function startLocalHostAgents(input: {
  config: NovacronConfig;
  /** The environment of the stack's other services: DATABASE_URL and TEMPORAL_ADDRESS set. */
  env: NodeJS.ProcessEnv;
  logger: Logger;
  print: (line: string) => void;
}): Promise<{ hostIds: string[]; stop(): Promise<void> }> {
  const { config, print } = input;
  try {
    if (process.getuid?.() !== 0) throw new HarnessError('local hypervisors need root (libvirtd in mount namespaces)');
    assertHypervisorBinaries();
  } catch (err) {
    if (!(err instanceof HarnessError)) throw err;
    print(`no local hypervisors: ${err.message}`);
    print('  add a host by running a host agent on it: see README "Adding a hypervisor host"');
    return { hostIds: [], stop: async () => undefined };
  }
  const baseDir = path.resolve(config.system.dataDir, 'hypervisors');
  print(`starting ${LOCAL_HOST_COUNT} local hypervisors under ${baseDir}`);
  const hypervisors = await startLocalHypervisors({ count: LOCAL_HOST_COUNT, baseDir });
  const sharedPool = localSharedPoolDir(config);
  await mkdir(sharedPool, { recursive: true });
  const agents = hypervisors.hosts.map((host) =>
    superviseService(
      {
        name: `host-agent-${host.hostId}`,
        entry: 'workers/host-agent.ts',
        env: {
          ...input.env,
          NOVACRON_AGENT_HOST_ID: host.hostId,
          NOVACRON_AGENT_LIBVIRT_URI: host.uri,
          NOVACRON_AGENT_IMAGE_ROOT: path.join(host.dir, 'images'),
          NOVACRON_AGENT_STORAGE_POOLS: JSON.stringify({ [LOCAL_SHARED_POOL]: sharedPool }),
          NOVACRON_AGENT_MIGRATION_ADDRESS: host.migrationAddress,
          ...(host.peerUri ? { NOVACRON_AGENT_PEER_LIBVIRT_URI: host.peerUri } : {}),
          // Both agents share this machine's address: ephemeral DWCP and metrics ports, one development CA.
          NOVACRON_AGENT_DWCP_PORT: '0',
          NOVACRON_AGENT_METRICS_PORT: '0',
          NOVACRON_AGENT_PKI_DIR: path.resolve(config.system.dataDir, 'pki'),
        },
      },
      input.logger,
    ),
  );
  return {
    hostIds: hypervisors.hosts.map((h) => h.hostId),
    async stop() {
      // Agents first: a hypervisor stopped under a live agent would fail its in-flight activities.
      await Promise.all(agents.map((agent) => agent.stop()));
      await hypervisors.stop();
    },
  };
}
