/**
 * One DWCP endpoint of a benchmark run, as its own process so it can live in a network namespace and be timed by
 * /usr/bin/time like the baseline tools. argv[2] is a JSON config; the last stdout line is a JSON result.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { chunkingParams, fixedChunking } from '../../native/dwcp/chunking';
import { DwcpWorkerPool, measureCompression, sampleFileData } from '../../native/dwcp/worker-pool';
import { probeLink } from '../../native/dwcp/mode';
import { DwcpReceiver } from '../../native/dwcp/receiver';
import { sendFile } from '../../native/dwcp/send-file';

const ConfigSchema = z.object({
  role: z.enum(['receive', 'send', 'serve-probe', 'probe', 'calibrate']),
  caPath: z.string(),
  certPath: z.string(),
  keyPath: z.string(),
  host: z.string(),
  port: z.number().int(),
  transferId: z.string(),
  path: z.string(),
  streams: z.number().int().positive(),
  chunkAvgBytes: z.number().int().positive(),
  firstCopyChunkBytes: z.number().int().nonnegative().default(0),
  wholeFileSha256: z.boolean().default(true),
  compressionLevel: z.number().int().nonnegative(),
  maxInFlightChunks: z.number().int().positive(),
});

/** CPU seconds of the whole process (every thread) since `from`. */
function cpuSecondsSince(from: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(from);
  return (used.user + used.system) / 1e6;
}

/** A pool whose workers have started and loaded their code, as in a long-running host agent. */
async function warmPool(): Promise<DwcpWorkerPool> {
  const pool = new DwcpWorkerPool();
  await Promise.all(
    Array.from({ length: pool.size }, () => pool.run({ kind: 'encode', data: Buffer.alloc(4096, 1), level: 1 })),
  );
  return pool;
}

async function main(): Promise<void> {
  const config = ConfigSchema.parse(JSON.parse(process.argv[2] ?? '{}'));
  const tls = {
    ca: await readFile(config.caPath),
    cert: await readFile(config.certPath),
    key: await readFile(config.keyPath),
  };
  const out = (value: unknown): void => {
    process.stdout.write(`${JSON.stringify(value)}\n`);
  };
  switch (config.role) {
    case 'receive': {
      const pool = await warmPool();
      // Sidecars on, as a host agent that keeps its images' chunk indexes would run (delta-warm relies on them).
      const receiver = await DwcpReceiver.start({
        tls,
        host: config.host,
        port: config.port,
        pool,
        indexSidecars: true,
      });
      const result = receiver.expectFile({ transferId: config.transferId, targetPath: config.path });
      const cpu = process.cpuUsage();
      process.stdout.write(`listening ${receiver.port}\n`);
      const received = await result;
      out({ ...received, cpuSeconds: cpuSecondsSince(cpu) });
      await receiver.close();
      await pool.close();
      return;
    }
    case 'serve-probe': {
      const receiver = await DwcpReceiver.start({ tls, host: config.host, port: config.port });
      process.stdin.resume();
      await new Promise((resolve) => process.stdin.once('end', resolve));
      await receiver.close();
      return;
    }
    case 'send': {
      const pool = await warmPool();
      process.stdout.write('ready\n');
      await new Promise((resolve) => process.stdin.once('data', resolve));
      const cpu = process.cpuUsage();
      const result = await sendFile({
        host: config.host,
        port: config.port,
        tls,
        pool,
        transferId: config.transferId,
        sourcePath: config.path,
        streams: config.streams,
        chunking: chunkingParams({ avgBytes: config.chunkAvgBytes }),
        ...(config.firstCopyChunkBytes > 0
          ? { firstCopyChunking: fixedChunking({ bytes: config.firstCopyChunkBytes }) }
          : {}),
        compressionLevel: config.compressionLevel,
        maxInFlightChunks: config.maxInFlightChunks,
        wholeFileSha256: config.wholeFileSha256,
      });
      out({ ...result, cpuSeconds: cpuSecondsSince(cpu) });
      await pool.close();
      return;
    }
    case 'probe':
      out(await probeLink({ host: config.host, port: config.port, tls, pings: 20, durationMs: 2000, streams: 2 }));
      return;
    case 'calibrate': {
      const pool = new DwcpWorkerPool();
      try {
        const sample = await sampleFileData(config.path);
        if (!sample) throw new Error(`${config.path} holds no data to calibrate on`);
        out({ ...(await measureCompression({ pool, sample, durationMs: 500 })), workers: pool.size });
      } finally {
        await pool.close();
      }
      return;
    }
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
