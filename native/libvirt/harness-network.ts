/**
 * A network of their own for harness hosts (`startLocalHypervisors({ network: true })`).
 *
 * Each host joins a network namespace of its own, `novacron-hv-<tag>-<n>`, whose eth0 is one end of a veth pair;
 * the other end is a port of a bridge in the root namespace. The bridge has the first address of a private /24 and
 * host n the (n+1)th, so traffic between two hosts crosses both their veth pairs and the bridge, and processes on
 * the machine (host agents, the Temporal server, PostgreSQL) reach the hosts, and are reached by them, at the
 * bridge's address. <tag> is a hash of the harness's base directory, so two harnesses at once get distinct names,
 * and the /24 is the first from the tag's hash on that no route of the machine overlaps. Nothing leaves the
 * machine: the harness neither enables forwarding nor adds NAT, so the subnet exists only on this machine.
 *
 * Named namespaces and the bridge outlive a harness that is killed (its daemons do not, see harness.ts). The
 * bridge's alias names the process that made it: the next harness to start removes the network of every harness
 * whose process is gone, and its own base directory's from an earlier run.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';

import { HarnessError } from './harness-error';
import { findExecutable, NETWORK_BINARIES, searchPath } from './hypervisor-binaries';

const execFileAsync = promisify(execFile);
const OWNER_ALIAS = 'novacron-harness';
const NETNS_PREFIX = 'novacron-hv-';
const LINK_PREFIX = 'nvc';
const BRIDGE_PATTERN = /^nvc([0-9a-f]{8})br$/;
const HOST_DEVICE = 'eth0';
// 10.128.0.0/10: 16384 /24s to spread harness instances over. The DWCP benchmark's 10.213.7.0/30 lies outside.
const SUBNET_BASE = ((10 << 24) | (128 << 16)) >>> 0;
const SUBNET_COUNT = 1 << 14;
// How long tbf may queue a packet before dropping it; the same as the DWCP benchmark's capped link.
const TBF_QUEUE_LATENCY = '50ms';

export interface LinkCap {
  rateMbit: number;
  /** Default: about 4 ms of traffic at the rate, at least 64 KiB. */
  burstKb?: number;
  /** One-way delay (netem) added in each direction, so a round trip gains twice this. */
  latencyMs?: number;
}

export interface HarnessNetwork {
  tag: string;
  bridge: string;
  /** The root namespace's address on the bridge: where the hosts reach processes on the machine. */
  address: string;
  cidr: string;
  /** Host n's address (n from 1). */
  hostAddress(index: number): string;
  /** Removes the bridge; the hosts' links must be gone first (removeHostLink). */
  stop(): Promise<void>;
}

export interface HostLink {
  netns: string;
  address: string;
  /** The veth end in the root namespace, a port of the bridge; its peer is eth0 inside netns. */
  rootDevice: string;
}

/** Throws a HarnessError naming the apt packages when `ip` or `tc` is missing. */
export function assertNetworkBinaries(): void {
  const missing = Object.keys(NETWORK_BINARIES).filter((bin) => findExecutable(bin) === undefined);
  if (missing.length > 0) {
    const packages = [...new Set(missing.map((bin) => NETWORK_BINARIES[bin]))].join(' ');
    throw new HarnessError(
      `a networked harness needs ${missing.join(', ')}: \`apt-get install -y --no-install-recommends ${packages}\``,
    );
  }
}

export function instanceTag(baseDir: string): string {
  return createHash('sha256').update(baseDir).digest('hex').slice(0, 8);
}

/**
 * A locally administered unicast MAC from the tag. A bridge whose address was never set takes the lowest of its
 * ports' addresses and changes it when that port goes, so killing the host that owned it left every other host's
 * ARP entry for the bridge pointing at a MAC nobody answers, until the entry aged out (about 50 s here).
 */
export function bridgeMacAddress(tag: string): string {
  return ['02', ...(tag.match(/../g) ?? []), '01'].join(':');
}

export function hostLinkNames(tag: string, index: number): { netns: string; rootDevice: string } {
  return { netns: `${NETNS_PREFIX}${tag}-${index}`, rootDevice: `${LINK_PREFIX}${tag}h${index}` };
}

/** The network address of the first /24 from the tag's hash on that overlaps none of the routes (default aside). */
export function pickSubnet(tag: string, routes: readonly string[]): number {
  const taken = routes.flatMap((dst) => {
    const range = parseRoute(dst);
    return range ? [range] : [];
  });
  const first = Number.parseInt(tag.slice(0, 4), 16) % SUBNET_COUNT;
  for (let i = 0; i < SUBNET_COUNT; i++) {
    const start = SUBNET_BASE + ((first + i) % SUBNET_COUNT) * 256;
    if (!taken.some((r) => r.start < start + 256 && start < r.start + r.size)) return start;
  }
  throw new HarnessError('every /24 of 10.128.0.0/10 is routed on this machine: no subnet left for the harness');
}

