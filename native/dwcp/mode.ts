/**
 * Mode detection: a link probe (RTT from PING/PONG frames, throughput from a timed bulk transfer) and the pure rules
 * that turn its figures into a mode and transfer parameters.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { z } from 'zod';
import { DEFAULT_MODE_THRESHOLDS, type ModeThresholds } from '../../domain/mode-thresholds';
import type { TlsMaterial } from './certs';
import { dialTls, FrameSocket, type Dialer } from './connection';
import { chooseCompressionLevel } from './encoding';
import { DwcpError, DwcpProtocolError } from './errors';
import { ErrorBodySchema, FrameType, jsonPayload, parseJsonPayload } from './framing';
import { TransferKind, type Hello } from './protocol';

export const DwcpMode = {
  DATACENTER: 'datacenter',
  HYBRID: 'hybrid',
  INTERNET: 'internet',
} as const;
export type DwcpMode = (typeof DwcpMode)[keyof typeof DwcpMode];

// Where the modes meet; the config's `network.*` keys set them per fleet.
export { DEFAULT_MODE_THRESHOLDS, type ModeThresholds };

/**
 * With the default thresholds: datacenter when RTT < 10 ms and more than 1 Gbit/s; internet when RTT > 50 ms or
 * less than 1 Gbit/s. Anything between (a fast link with 10-50 ms RTT, or a sub-10 ms link at exactly 1 Gbit/s) is
 * hybrid. `override` wins.
 */
export function classifyMode(input: {
  rttMs: number;
  bandwidthMbps: number;
  override?: DwcpMode;
  thresholds?: ModeThresholds;
}): DwcpMode {
  if (input.override !== undefined) return input.override;
  const t = input.thresholds ?? DEFAULT_MODE_THRESHOLDS;
  if (input.rttMs < t.datacenterMaxRttMs && input.bandwidthMbps > t.datacenterMinBandwidthMbps) {
    return DwcpMode.DATACENTER;
  }
  if (input.rttMs > t.internetMinRttMs || input.bandwidthMbps < t.datacenterMinBandwidthMbps) return DwcpMode.INTERNET;
  return DwcpMode.HYBRID;
}

export interface ModeParameters {
  /** Parallel TCP streams before adaptation to the bandwidth-delay product. */
  streams: number;
  minStreams: number;
  maxStreams: number;
  /** Average content-defined chunk size for file transfers. */
  chunkAvgBytes: number;
  /** Fixed chunk size for ordered streams (migration). */
  streamChunkBytes: number;
  /**
   * Fixed extents offered for a file copy to a receiver with nothing to deduplicate against (0: always
   * content-defined chunks). Cutting content-defined chunks that nothing will match is waste on every link: on the
   * benchmark's 100 Mbit/s link, 32 KiB chunks kept both cores busy (7.6 + 4.5 CPU s) and sent 96 MB, where 1 MiB
   * extents took 4.2 + 2.2 CPU s and sent 85 MB, because zstd sees more of the content at once (docs/dwcp.md). The
   * next delta onto that copy pays for it with one content-defined scan of the target on the receiver.
   */
  firstCopyChunkBytes: number;
  /** zstd level when no CPU measurement is at hand; chooseCompressionLevel refines it. */
  compressionLevel: number;
  maxCompressionLevel: number;
  maxInFlightChunks: number;
}

/**
 * Datacenter links are fast and CPU is the bottleneck: few streams, big chunks, and no compression by default
 * (above a few Gbit/s chunking, hashing and TLS already keep the cores busy, and zstd only adds to that; between 1
 * and ~2.5 Gbit/s the level rule picks light compression once the CPU has been measured). Internet links
 * are slow and lossy: more streams to fill the bandwidth-delay product and survive per-flow loss, small chunks so
 * dedup finds more, and strong compression because every byte saved is worth more than the CPU spent on it.
 */
