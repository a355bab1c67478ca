/**
 * The stream runs of the DWCP benchmark, as run specs for one link: an ordered byte stream as a live migration
 * carries it, through DWCP stream mode (datacenter, internet and probe-chosen parameters) and through the direct
 * baseline, plain Node `net` sockets with the same data (tool `raw-tcp`). Both ends are bench/dwcp/stream-peer.ts.
 *
 * - `stream-random`: incompressible bytes (RAM pages of a busy guest compress little), one channel.
 * - `stream-random-4ch`: the same bytes in 4 channels, as QEMU's multifd sends them (4 connections for raw-tcp).
 * - `stream-image`: the v1 image as one stream: text, binaries and long zero runs, as in an idle guest's RAM.
 * - `stream-latency` (uncapped links only): a 4 KiB write (one guest page) every 5 ms; the time from each write into
 *   the source to its arrival at the sink, p50 and p99.
 */
import { createHash, randomFill, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { DwcpMode, MODE_PARAMETERS, type ModeParameters } from '../../native/dwcp/mode';
import { STREAM_SCENARIOS, type RunSpec, type Scenario } from './measure';
import { nodeArgv, type LinkContext } from './tools';

export const STREAM_PEER = path.join(__dirname, 'stream-peer.ts');

export type StreamParams = Pick<
  ModeParameters,
  'streams' | 'streamChunkBytes' | 'compressionLevel' | 'maxInFlightChunks'
>;

/** Enough for about a second of a direct connection on loopback, and 10 s on the capped link. */
const RANDOM_BYTES_UNCAPPED = 512 * 1024 * 1024;
const RANDOM_BYTES_CAPPED = 128 * 1024 * 1024;
const CHANNELS = 4;
const LATENCY = { writes: 1000, intervalMs: 5, writeBytes: 4096 };

export interface StreamData {
  randomPath: string;
  /** The sha256 of the first `bytes` of the random data, computed once per length. */
  randomSha256: (bytes: number) => Promise<string>;
}

/** The random data, made once and cached beside the images (never committed). */
export async function ensureStreamData(input: { dir: string }): Promise<StreamData> {
  const randomPath = path.join(input.dir, `random-${RANDOM_BYTES_UNCAPPED / 1024 / 1024}m.bin`);
  const existing = await stat(randomPath).catch(() => undefined);
  if (existing?.size !== RANDOM_BYTES_UNCAPPED) {
    const file = await open(randomPath, 'w');
    try {
      const block = Buffer.allocUnsafe(16 * 1024 * 1024);
      for (let at = 0; at < RANDOM_BYTES_UNCAPPED; at += block.length) {
        await promisify(randomFill)(block);
        await file.write(block, 0, block.length, at);
      }
    } finally {
      await file.close();
    }
  }
  const hashes = new Map<number, Promise<string>>();
  const randomSha256 = (bytes: number): Promise<string> => {
    let hash = hashes.get(bytes);
    if (hash === undefined) {
      hash = hashPrefix(randomPath, bytes);
      hashes.set(bytes, hash);
    }
    return hash;
  };
  return { randomPath, randomSha256 };
}

async function hashPrefix(file: string, bytes: number): Promise<string> {
  const hash = createHash('sha256');
  for await (const piece of createReadStream(file, { start: 0, end: bytes - 1 })) hash.update(piece as Buffer);
  return hash.digest('hex');
}

/**
 * Every stream run on one link, in the order one iteration runs them; each is made when it runs, on the next port.
 * `auto` is what the link's probe and calibration chose.
 */
export function streamSpecs(input: {
  ctx: LinkContext;
  data: StreamData;
  target: string;
  v1Sha: string;
  auto: StreamParams;
  include: (tool: string, scenario: Scenario) => boolean;
  nextPort: () => number;
  /** Instead of sendStream's default. */
  idleFlushMs: number | undefined;
}): Array<() => Promise<RunSpec>> {
  const { ctx, data, target } = input;
  const { link, dataset, pki } = ctx;
  const randomBytes = link.rateMbps === undefined ? RANDOM_BYTES_UNCAPPED : RANDOM_BYTES_CAPPED;
  const scenarios = STREAM_SCENARIOS.filter((s) => s !== 'stream-latency' || link.rateMbps === undefined);
  const tools: [string, StreamParams | undefined][] = [
    ['raw-tcp', undefined],
    [`dwcp-${DwcpMode.DATACENTER}`, MODE_PARAMETERS.datacenter],
    [`dwcp-${DwcpMode.INTERNET}`, MODE_PARAMETERS.internet],
    ['dwcp-auto', input.auto],
  ];
  const specs: Array<() => Promise<RunSpec>> = [];
  for (const scenario of scenarios) {
    for (const [tool, params] of tools) {
      if (!input.include(tool, scenario)) continue;
      specs.push(async () => {
        const port = input.nextPort();
        const latency = scenario === 'stream-latency';
        const source =
          scenario === 'stream-image'
            ? { dataPath: dataset.v1Path, bytes: dataset.imageBytes, sha256: () => Promise.resolve(input.v1Sha) }
            : { dataPath: data.randomPath, bytes: randomBytes, sha256: () => data.randomSha256(randomBytes) };
        const transferIds = Array.from({ length: scenario === 'stream-random-4ch' ? CHANNELS : 1 }, () => randomUUID());
        const config = (role: 'receive' | 'send') => ({
          role,
          caPath: pki.caPath,
          certPath: role === 'receive' ? pki.receiver.certPath : pki.sender.certPath,
          keyPath: role === 'receive' ? pki.receiver.keyPath : pki.sender.keyPath,
          host: link.host,
          port,
          transferIds,
          pattern: latency
            ? { kind: 'latency', ...LATENCY }
            : { kind: 'bulk', dataPath: source.dataPath, bytes: source.bytes, target },
          ...(params !== undefined
            ? {
                dwcp: {
                  streams: params.streams,
                  chunkBytes: params.streamChunkBytes,
                  compressionLevel: params.compressionLevel,
                  maxInFlightChunks: params.maxInFlightChunks,
                  // The bench checks the target's sha256 itself; what the stream's own costs is in docs/dwcp.md.
                  wholeStreamSha256: false,
                  ...(input.idleFlushMs !== undefined ? { idleFlushMs: input.idleFlushMs } : {}),
                },
              }
            : {}),
        });
        return {
          link,
          tool,
          scenario,
          port,
          receiver: nodeArgv(STREAM_PEER, config('receive')),
          sender: nodeArgv(STREAM_PEER, config('send')),
          warmSender: true,
          target,
          logicalBytes: latency ? LATENCY.writes * LATENCY.writeBytes : source.bytes,
          ...(latency ? {} : { expectedSha256: await source.sha256() }),
        };
      });
    }
  }
  return specs;
}
