/**
 * The networked harness on real daemons, with plain virsh and small TCP tools run inside the hosts' namespaces:
 * the hosts reach each other and the machine, a guest migrates peer-to-peer and back managed-direct, a capped link
 * carries near its cap, two harnesses at once keep apart, and a killed harness's network goes at the next start.
 * Without libvirt or iproute2 this fails (it does not skip), as the libvirt test does.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import { waitUntil } from '../../test/support/wait';
import { assertHypervisorBinaries, HarnessError, startLocalHypervisors } from './harness';
import type { LocalHypervisor, LocalHypervisors } from './harness';
import {
  addHostLink,
  assertNetworkBinaries,
  bridgeMacAddress,
  removeHostLink,
  startHarnessNetwork,
} from './harness-network';

const exec = promisify(execFile);
const LIBVIRTD_TCP_PORT = 16509;
const GUEST = 'hn-guest-1';
const MiB = 1024 * 1024;
// Generous bounds for a loaded 2-core machine: a capped link must not exceed its cap by half, and an uncapped
// veth pair through a bridge carries gigabits, so twice the cap is far below it.
const CAP_MBIT = 100;
const CAPPED_CEILING_MBIT = 150;
const CAPPED_FLOOR_MBIT = 40;

// Counts the bytes of one connection from its first byte to its end, and prints them with the time taken.
const SINK = `
const server = require('net').createServer((socket) => {
  let bytes = 0, first;
  socket.on('data', (chunk) => { first ??= process.hrtime.bigint(); bytes += chunk.length; });
  socket.on('end', () => {
    const ms = first === undefined ? 0 : Number(process.hrtime.bigint() - first) / 1e6;
    console.log(JSON.stringify({ bytes, ms }));
    socket.end();
    server.close();
  });
});
server.listen(0, process.argv[1], () => console.log(JSON.stringify({ port: server.address().port })));
`;
// Sends process.argv[3] bytes to host argv[1], port argv[2]; with 0 bytes it only proves the connection opens.
const SOURCE = `
const [host, port, total] = process.argv.slice(1).map((v, i) => (i === 0 ? v : Number(v)));
const chunk = Buffer.alloc(1024 * 1024, 7);
const socket = require('net').connect({ host, port, timeout: 10000 }, async () => {
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (!socket.write(chunk.subarray(0, Math.min(chunk.length, total - sent)))) {
      await new Promise((resolve) => socket.once('drain', resolve));
    }
  }
  socket.end();
});
socket.on('timeout', () => socket.destroy(new Error('timed out')));
socket.on('error', (err) => { console.error(err.message); process.exit(1); });
socket.on('close', () => process.exit(0));
`;

let scratch: string;
let hypervisors: LocalHypervisors | undefined;
let host1: LocalHypervisor;
let host2: LocalHypervisor;

before(async () => {
  assertHypervisorBinaries();
  assertNetworkBinaries();
  scratch = await mkdtemp(join(tmpdir(), 'novacron-harness-network-'));
  hypervisors = await startLocalHypervisors({ count: 2, baseDir: join(scratch, 'hv'), network: true });
  [host1, host2] = hypervisors.hosts as [LocalHypervisor, LocalHypervisor];
});

after(async () => {
  await virsh(host1?.uri ?? '', ['destroy', GUEST]).catch(() => undefined);
  await virsh(host2?.uri ?? '', ['destroy', GUEST]).catch(() => undefined);
  await hypervisors?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

async function virsh(uri: string, args: string[]): Promise<string> {
  const { stdout } = await exec('virsh', ['-c', uri, ...args], { env: { ...process.env, LC_ALL: 'C' } });
  return stdout;
}

async function domainNames(uri: string): Promise<string[]> {
  return (await virsh(uri, ['list', '--name'])).split('\n').filter((n) => n !== '');
}

async function namespaces(): Promise<string[]> {
  const { stdout } = await exec('ip', ['-j', 'netns', 'list']);
  return (JSON.parse(stdout || '[]') as Array<{ name: string }>).map((n) => n.name);
}

async function linkExists(name: string): Promise<boolean> {
  return exec('ip', ['link', 'show', name]).then(
    () => true,
    () => false,
  );
}

/** Runs a TCP source inside `netns` (or the root namespace) towards host:port. */
async function sendFrom(netns: string | undefined, target: { host: string; port: number; bytes: number }) {
  const node = [process.execPath, '-e', SOURCE, target.host, String(target.port), String(target.bytes)];
  const [file, ...args] = netns ? ['ip', 'netns', 'exec', netns, ...node] : node;
  await exec(file!, args, { timeout: 60_000 });
}

/** Mbit/s of one transfer from `from`'s namespace to `to`'s migration address, as the receiver counted it. */
async function measureMbit(from: LocalHypervisor, to: LocalHypervisor, bytes: number): Promise<number> {
  const sink = spawn('ip', ['netns', 'exec', to.netns!, process.execPath, '-e', SINK, to.migrationAddress], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    const lines = createInterface({ input: sink.stdout })[Symbol.asyncIterator]();
    const { port } = JSON.parse(String((await lines.next()).value)) as { port: number };
    await sendFrom(from.netns, { host: to.migrationAddress, port, bytes });
    const result = JSON.parse(String((await lines.next()).value)) as { bytes: number; ms: number };
    assert.equal(result.bytes, bytes, 'the receiver got every byte');
    return (result.bytes * 8) / (result.ms / 1000) / 1e6;
  } finally {
    sink.kill();
  }
}

