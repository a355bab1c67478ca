/**
 * Runs local hypervisors in the foreground until SIGINT or SIGTERM:
 *
 *   tsx native/libvirt/harness-cli.ts start --count 2 --dir /tmp/novacron-hv [--network]
 *
 * Prints one JSON line per host (hostId, uri, socketDir, migrationPorts, migrationAddress, and with --network
 * peerUri and netns) so scripts can pick the URIs up, then with --network one line with the bridge.
 */
import { parseArgs } from 'node:util';

import { startLocalHypervisors } from './harness';

async function main(): Promise<void> {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      count: { type: 'string', default: '2' },
      dir: { type: 'string' },
      network: { type: 'boolean', default: false },
    },
  });
  if (positionals[0] !== 'start' || values.dir === undefined) {
    process.stderr.write('usage: harness-cli.ts start --count N --dir /absolute/dir [--network]\n');
    process.exitCode = 2;
    return;
  }
  const hypervisors = await startLocalHypervisors({
    count: Number(values.count),
    baseDir: values.dir,
    network: values.network,
  });
  for (const host of hypervisors.hosts) {
    const { hostId, uri, socketDir, migrationPorts, migrationAddress, peerUri, netns } = host;
    process.stdout.write(
      `${JSON.stringify({ hostId, uri, socketDir, migrationPorts, migrationAddress, peerUri, netns })}\n`,
    );
  }
  if (hypervisors.network) process.stdout.write(`${JSON.stringify({ network: hypervisors.network })}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await hypervisors.stop();
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
