import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { openSync, closeSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { HarnessError } from './harness-error';
import { addHostLink, removeHostLink, setLinkCap, setLinkUp, startHarnessNetwork } from './harness-network';
import type { HarnessNetwork, LinkCap } from './harness-network';
import { findExecutable, HYPERVISOR_BINARIES, REQUIRED_BINARIES, searchPath } from './hypervisor-binaries';
import { LibvirtConnection } from './libvirt-connection';

export { HarnessError };
export type { LinkCap };

/**
 * Runs N independent libvirtd instances on one machine, each standing in for a hypervisor host.
 *
 * libvirtd's QEMU driver derives its state, config and log paths from fixed root prefixes (/run/libvirt,
 * /etc/libvirt/qemu, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt); only the socket directory and
 * host UUID are configurable. Two daemons would therefore share domain definitions and runtime state. Each
 * instance runs in its own mount namespace with private directories bind-mounted over those prefixes, and in
 * its own PID namespace so that killing the namespace's first process takes libvirtd, virtlogd and every QEMU
 * of that host down with it. The socket directory stays outside the bind mounts, so clients on the machine
 * reach each daemon at `qemu:///system?socket=<dir>/sock/libvirt-sock`.
 *
 * Each host's QEMUs take incoming migrations on ports of their own (49152 + 64·i up), so two hosts never race for
 * one. Without `network`, all hosts share the machine's network namespace: a migration between them is managed
 * direct with `--migrateuri tcp://127.0.0.1`, since libvirt refuses a peer-to-peer one to a local URI. With
 * `network`, each host also has a network namespace, an address and a link of its own (harness-network.ts), and its
 * libvirtd listens on TCP there, so peer-to-peer migration works and links can be capped.
 */

export interface LocalHypervisor {
  hostId: string;
  uri: string;
  socketDir: string;
  /** The instance's private tree: etc/, run/, lib/, log/, cache/, sock/. */
  dir: string;
  hostUuid: string;
  /** qemu.conf migration_port_min/max: where this host's QEMUs listen for incoming migrations. */
  migrationPorts: { min: number; max: number };
  /** The address other hosts migrate to: the host's own with `network`, else 127.0.0.1. */
  migrationAddress: string;
  /** With `network`: `qemu+tcp://<migrationAddress>/system`, the URI peer-to-peer migrations name. */
  peerUri?: string;
  /** With `network`: the named network namespace (`ip netns exec <netns> ...`). */
  netns?: string;
  /** Caps (or with undefined uncaps) the host's link both ways. Rejects without `network`. */
  setLinkCap(cap: LinkCap | undefined): Promise<void>;
  /** Takes the host's link down (a partition) or up again; only hosts with a network of their own have one. */
  setLinkUp(up: boolean): Promise<void>;
  stop(): Promise<void>;
}

export interface LocalHypervisors {
  hosts: LocalHypervisor[];
  /** With `network`: the root namespace's bridge, and its address, which the hosts reach the machine at. */
  network?: { bridge: string; address: string; cidr: string };
  stop(): Promise<void>;
}

export interface StartLocalHypervisorsInput {
  count: number;
  /** Absolute; created if missing. Reusing a directory keeps each host's UUID and defined domains. */
  baseDir: string;
  startTimeoutMs?: number;
  /** Gives each host a network namespace, address and link of its own. Needs iproute2. */
  network?: boolean;
}

const DEFAULT_START_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 10_000;
const BIND_DIRS = [
  ['etc', '/etc/libvirt'],
  ['run', '/run/libvirt'],
  ['lib', '/var/lib/libvirt'],
  ['log', '/var/log/libvirt'],
  ['cache', '/var/cache/libvirt'],
] as const;
// sockaddr_un.sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH = 107;
const SAFE_DIR_PATTERN = /^\/[A-Za-z0-9_./-]*$/;
const NAMESPACE_TAG = 'novacron-hypervisor';
const MIGRATION_PORT_BASE = 49152;
const MIGRATION_PORTS_PER_HOST = 64;

// Runs as PID 1 of the instance's PID namespace. As PID 1 it inherits every orphaned process (QEMU's
// capability probes daemonize), and bash reaps them while it waits: libvirtd as PID 1 would leave zombies
// that its process-kill helper then waits on for 40 s each.
const NAMESPACE_INIT = `set -eu
dir=$1
shift
for pair in ${BIND_DIRS.map(([local, target]) => `${local}:${target}`).join(' ')}; do
  mkdir -p "\${pair#*:}"
  mount --bind "$dir/\${pair%%:*}" "\${pair#*:}"
done
virtlogd --pid-file "$dir/run/virtlogd.pid" &
logd=$!
libvirtd --config "$dir/etc/libvirtd.conf" --pid-file "$dir/run/libvirtd.pid" "$@" &
daemon=$!
trap 'kill -TERM $daemon $logd 2>/dev/null || true' TERM INT
while kill -0 $daemon 2>/dev/null; do wait $daemon || true; done
`;

/** Throws a HarnessError naming the apt packages when a binary the harness needs is missing. */
export function assertHypervisorBinaries(): void {
  const missing = REQUIRED_BINARIES.filter((bin) => findExecutable(bin) === undefined);
  if (missing.length > 0) {
    const packages = [...new Set(missing.map((bin) => HYPERVISOR_BINARIES[bin]))].join(' ');
    throw new HarnessError(
      `missing ${missing.join(', ')}: install them with ` +
        `\`apt-get install -y --no-install-recommends ${packages}\` and run as root`,
    );
  }
}

export async function startLocalHypervisors(input: StartLocalHypervisorsInput): Promise<LocalHypervisors> {
  if (!Number.isInteger(input.count) || input.count < 1 || input.count > 64) {
    throw new HarnessError('count must be an integer between 1 and 64');
  }
  const baseDir = input.baseDir.replace(/\/+$/, '');
  if (!SAFE_DIR_PATTERN.test(baseDir) || posix.normalize(baseDir) !== baseDir) {
    throw new HarnessError(`baseDir ${JSON.stringify(input.baseDir)} must be absolute, normalized, [A-Za-z0-9_./-]`);
  }
  if (BIND_DIRS.some(([, target]) => `${baseDir}/`.startsWith(`${target}/`))) {
    throw new HarnessError(
      `baseDir must not lie under ${BIND_DIRS.map(([, t]) => t).join(', ')}: they are overmounted`,
    );
  }
  if (process.getuid?.() !== 0) throw new HarnessError('the harness must run as root: libvirtd needs mount namespaces');
  assertHypervisorBinaries();

  const timeoutMs = input.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  const network = input.network ? await startHarnessNetwork({ baseDir }) : undefined;
  const started = await Promise.allSettled(
    Array.from({ length: input.count }, (_, i) =>
      startHost({ hostId: `host-${i + 1}`, index: i + 1, dir: join(baseDir, `host-${i + 1}`), timeoutMs, network }),
    ),
  );
  const hosts = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const stop = async () => {
    await Promise.all(hosts.map((h) => h.stop()));
    await network?.stop();
  };
  const failure = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) {
    await stop();
    throw failure.reason;
  }
  const bridge = network && { bridge: network.bridge, address: network.address, cidr: network.cidr };
  return { hosts, ...(bridge && { network: bridge }), stop };
}