test('each host has its own migration ports, address, namespace and TCP libvirtd', async () => {
  const network = hypervisors!.network!;
  assert.ok(host1.migrationPorts.max < host2.migrationPorts.min, 'the port ranges do not overlap');
  assert.notEqual(host1.netns, host2.netns);
  for (const host of [host1, host2]) {
    assert.ok(host.netns && (await namespaces()).includes(host.netns), `${host.hostId} has a named namespace`);
    assert.equal(host.peerUri, `qemu+tcp://${host.migrationAddress}/system`);
    const prefix = network.cidr.replace(/\.0\/24$/, '.');
    assert.ok(host.migrationAddress.startsWith(prefix), `${host.migrationAddress} lies in ${network.cidr}`);
    // The TCP URI reaches that host's own daemon, not another one.
    const capabilities = await virsh(host.peerUri, ['capabilities']);
    assert.match(capabilities, new RegExp(`<uuid>${host.hostUuid}</uuid>`));
  }
  // Host to host, both ways, at the address migrations use.
  await sendFrom(host1.netns, { host: host2.migrationAddress, port: LIBVIRTD_TCP_PORT, bytes: 0 });
  await sendFrom(host2.netns, { host: host1.migrationAddress, port: LIBVIRTD_TCP_PORT, bytes: 0 });
  // A process on the machine is reached from a host at the bridge's address.
  const server = createServer((socket) => socket.end());
  server.listen(0, network.address);
  await once(server, 'listening');
  try {
    const { port } = server.address() as AddressInfo;
    await sendFrom(host1.netns, { host: network.address, port, bytes: 0 });
  } finally {
    server.close();
  }
  // From the root namespace to a host.
  const socket = connect({ host: host2.migrationAddress, port: LIBVIRTD_TCP_PORT });
  await once(socket, 'connect');
  socket.destroy();
});

test('the others still reach the bridge when the host whose port had the lowest MAC goes', async () => {
  const network = await startHarnessNetwork({ baseDir: join(scratch, 'hv-mac') });
  const bridgeMac = () => readFile(`/sys/class/net/${network.bridge}/address`, 'utf8').then((mac) => mac.trim());
  const [gone, staying] = [await addHostLink(network, 1), await addHostLink(network, 2)];
  const server = createServer((socket) => socket.end());
  try {
    // The lowest unicast address there is: an unpinned bridge would take it as its own.
    await exec('ip', ['link', 'set', gone.rootDevice, 'address', '02:00:00:00:00:00']);
    assert.equal(await bridgeMac(), bridgeMacAddress(network.tag));
    server.listen(0, network.address);
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    await sendFrom(staying.netns, { host: network.address, port, bytes: 0 });
    await removeHostLink(gone);
    assert.equal(await bridgeMac(), bridgeMacAddress(network.tag), 'the bridge kept its address');
    // With the old entry in its ARP cache: a bridge that changed its MAC stays unreachable for tens of seconds,
    // past the source's 10 s timeout.
    await sendFrom(staying.netns, { host: network.address, port, bytes: 0 });
  } finally {
    server.close();
    await removeHostLink(gone);
    await removeHostLink(staying);
    await network.stop();
  }
});

