/**
 * The state of one send call that outlives its attempts: its connections and their byte counts, the reconnect loop
 * with backoff, the bandwidth cap and progress reports. sendFile and sendStream each build one.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { TlsMaterial } from './certs';
import { dialTls, FrameSocket, type Dialer } from './connection';
import { DwcpWorkerPool } from './worker-pool';
import { DwcpCancelledError, DwcpConnectionError, DwcpError, DwcpProtocolError } from './errors';
import { ErrorBodySchema, FrameType, isTransferId, jsonPayload, parseJsonPayload } from './framing';
import { HELLO_TIMEOUT_MS, HelloReplySchema, type Hello, type HelloReply, type TransferKind } from './protocol';
import { SendEngine, type SendWorkload } from './send-engine';
import { progressReporter, type ChunkStats, type SendResult, type TransferProgress } from './transfer-types';

export interface SenderOptions {
  host: string;
  port: number;
  tls: TlsMaterial;
  /** Expected name in the receiver's certificate when `host` is not it. */
  servername?: string;
  transferId: string;
  streams?: number;
  /** zstd level; 0 turns compression off. See chooseCompressionLevel. */
  compressionLevel?: number;
  maxInFlightChunks?: number;
  maxRetriesPerChunk?: number;
  /** Bandwidth cap for the whole transfer, in bytes per second of frames. */
  maxBytesPerSecond?: number;
  pool?: DwcpWorkerPool;
  dial?: Dialer;
  reconnect?: { timeoutMs?: number; initialDelayMs?: number; maxDelayMs?: number };
  connectTimeoutMs?: number;
  onProgress?: (progress: TransferProgress) => void;
  signal?: AbortSignal;
}

/** State of one send call that outlives its attempts. */
export class SenderContext {
  readonly options: SenderOptions;
  readonly pool: DwcpWorkerPool;
  readonly ownsPool: boolean;
  readonly streams: number;
  readonly throttle: (bytes: number) => Promise<void>;
  readonly started = Date.now();
  /**
   * Attempt numbers start from the clock, so they also grow across sender processes: when a retried activity sends
   * the same transfer again, its HELLO supersedes whatever the previous process left connected.
   */
  private readonly attemptBase = Date.now() * 1000;
  private readonly sockets: FrameSocket[] = [];
  acks = 0;
  readonly progress: ReturnType<typeof progressReporter>;

  constructor(options: SenderOptions) {
    if (!isTransferId(options.transferId))
      throw new DwcpProtocolError(`transfer id must be a UUID: ${options.transferId}`);
    this.options = options;
    this.ownsPool = options.pool === undefined;
    this.pool = options.pool ?? new DwcpWorkerPool();
    this.streams = Math.max(1, Math.min(64, options.streams ?? 4));
    this.throttle = createThrottle(options.maxBytesPerSecond);
    this.progress = progressReporter({ onProgress: options.onProgress, wireBytes: () => this.wireBytes });
  }

  get wireBytes(): number {
    return this.sockets.reduce((sum, s) => sum + s.bytesOut, 0);
  }

  get wireBytesReceived(): number {
    return this.sockets.reduce((sum, s) => sum + s.bytesIn, 0);
  }