async function startHost(input: {
  hostId: string;
  index: number;
  dir: string;
  timeoutMs: number;
  network: HarnessNetwork | undefined;
}): Promise<LocalHypervisor> {
  const { hostId, dir, timeoutMs } = input;
  const socketDir = join(dir, 'sock');
  const socketPath = join(socketDir, 'libvirt-sock');
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
    throw new HarnessError(`${socketPath} is longer than a unix socket path may be (${MAX_SOCKET_PATH} bytes)`);
  }
  await killStaleNamespace(dir);
  // run/ and sock/ play the part of a tmpfs: whatever a killed run left there is stale by definition.
  await rm(join(dir, 'run'), { recursive: true, force: true });
  await rm(socketDir, { recursive: true, force: true });
  for (const [local] of BIND_DIRS) await mkdir(join(dir, local), { recursive: true });
  await mkdir(socketDir, { recursive: true });
  const hostUuid = await persistentHostUuid(dir);
  const minPort = MIGRATION_PORT_BASE + MIGRATION_PORTS_PER_HOST * (input.index - 1);
  const migrationPorts = { min: minPort, max: minPort + MIGRATION_PORTS_PER_HOST - 1 };
  const address = input.network?.hostAddress(input.index);
  await writeFile(join(dir, 'etc', 'libvirtd.conf'), libvirtdConf({ dir, socketDir, hostUuid, address }));
  await writeFile(join(dir, 'etc', 'qemu.conf'), qemuConf({ migrationPorts, address }));

  const link = input.network && (await addHostLink(input.network, input.index));
  const logFd = openSync(join(dir, 'namespace.log'), 'a');
  let child: ChildProcess;
  try {
    child = spawn(
      'setpriv',
      // pdeathsig: if the harness process dies, even by SIGKILL, unshare dies, and --kill-child takes the namespace.
      // `ip netns exec` execs unshare in place after joining the network namespace, so the death signal still holds.
      [
        '--pdeathsig',
        'SIGKILL',
        '--',
        ...(link ? ['ip', 'netns', 'exec', link.netns] : []),
        'unshare',
        '--mount',
        '--pid',
        '--fork',
        '--mount-proc',
        '--propagation',
        'private',
        '--kill-child=SIGKILL',
        '--',
        'bash',
        '-c',
        NAMESPACE_INIT,
        NAMESPACE_TAG,
        dir,
        ...(link ? ['--listen'] : []),
      ],
      { stdio: ['ignore', logFd, logFd], env: daemonEnv() },
    );
  } finally {
    closeSync(logFd);
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let running = true;
  void exited.then(() => (running = false));

  const initPid = await namespaceInitPid(child, exited).catch(async (err: unknown) => {
    // A setpriv or unshare that never got as far as the namespace must not outlive the failed start.
    child.kill('SIGKILL');
    await Promise.race([exited, sleep(STOP_GRACE_MS, undefined, { ref: false })]);
    if (link) await removeHostLink(link);
    throw err;
  });
  await writeFile(join(dir, 'namespace.pid'), `${initPid}\n`);
  const uri = `qemu:///system?socket=${socketPath}`;

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      if (running) {
        signal(initPid, 'SIGTERM');
        // Unreferenced, so a prompt exit does not leave the grace timer holding the process open.
        await Promise.race([exited, sleep(STOP_GRACE_MS, undefined, { ref: false })]);
      }
      if (running) {
        signal(initPid, 'SIGKILL');
        await exited;
      }
      if (link) await removeHostLink(link);
      await rm(join(dir, 'namespace.pid'), { force: true });
    })());

  try {
    await waitUntilReady({ uri, exited, timeoutMs, dir });
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    hostId,
    uri,
    socketDir,
    dir,
    hostUuid,
    migrationPorts,
    migrationAddress: link?.address ?? '127.0.0.1',
    ...(link && { peerUri: `qemu+tcp://${link.address}/system`, netns: link.netns }),
    setLinkCap: (cap) =>
      link ? setLinkCap(link, cap) : Promise.reject(new HarnessError(`${hostId} has no link of its own to cap`)),
    setLinkUp: (up) =>
      link ? setLinkUp(link, up) : Promise.reject(new HarnessError(`${hostId} has no link of its own to cut`)),
    stop,
  };
}