test('a guest migrates peer-to-peer to host-2 and back managed-direct', async () => {
  const xml =
    `<domain type='qemu'><name>${GUEST}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>` +
    `<os><type arch='x86_64' machine='pc'>hvm</type></os>` +
    `<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>`;
  const xmlFile = join(scratch, `${GUEST}.xml`);
  await writeFile(xmlFile, xml);
  await virsh(host1.uri, ['create', xmlFile]);

  // libvirt refuses --p2p to a unix-socket URI; host-2's TCP URI names a server other than this one. The cap
  // stretches the move to seconds, so the port host-2's QEMU takes it on can be seen.
  await host1.setLinkCap({ rateMbit: 2 });
  const ports = new Set<number>();
  try {
    let done = false;
    // Settles to the error, if any, so that a failure while the loop awaits is not an unhandled rejection.
    const migration = virsh(host1.uri, ['migrate', '--live', '--p2p', GUEST, host2.peerUri!])
      .then(
        () => undefined,
        (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
      )
      .finally(() => (done = true));
    while (!done) {
      const { stdout } = await exec('ip', ['netns', 'exec', host2.netns!, 'ss', '-Htan']);
      // State, Recv-Q, Send-Q, local address:port, peer address:port.
      for (const line of stdout.split('\n')) {
        const port = Number(line.trim().split(/\s+/)[3]?.split(':').pop());
        if (port >= 49152) ports.add(port);
      }
      await sleep(50);
    }
    const failure = await migration;
    if (failure !== undefined) throw failure;
  } finally {
    await host1.setLinkCap(undefined);
  }
  const { min, max } = host2.migrationPorts;
  assert.ok(
    [...ports].some((p) => p >= min && p <= max),
    `host-2 took it on ${[...ports].join(', ')}, in ${min}-${max}`,
  );
  assert.deepEqual(await domainNames(host2.uri), [GUEST]);
  assert.deepEqual(await domainNames(host1.uri), []);

  await virsh(host2.uri, ['migrate', '--live', GUEST, host1.uri, '--migrateuri', `tcp://${host1.migrationAddress}`]);
  assert.deepEqual(await domainNames(host1.uri), [GUEST]);
  assert.deepEqual(await domainNames(host2.uri), []);
  assert.match(await virsh(host1.uri, ['domstate', GUEST]), /running/);
  await virsh(host1.uri, ['destroy', GUEST]);
});

test(`a link capped at ${CAP_MBIT} Mbit/s carries near that, both ways, and far less than uncapped`, async () => {
  const uncapped = await measureMbit(host1, host2, 64 * MiB);
  await host1.setLinkCap({ rateMbit: CAP_MBIT });
  try {
    const out = await measureMbit(host1, host2, 12 * MiB);
    const back = await measureMbit(host2, host1, 12 * MiB);
    process.stdout.write(
      `# uncapped ${uncapped.toFixed(0)} Mbit/s; capped ${out.toFixed(1)} out, ${back.toFixed(1)} in\n`,
    );
    for (const capped of [out, back]) {
      assert.ok(capped < CAPPED_CEILING_MBIT && capped > CAPPED_FLOOR_MBIT, `capped at ${capped} Mbit/s`);
      assert.ok(uncapped > 2 * capped, `uncapped ${uncapped} Mbit/s vs capped ${capped}`);
    }
  } finally {
    await host1.setLinkCap(undefined);
  }
  const again = await measureMbit(host1, host2, 64 * MiB);
  assert.ok(again > 2 * CAP_MBIT, `uncapped again at ${again} Mbit/s`);

  // Where the kernel has no netem, latency is refused with a reason and the link left uncapped, never half-done.
  const latency = await host1.setLinkCap({ rateMbit: CAP_MBIT, latencyMs: 5 }).then(
    () => undefined,
    (err: unknown) => err,
  );
  const { stdout: qdiscs } = await exec('tc', ['-n', host1.netns!, 'qdisc', 'show', 'dev', 'eth0']);
  await host1.setLinkCap(undefined);
  if (latency === undefined) {
    assert.match(qdiscs, /netem[\s\S]*tbf/);
  } else {
    assert.ok(latency instanceof HarnessError);
    assert.match(latency.message, /netem/);
    assert.doesNotMatch(qdiscs, /tbf|netem/);
  }
  await assert.rejects(host1.setLinkCap({ rateMbit: 0 }), HarnessError);
});

test('a second harness keeps apart, and removes the network a killed harness left', async () => {
  const killedDir = join(scratch, 'hv-killed');
  const cli = spawn(
    process.execPath,
    ['--import', 'tsx', join(__dirname, 'harness-cli.ts'), 'start', '--count', '1', '--dir', killedDir, '--network'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const lines = createInterface({ input: cli.stdout })[Symbol.asyncIterator]();
  const killedHost = JSON.parse(String((await lines.next()).value)) as { netns: string; peerUri: string };
  const killedNetwork = (JSON.parse(String((await lines.next()).value)) as { network: { bridge: string } }).network;
  assert.match(await virsh(killedHost.peerUri, ['uri']), /qemu/);
  cli.kill('SIGKILL');
  await once(cli, 'exit');
  // Its daemons die with it; its namespace and bridge stay behind.
  await waitUntil('the killed harness daemon to go', () =>
    virsh(killedHost.peerUri, ['uri']).then(
      () => false,
      () => true,
    ),
  );
  assert.ok((await namespaces()).includes(killedHost.netns));
  assert.ok(await linkExists(killedNetwork.bridge));

  const second = await startLocalHypervisors({ count: 1, baseDir: join(scratch, 'hv-second'), network: true });
  try {
    const [other] = second.hosts as [LocalHypervisor];
    assert.ok(!(await namespaces()).includes(killedHost.netns), 'the killed harness namespace is gone');
    assert.ok(!(await linkExists(killedNetwork.bridge)), 'the killed harness bridge is gone');

    assert.notEqual(second.network!.bridge, hypervisors!.network!.bridge);
    assert.notEqual(second.network!.cidr, hypervisors!.network!.cidr);
    assert.ok(![host1.netns, host2.netns].includes(other.netns));
    assert.match(await virsh(other.peerUri!, ['capabilities']), new RegExp(`<uuid>${other.hostUuid}</uuid>`));
    // The first harness's hosts still answer at theirs.
    assert.match(await virsh(host1.peerUri!, ['capabilities']), new RegExp(`<uuid>${host1.hostUuid}</uuid>`));
  } finally {
    await second.stop();
  }
  assert.ok(!(await namespaces()).includes(second.hosts[0]!.netns!), 'a stopped harness removes its namespace');
  assert.ok(!(await linkExists(second.network!.bridge)), 'and its bridge');
});