function parseRoute(dst: string): { start: number; size: number } | undefined {
  const match = /^(\d+)\.(\d+)\.(\d+)\.(\d+)(?:\/(\d+))?$/.exec(dst);
  if (!match) return undefined;
  const [a, b, c, d] = match.slice(1, 5).map(Number) as [number, number, number, number];
  const length = match[5] === undefined ? 32 : Number(match[5]);
  // A default route overlaps everything yet never stops a more specific one from winning.
  if (length === 0) return undefined;
  const size = 2 ** (32 - length);
  const address = (a * 2 ** 24 + b * 2 ** 16 + c * 2 ** 8 + d) >>> 0;
  return { start: address - (address % size), size };
}

export function formatIpv4(address: number): string {
  return [24, 16, 8, 0].map((shift) => (address >>> shift) & 255).join('.');
}

/** The tc commands (after `tc [-n ns]`) that cap one direction of a link, leaving from `device`. */
export function capQdiscArgs(device: string, cap: LinkCap): string[][] {
  assertLinkCap(cap);
  const burstKb = Math.ceil(cap.burstKb ?? Math.max(64, cap.rateMbit / 2));
  const tbf = ['tbf', 'rate', `${cap.rateMbit}mbit`, 'burst', `${burstKb}kb`, 'latency', TBF_QUEUE_LATENCY];
  if (!cap.latencyMs) return [['qdisc', 'add', 'dev', device, 'root', 'handle', '1:', ...tbf]];
  return [
    ['qdisc', 'add', 'dev', device, 'root', 'handle', '1:', 'netem', 'delay', `${cap.latencyMs}ms`],
    ['qdisc', 'add', 'dev', device, 'parent', '1:1', 'handle', '10:', ...tbf],
  ];
}

function assertLinkCap(cap: LinkCap): void {
  const positive = (value: number | undefined) => value === undefined || (Number.isFinite(value) && value > 0);
  if (!positive(cap.rateMbit) || !positive(cap.burstKb)) {
    throw new HarnessError(`rateMbit and burstKb must be positive numbers: ${JSON.stringify(cap)}`);
  }
  if (cap.latencyMs !== undefined && !(Number.isFinite(cap.latencyMs) && cap.latencyMs >= 0)) {
    throw new HarnessError(`latencyMs must be a number ≥ 0: ${JSON.stringify(cap)}`);
  }
}

/** Removes stale networks, then makes this harness's bridge. */
export async function startHarnessNetwork(input: { baseDir: string }): Promise<HarnessNetwork> {
  assertNetworkBinaries();
  const tag = instanceTag(input.baseDir);
  await removeStaleNetworks(tag);
  const routes = JSON.parse((await ip(['-j', '-4', 'route', 'show', 'table', 'all'])) || '[]') as Array<{
    dst: string;
  }>;
  const subnet = pickSubnet(
    tag,
    routes.map((r) => r.dst),
  );
  const bridge = `${LINK_PREFIX}${tag}br`;
  const address = formatIpv4(subnet + 1);
  await ip(['link', 'add', 'name', bridge, 'address', bridgeMacAddress(tag), 'type', 'bridge']);
  const stop = () => quietly('ip', ['link', 'del', bridge]);
  try {
    await ip(['link', 'set', 'dev', bridge, 'alias', `${OWNER_ALIAS} pid=${process.pid} start=${await startTime()}`]);
    // Where br_netfilter is loaded, bridged frames would otherwise pass the machine's iptables FORWARD chain, which
    // may drop them. Without br_netfilter there is nothing to turn off and the kernel refuses the options.
    await quietly('ip', ['link', 'set', bridge, 'type', 'bridge', 'nf_call_iptables', '0', 'nf_call_ip6tables', '0']);
    await ip(['addr', 'add', `${address}/24`, 'dev', bridge]);
    await ip(['link', 'set', bridge, 'up']);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    tag,
    bridge,
    address,
    cidr: `${formatIpv4(subnet)}/24`,
    hostAddress: (index) => formatIpv4(subnet + 1 + index),
    stop,
  };
}