async function waitUntilReady(input: { uri: string; exited: Promise<void>; timeoutMs: number; dir: string }) {
  const connection = new LibvirtConnection({ uri: input.uri, commandTimeoutMs: 10_000 });
  const deadline = Date.now() + input.timeoutMs;
  let exited = false;
  void input.exited.then(() => (exited = true));
  let lastError: unknown;
  while (Date.now() < deadline && !exited) {
    try {
      // Answers only once the QEMU driver has initialized, not merely when the socket exists.
      await connection.connectGetVersion();
      return;
    } catch (err) {
      lastError = err;
      await sleep(100);
    }
  }
  const log = await readFile(join(input.dir, 'namespace.log'), 'utf8').catch(() => '');
  throw new HarnessError(
    `libvirtd at ${input.uri} ${exited ? 'exited' : `was not ready after ${input.timeoutMs} ms`}: ` +
      `${String((lastError as Error | undefined)?.message ?? '')}\n${log.split('\n').slice(-20).join('\n')}`,
  );
}

/** The host PID of the namespace's first process: unshare's only child, listed once it has forked. */
async function namespaceInitPid(child: ChildProcess, exited: Promise<void>): Promise<number> {
  let gone = false;
  void exited.then(() => (gone = true));
  const pid = child.pid;
  for (let attempt = 0; attempt < 200 && !gone && pid !== undefined; attempt++) {
    const children = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
    const first = children.trim().split(/\s+/)[0];
    // setpriv execs unshare under the same PID; until it has, the PID has no children.
    const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
    if (first && comm.trim() === 'unshare') return Number(first);
    await sleep(10);
  }
  throw new HarnessError('unshare did not start its namespace: see namespace.log in the host directory');
}

