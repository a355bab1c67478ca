/**
 * The DWCP benchmark's two links: the loopback of one network namespace, and a veth pair between two namespaces
 * capped at 100 Mbit/s each way with `tc tbf`, with a private /30 that exists only inside them. Also the shell
 * helpers the benchmark runs its tools with, and the interface counters that give bytes on the wire.
 */
import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

export const exec = promisify(execFile);

const NS_A = 'novacron-dwcp-a';
const NS_B = 'novacron-dwcp-b';
const VETH_A = 'nvcdwcp-a';
const VETH_B = 'nvcdwcp-b';
/** A private /30 that exists only inside the two namespaces this benchmark creates. */
export const ADDR_A = '10.213.7.1';
export const ADDR_B = '10.213.7.2';
export const CAP_MBPS = 100;

export interface Link {
  name: string;
  senderNs: string;
  receiverNs: string;
  host: string;
  /** Interface whose tx+rx counters measure the traffic, in the sender's namespace. */
  counterIf: string;
  rateMbps: number | undefined;
}

export const LINKS: Link[] = [
  { name: 'loopback', senderNs: NS_A, receiverNs: NS_A, host: '127.0.0.1', counterIf: 'lo', rateMbps: undefined },
  {
    name: `veth-tbf-${CAP_MBPS}mbit`,
    senderNs: NS_A,
    receiverNs: NS_B,
    host: ADDR_B,
    counterIf: VETH_A,
    rateMbps: CAP_MBPS,
  },
];

export async function sh(command: string, args: string[]): Promise<string> {
  const { stdout } = await exec(command, args, { maxBuffer: 16 * 1024 * 1024, timeout: 30 * 60_000 });
  return stdout;
}

async function quiet(command: string, args: string[]): Promise<void> {
  await exec(command, args).catch(() => undefined);
}

export async function teardownNamespaces(): Promise<void> {
  await quiet('ip', ['netns', 'del', NS_A]);
  await quiet('ip', ['netns', 'del', NS_B]);
}

export async function setupNamespaces(): Promise<void> {
  await teardownNamespaces();
  await sh('ip', ['netns', 'add', NS_A]);
  await sh('ip', ['netns', 'add', NS_B]);
  await sh('ip', ['link', 'add', VETH_A, 'type', 'veth', 'peer', 'name', VETH_B]);
  await sh('ip', ['link', 'set', VETH_A, 'netns', NS_A]);
  await sh('ip', ['link', 'set', VETH_B, 'netns', NS_B]);
  for (const [ns, dev, addr] of [
    [NS_A, VETH_A, ADDR_A],
    [NS_B, VETH_B, ADDR_B],
  ] as const) {
    await sh('ip', ['-n', ns, 'addr', 'add', `${addr}/30`, 'dev', dev]);
    await sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
    await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    // Both directions capped, like a symmetric WAN link; the burst is ~4 ms of traffic at the cap.
    await sh('ip', [
      'netns',
      'exec',
      ns,
      'tc',
      'qdisc',
      'add',
      'dev',
      dev,
      'root',
      'tbf',
      'rate',
      `${CAP_MBPS}mbit`,
      'burst',
      '64kb',
      'latency',
      '50ms',
    ]);
  }
}

export async function counters(link: Link): Promise<number> {
  const read = async (name: string): Promise<number> =>
    Number(
      (
        await sh('ip', ['netns', 'exec', link.senderNs, 'cat', `/sys/class/net/${link.counterIf}/statistics/${name}`])
      ).trim(),
    );
  // On lo every packet is counted once as tx and once as rx; on the veth, tx and rx are the two directions.
  if (link.counterIf === 'lo') return read('tx_bytes');
  return (await read('tx_bytes')) + (await read('rx_bytes'));
}

export async function waitListening(ns: string, port: number): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const out = await sh('ip', ['netns', 'exec', ns, 'ss', '-Hltn', `sport = :${port}`]);
    if (out.trim() !== '') return;
    await sleep(50);
  }
  throw new Error(`nothing listens on port ${port} in ${ns}`);
}