/** Host n's namespace, attached to the bridge, with its address and a default route via the bridge. */
export async function addHostLink(network: HarnessNetwork, index: number): Promise<HostLink> {
  const { netns, rootDevice } = hostLinkNames(network.tag, index);
  const link = { netns, rootDevice, address: network.hostAddress(index) };
  await removeHostLink(link);
  try {
    await ip(['netns', 'add', netns]);
    await ip(['link', 'add', rootDevice, 'type', 'veth', 'peer', 'name', HOST_DEVICE, 'netns', netns]);
    await ip(['link', 'set', rootDevice, 'master', network.bridge, 'up']);
    await ip(['-n', netns, 'addr', 'add', `${link.address}/24`, 'dev', HOST_DEVICE]);
    await ip(['-n', netns, 'link', 'set', HOST_DEVICE, 'up']);
    await ip(['-n', netns, 'link', 'set', 'lo', 'up']);
    await ip(['-n', netns, 'route', 'add', 'default', 'via', network.address]);
  } catch (err) {
    await removeHostLink(link);
    throw err;
  }
  return link;
}

export async function removeHostLink(link: Pick<HostLink, 'netns' | 'rootDevice'>): Promise<void> {
  // Deleting the root end takes its peer along even while a process still holds the namespace open.
  await quietly('ip', ['link', 'del', link.rootDevice]);
  await quietly('ip', ['netns', 'del', link.netns]);
}

/**
 * Cuts the host off the bridge (its port down) or joins it again: the partition a failover test needs. Inside the
 * namespace the device stays up, so the host's own processes see a silent network, not a missing one.
 */
export async function setLinkUp(link: Pick<HostLink, 'rootDevice'>, up: boolean): Promise<void> {
  await ip(['link', 'set', link.rootDevice, up ? 'up' : 'down']);
}

/**
 * Caps both directions of the host's link: traffic leaving the host on eth0 inside its namespace, traffic reaching
 * it on the bridge port. `undefined` removes the caps.
 */
export async function setLinkCap(link: HostLink, cap: LinkCap | undefined): Promise<void> {
  if (cap !== undefined) assertLinkCap(cap);
  const sides = [
    { prefix: ['-n', link.netns], device: HOST_DEVICE },
    { prefix: [], device: link.rootDevice },
  ];
  const uncap = async () => {
    for (const side of sides) await quietly('tc', [...side.prefix, 'qdisc', 'del', 'dev', side.device, 'root']);
  };
  await uncap();
  if (cap === undefined) return;
  try {
    for (const side of sides) {
      for (const args of capQdiscArgs(side.device, cap)) await run('tc', [...side.prefix, ...args]);
    }
  } catch (err) {
    await uncap();
    if (err instanceof HarnessError && err.message.includes('qdisc kind is unknown')) {
      throw new HarnessError(
        `this kernel has no netem (sch_netem), so latencyMs cannot be emulated; the link is left uncapped (${err.message})`,
      );
    }
    throw err;
  }
}

async function removeStaleNetworks(ownTag: string): Promise<void> {
  const links = JSON.parse((await ip(['-j', 'link', 'show'])) || '[]') as Array<{ ifname: string; ifalias?: string }>;
  const stale = new Set([ownTag]);
  for (const link of links) {
    const tag = BRIDGE_PATTERN.exec(link.ifname)?.[1];
    if (tag && link.ifalias?.startsWith(OWNER_ALIAS) && !(await ownerAlive(link.ifalias))) stale.add(tag);
  }
  const namespaces = JSON.parse((await ip(['-j', 'netns', 'list'])) || '[]') as Array<{ name: string }>;
  for (const tag of stale) {
    for (const link of links.filter((l) => l.ifname.startsWith(`${LINK_PREFIX}${tag}`))) {
      await quietly('ip', ['link', 'del', link.ifname]);
    }
    for (const { name } of namespaces.filter((n) => n.name.startsWith(`${NETNS_PREFIX}${tag}-`))) {
      await quietly('ip', ['netns', 'del', name]);
    }
  }
}

async function ownerAlive(alias: string): Promise<boolean> {
  const match = /pid=(\d+) start=(\d+)/.exec(alias);
  if (!match) return false;
  // The start time tells the owner from a later process that reuses its PID.
  return (await startTime(Number(match[1]))) === match[2];
}

async function startTime(pid: number | 'self' = 'self'): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  // Field 22 of stat(5), counted from the state (field 3) after the parenthesised command name.
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

function ip(args: string[]): Promise<string> {
  return run('ip', args);
}

async function run(file: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync(file, args, {
      env: { ...process.env, PATH: searchPath(), LC_ALL: 'C', LANG: 'C' },
      timeout: 30_000,
    });
    return stdout;
  } catch (err) {
    const { stderr, message } = err as { stderr?: string; message: string };
    throw new HarnessError(`${file} ${args.join(' ')}: ${stderr?.trim() || message}`);
  }
}

/** For removals of what may already be gone. */
async function quietly(file: string, args: string[]): Promise<void> {
  await run(file, args).catch(() => undefined);
}
