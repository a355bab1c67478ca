/**
 * One DWCP endpoint of a benchmark run, as its own process so it can live in a network namespace and be timed by
 * /usr/bin/time like the baseline tools. argv[2] is a JSON config; the last stdout line is a JSON result.
 */
import { z } from 'zod';
import { CHUNK_HASHES } from '../../native/dwcp/chunk-hash';
import { chunkingParams, fixedChunking } from '../../native/dwcp/chunking';
import { DwcpWorkerPool, measureCompression, sampleFileData } from '../../native/dwcp/worker-pool';
import { probeLink } from '../../native/dwcp/mode';
import { DwcpReceiver } from '../../native/dwcp/receiver';
import { sendFile } from '../../native/dwcp/send-file';
import { cpuSecondsSince, printResult, readPeerTls, runPeer, warmPool } from './peer-process';

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
  /** What the sender offers; absent: what this build can compute. */
  chunkHashes: z.array(z.enum(CHUNK_HASHES)).min(1).optional(),
});

async function main(): Promise<void> {
  const config = ConfigSchema.parse(JSON.parse(process.argv[2] ?? '{}'));
  const tls = await readPeerTls(config);
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
      printResult({ ...received, cpuSeconds: cpuSecondsSince(cpu) });
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
        ...(config.chunkHashes !== undefined ? { chunkHashes: config.chunkHashes } : {}),
      });
      printResult({ ...result, cpuSeconds: cpuSecondsSince(cpu) });
      await pool.close();
      return;
    }
    case 'probe':
      printResult(
        await probeLink({ host: config.host, port: config.port, tls, pings: 20, durationMs: 2000, streams: 2 }),
      );
      return;
    case 'calibrate': {
      const pool = new DwcpWorkerPool();
      try {
        const sample = await sampleFileData(config.path);
        if (!sample) throw new Error(`${config.path} holds no data to calibrate on`);
        printResult({ ...(await measureCompression({ pool, sample, durationMs: 500 })), workers: pool.size });
      } finally {
        await pool.close();
      }
      return;
    }
  }
}

runPeer(main);