/** Kills a namespace left by a run that died without stopping it. Checks the PID still belongs to us first. */
async function killStaleNamespace(dir: string): Promise<void> {
  const text = await readFile(join(dir, 'namespace.pid'), 'utf8').catch(() => undefined);
  const pid = Number(text);
  if (text === undefined || !Number.isInteger(pid) || pid <= 1) return;
  if (!(await isOurNamespaceInit(pid, dir))) return;
  signal(pid, 'SIGKILL');
  for (let i = 0; i < 100 && (await isOurNamespaceInit(pid, dir)); i++) await sleep(50);
}

async function isOurNamespaceInit(pid: number, dir: string): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  // A zombie (state Z) has already released everything; only its parent can clear it.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  const args = cmdline.split('\0');
  return state !== 'Z' && args.includes(NAMESPACE_TAG) && args.includes(dir);
}

async function persistentHostUuid(dir: string): Promise<string> {
  const file = join(dir, 'host-uuid');
  const existing = (await readFile(file, 'utf8').catch(() => '')).trim();
  if (/^[0-9a-f-]{36}$/.test(existing)) return existing;
  const uuid = randomUUID();
  await writeFile(file, `${uuid}\n`);
  return uuid;
}

function libvirtdConf(input: { dir: string; socketDir: string; hostUuid: string; address?: string }): string {
  return [
    `unix_sock_dir = "${input.socketDir}"`,
    // Only root can reach the socket (mode 0700), which is the access control these test daemons need.
    'auth_unix_rw = "none"',
    'auth_unix_ro = "none"',
    `host_uuid = "${input.hostUuid}"`,
    `log_outputs = "3:file:${input.dir}/log/libvirtd.log"`,
    // TCP without authentication, for peer-to-peer migration between harness hosts. Acceptable only because the
    // address is on the harness's bridge, a private subnet that nothing outside this machine can reach (the harness
    // forwards nothing). Every local user can reach it, though, and so control these root daemons: a test machine's
    // trade-off, never a production host's.
    ...(input.address === undefined
      ? []
      : ['listen_tls = 0', 'listen_tcp = 1', `listen_addr = "${input.address}"`, 'auth_tcp = "none"']),
    '',
  ].join('\n');
}

// Guests run as root without a security driver and outside cgroups: per-domain cgroup and machined scope
// names contain only the domain id and name, so two daemons on one machine would collide on them.
function qemuConf(input: { migrationPorts: { min: number; max: number }; address?: string }): string {
  return [
    'user = "root"',
    'group = "root"',
    'dynamic_ownership = 0',
    'remember_owner = 0',
    'security_driver = "none"',
    'cgroup_controllers = [ ]',
    `migration_port_min = ${input.migrationPorts.min}`,
    `migration_port_max = ${input.migrationPorts.max}`,
    // The destination names this address in the URI it hands a peer-to-peer source; by default it would be the
    // machine's hostname, which resolves outside the host's namespace.
    ...(input.address === undefined ? [] : [`migration_host = "${input.address}"`]),
    '',
  ].join('\n');
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

function daemonEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: searchPath(), LC_ALL: 'C', LANG: 'C' };
}