  async connect(input: { streamIndex: number; hello: Hello }): Promise<{ socket: FrameSocket; reply: HelloReply }> {
    const dial = this.options.dial ?? dialTls;
    const stream = await dial({
      host: this.options.host,
      port: this.options.port,
      tls: this.options.tls,
      streamIndex: input.streamIndex,
      timeoutMs: this.options.connectTimeoutMs ?? 10_000,
      ...(this.options.servername !== undefined ? { servername: this.options.servername } : {}),
      ...(this.options.signal !== undefined ? { signal: this.options.signal } : {}),
    });
    const socket = new FrameSocket({ stream });
    this.sockets.push(socket);
    try {
      await socket.send({
        type: FrameType.HELLO,
        transferId: this.options.transferId,
        payload: jsonPayload(input.hello),
      });
      const frame = await socket.receive({ timeoutMs: HELLO_TIMEOUT_MS });
      if (frame.type === FrameType.ERROR)
        throw DwcpError.fromRemote(parseJsonPayload({ frame, schema: ErrorBodySchema }));
      if (frame.type !== FrameType.HELLO) throw new DwcpProtocolError(`expected HELLO, got frame type ${frame.type}`);
      return { socket, reply: parseJsonPayload({ frame, schema: HelloReplySchema }) };
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /** The engine for one attempt, with this send's retry limit, bandwidth cap and cancellation. */
  engine(input: { sockets: FrameSocket[]; workload: SendWorkload; queue: number[]; maxInFlight: number }): SendEngine {
    return new SendEngine({
      ...input,
      maxRetriesPerChunk: this.options.maxRetriesPerChunk ?? 5,
      throttle: this.throttle,
      signal: this.options.signal,
      onFrameSent: () => undefined,
    });
  }

  result(input: {
    sha256?: string;
    manifestDigest?: string;
    logicalBytes: number;
    attempts: number;
    chunks: ChunkStats;
    chunking?: string;
  }): SendResult {
    return {
      transferId: this.options.transferId,
      ...(input.sha256 !== undefined ? { sha256: input.sha256 } : {}),
      ...(input.manifestDigest !== undefined ? { manifestDigest: input.manifestDigest } : {}),
      ...(input.chunking !== undefined ? { chunking: input.chunking } : {}),
      logicalBytes: input.logicalBytes,
      wireBytes: this.wireBytes,
      wireBytesReceived: this.wireBytesReceived,
      attempts: input.attempts,
      durationMs: Date.now() - this.started,
      chunks: input.chunks,
    };
  }

  /**
   * Runs attempts until one succeeds. A retryable failure reconnects with backoff; the time budget restarts
   * whenever an attempt made progress, so a long transfer over a flaky link is not cut off by its total length.
   */
  async withReconnect<T>(run: (attempt: number) => Promise<T>): Promise<{ value: T; attempts: number }> {
    const timeoutMs = this.options.reconnect?.timeoutMs ?? 60_000;
    const initialDelay = this.options.reconnect?.initialDelayMs ?? 200;
    const maxDelay = this.options.reconnect?.maxDelayMs ?? 5_000;
    let delay = initialDelay;
    let failingSince: number | undefined;
    for (let attempt = 0; ; attempt++) {
      const acksBefore = this.acks;
      try {
        return { value: await run(this.attemptBase + attempt), attempts: attempt + 1 };
      } catch (err) {
        const error = DwcpError.fromNative(err, 'transfer');
        if (this.options.signal?.aborted) throw new DwcpCancelledError('transfer cancelled', error);
        // A receiver that cancelled no longer expects the transfer: reconnecting now would only meet UNKNOWN_TRANSFER
        // until the budget ran out. The next send of it, once it is registered again, resumes from the journal.
        if (!error.retryable || error instanceof DwcpCancelledError) throw error;
        if (this.acks !== acksBefore) {
          failingSince = undefined;
          delay = initialDelay;
        }
        failingSince ??= Date.now();
        if (Date.now() - failingSince > timeoutMs) {
          throw new DwcpConnectionError(`gave up after ${attempt + 1} attempts: ${error.message}`, error);
        }
        try {
          await sleep(delay, undefined, this.options.signal ? { signal: this.options.signal } : {});
        } catch {
          throw new DwcpCancelledError('transfer cancelled', error);
        }
        delay = Math.min(delay * 2, maxDelay);
      }
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    if (this.ownsPool) await this.pool.close();
  }
}

/** Paces frames to a byte rate with a small burst allowance; no cap means no waiting. */
function createThrottle(bytesPerSecond: number | undefined): (bytes: number) => Promise<void> {
  if (bytesPerSecond === undefined || bytesPerSecond <= 0) return () => Promise.resolve();
  const burstMs = 50;
  let nextFree = performance.now();
  return async (bytes) => {
    const now = performance.now();
    const start = Math.max(now - burstMs, nextFree);
    nextFree = start + (bytes / bytesPerSecond) * 1000;
    const wait = start - now;
    if (wait > 0) await sleep(wait);
  };
}

/** The attempt's data connections (stream 1 to N-1); if one fails, none stays open. */
export async function openDataSockets(input: {
  ctx: SenderContext;
  attempt: number;
  kind: TransferKind;
}): Promise<FrameSocket[]> {
  const { ctx } = input;
  const results = await Promise.allSettled(
    Array.from({ length: ctx.streams - 1 }, (_, i) =>
      ctx.connect({
        streamIndex: i + 1,
        hello: { kind: input.kind, attempt: input.attempt, streamIndex: i + 1, streams: ctx.streams },
      }),
    ),
  );
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed !== undefined) {
    for (const r of results) if (r.status === 'fulfilled') r.value.socket.destroy();
    throw failed.reason;
  }
  return results.map((r) => (r as PromiseFulfilledResult<{ socket: FrameSocket }>).value.socket);
}
