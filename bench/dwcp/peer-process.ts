/**
 * What the benchmark's peer processes (bench/dwcp/peer.ts, bench/dwcp/stream-peer.ts) share: their certificates,
 * their CPU figure, a worker pool warmed as in a long-running host agent, and the way a peer reports and exits.
 */
import { readFile } from 'node:fs/promises';
import type { TlsMaterial } from '../../native/dwcp/certs';
import { DwcpWorkerPool } from '../../native/dwcp/worker-pool';

export async function readPeerTls(input: { caPath: string; certPath: string; keyPath: string }): Promise<TlsMaterial> {
  return {
    ca: await readFile(input.caPath),
    cert: await readFile(input.certPath),
    key: await readFile(input.keyPath),
  };
}

/** CPU seconds of the whole process (every thread) since `from`. */
export function cpuSecondsSince(from: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(from);
  return (used.user + used.system) / 1e6;
}

/** A pool whose workers have started and loaded their code, as in a long-running host agent. */
export async function warmPool(): Promise<DwcpWorkerPool> {
  const pool = new DwcpWorkerPool();
  await Promise.all(
    Array.from({ length: pool.size }, () => pool.run({ kind: 'encode', data: Buffer.alloc(4096, 1), level: 1 })),
  );
  return pool;
}

/** The last stdout line of a peer is its JSON result (bench/dwcp/measure.ts reads it). */
export function printResult(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/** Runs a peer's main and exits, with the error on stderr when it failed. */
export function runPeer(main: () => Promise<void>): void {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