export const MODE_PARAMETERS = {
  datacenter: {
    streams: 2,
    minStreams: 1,
    maxStreams: 8,
    chunkAvgBytes: 128 * 1024,
    streamChunkBytes: 1024 * 1024,
    firstCopyChunkBytes: 1024 * 1024,
    compressionLevel: 0,
    maxCompressionLevel: 3,
    maxInFlightChunks: 32,
  },
  hybrid: {
    streams: 4,
    minStreams: 2,
    maxStreams: 16,
    chunkAvgBytes: 64 * 1024,
    streamChunkBytes: 512 * 1024,
    firstCopyChunkBytes: 1024 * 1024,
    compressionLevel: 3,
    maxCompressionLevel: 9,
    maxInFlightChunks: 64,
  },
  internet: {
    streams: 8,
    minStreams: 4,
    maxStreams: 32,
    chunkAvgBytes: 32 * 1024,
    streamChunkBytes: 256 * 1024,
    firstCopyChunkBytes: 1024 * 1024,
    compressionLevel: 6,
    maxCompressionLevel: 12,
    maxInFlightChunks: 256,
  },
} as const satisfies Record<DwcpMode, ModeParameters>;

/** What one TCP stream can keep in flight with Linux's default autotuning ceiling (tcp_wmem max 4 MiB). */
const PER_STREAM_WINDOW_BYTES = 4 * 1024 * 1024;

/**
 * Enough streams to cover the bandwidth-delay product at one autotuned window each, within the mode's bounds.
 */
export function chooseStreamCount(input: { mode: DwcpMode; rttMs: number; bandwidthMbps: number }): number {
  const params = MODE_PARAMETERS[input.mode];
  const bdpBytes = ((input.bandwidthMbps * 1e6) / 8) * (input.rttMs / 1000);
  const needed = Math.ceil(bdpBytes / PER_STREAM_WINDOW_BYTES);
  return Math.max(params.minStreams, Math.min(params.maxStreams, Math.max(params.streams, needed)));
}

export interface TransferParameters {
  mode: DwcpMode;
  streams: number;
  chunkAvgBytes: number;
  streamChunkBytes: number;
  /** See ModeParameters; absent in parameters resolved before it existed (workflow histories). */
  firstCopyChunkBytes?: number;
  compressionLevel: number;
  maxInFlightChunks: number;
}

/**
 * The parameters for a transfer: the mode's table row, streams adapted to the measured link, and the zstd level
 * from chooseCompressionLevel when the CPU's compression speed is known.
 */
export function resolveTransferParameters(input: {
  rttMs: number;
  bandwidthMbps: number;
  override?: DwcpMode;
  thresholds?: ModeThresholds;
  cpuMBpsAtLevel1?: number;
  ratioAtLevel1?: number;
  /** Per-worker chunking + chunk-hash speed (measureCompression's hashMBps); see chooseCompressionLevel. */
  hashMBps?: number;
  workers?: number;
}): TransferParameters {
  const mode = classifyMode(input);
  const row = MODE_PARAMETERS[mode];
  const compressionLevel =
    input.cpuMBpsAtLevel1 === undefined
      ? row.compressionLevel
      : chooseCompressionLevel({
          bandwidthMbps: input.bandwidthMbps,
          cpuMBpsAtLevel1: input.cpuMBpsAtLevel1,
          workers: input.workers ?? 1,
          maxLevel: row.maxCompressionLevel,
          ...(input.ratioAtLevel1 !== undefined ? { ratioAtLevel1: input.ratioAtLevel1 } : {}),
          ...(input.hashMBps !== undefined ? { hashMBps: input.hashMBps } : {}),
        }).level;
  return {
    mode,
    streams: chooseStreamCount({ mode, rttMs: input.rttMs, bandwidthMbps: input.bandwidthMbps }),
    chunkAvgBytes: row.chunkAvgBytes,
    streamChunkBytes: row.streamChunkBytes,
    firstCopyChunkBytes: row.firstCopyChunkBytes,
    compressionLevel,
    maxInFlightChunks: row.maxInFlightChunks,
  };
}

const ProbeEndSchema = z.object({ bytes: z.number().int().nonnegative(), elapsedMs: z.number().nonnegative() });

/**
 * The receiver's side of a probe: echo PINGs, count PROBE bytes from first to last byte, and report at END. The
 * receiver times the bulk transfer itself so the sender's socket buffers do not inflate the figure.
 */
export async function serveProbe(input: { socket: FrameSocket; transferId: string }): Promise<void> {
  const { socket, transferId } = input;
  await socket.send({ type: FrameType.HELLO, transferId, payload: jsonPayload({ ok: true }) });
  let bytes = 0;
  let firstAt = 0;
  let lastAt = 0;
  for (;;) {
    let frame;
    try {
      frame = await socket.receive({ timeoutMs: 60_000 });
    } catch {
      return;
    }
    switch (frame.type) {
      case FrameType.PING:
        await socket.send({ type: FrameType.PONG, transferId, chunkIndex: frame.chunkIndex, payload: frame.payload });
        break;
      case FrameType.PROBE:
        lastAt = performance.now();
        if (bytes === 0) firstAt = lastAt;
        bytes += frame.payload.length;
        break;
      case FrameType.END:
        await socket.send({
          type: FrameType.END,
          transferId,
          payload: jsonPayload({ bytes, elapsedMs: lastAt - firstAt }),
        });
        bytes = 0;
        break;
      default:
        throw new DwcpProtocolError(`unexpected frame type ${frame.type} in a probe`);
    }
  }
}

export interface LinkProbeResult {
  rttMs: number;
  bandwidthMbps: number;
  bytes: number;
}

/**
 * Measures the link to a DWCP receiver: median RTT over `pings` PING/PONG round trips, then bulk throughput over
 * `streams` parallel connections for about `durationMs`. The probe payload is random, so compression cannot help.
 */
export async function probeLink(input: {
  host: string;
  port: number;
  tls: TlsMaterial;
  servername?: string;
  pings?: number;
  durationMs?: number;
  streams?: number;
  dial?: Dialer;
  signal?: AbortSignal;
}): Promise<LinkProbeResult> {
  const dial = input.dial ?? dialTls;
  const streams = Math.max(1, input.streams ?? 1);
  const transferId = randomUUID();
  const sockets: FrameSocket[] = [];
  try {
    for (let i = 0; i < streams; i++) {
      const stream = await dial({
        host: input.host,
        port: input.port,
        tls: input.tls,
        streamIndex: i,
        timeoutMs: 10_000,
        ...(input.servername !== undefined ? { servername: input.servername } : {}),
        ...(input.signal !== undefined ? { signal: input.signal } : {}),
      });
      const socket = new FrameSocket({ stream });
      sockets.push(socket);
      const hello: Hello = { kind: TransferKind.PROBE, attempt: 0, streamIndex: i, streams };
      await socket.send({ type: FrameType.HELLO, transferId, payload: jsonPayload(hello) });
      const reply = await socket.receive({ timeoutMs: 10_000 });
      if (reply.type === FrameType.ERROR)
        throw DwcpError.fromRemote(parseJsonPayload({ frame: reply, schema: ErrorBodySchema }));
      if (reply.type !== FrameType.HELLO) throw new DwcpProtocolError('probe was not accepted');
    }
    const control = sockets[0];
    if (control === undefined) throw new DwcpProtocolError('no probe connection');

    const rtts: number[] = [];
    for (let i = 0; i < (input.pings ?? 10); i++) {
      const sent = performance.now();
      await control.send({ type: FrameType.PING, transferId, chunkIndex: i, payload: Buffer.alloc(8) });
      const pong = await control.receive({ timeoutMs: 10_000 });
      if (pong.type !== FrameType.PONG || pong.chunkIndex !== i) throw new DwcpProtocolError('bad PONG');
      rtts.push(performance.now() - sent);
    }
    rtts.sort((a, b) => a - b);
    const rttMs = rtts[Math.floor(rtts.length / 2)] ?? 0;

    const payload = randomBytes(64 * 1024);
    const durationMs = input.durationMs ?? 1000;
    const results = await Promise.all(
      sockets.map(async (socket) => {
        const until = performance.now() + durationMs;
        while (performance.now() < until) {
          if (input.signal?.aborted)
            throw DwcpError.fromNative(Object.assign(new Error('aborted'), { code: 'ABORT_ERR' }), 'probe');
          await socket.send({ type: FrameType.PROBE, transferId, payload });
        }
        await socket.send({ type: FrameType.END, transferId });
        const end = await socket.receive({ timeoutMs: 60_000 });
        if (end.type !== FrameType.END) throw new DwcpProtocolError('probe ended without a report');
        return parseJsonPayload({ frame: end, schema: ProbeEndSchema });
      }),
    );
    const bytes = results.reduce((sum, r) => sum + r.bytes, 0);
    const elapsedMs = Math.max(...results.map((r) => r.elapsedMs), 1);
    return { rttMs, bandwidthMbps: (bytes * 8) / 1e6 / (elapsedMs / 1000), bytes };
  } finally {
    for (const s of sockets) s.destroy();
  }
}
