/**
 * AMST: the DWCP sender and receiver over N parallel mutual-TLS connections.
 *
 * - File mode writes chunks at their offsets into `<target>.dwcp-partial`, leaves zero chunks as holes, copies chunks
 *   the receiver already has (chunk index) locally, journals progress, and renames onto the target only after the
 *   sha256 of the whole file matches the sender's.
 * - Stream mode carries an ordered byte stream (e.g. a QEMU migration stream): fixed-size chunks spread over the
 *   connections and are put back in order through a reorder buffer bounded by the sender's in-flight window.
 *
 * Both resume after a cut connection: the sender reconnects with a new attempt, and the receiver's answer (journal
 * or stream position) decides what is sent again. A file transfer also survives a receiver restart, because the
 * journal is on disk.
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, rename, rm, stat, statfs, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type tls from 'node:tls';
import { compress, decompress } from 'zstd-napi';
import type { TlsMaterial } from './certs';
import { ChunkIndex } from './chunk-index';
import { chunkingKey, chunkingParams, type ChunkingParams } from './chunking';
import { createTlsServer, dialTls, FrameSocket, peerCommonName, type Dialer } from './connection';
import { DwcpWorkerPool, decodeChunk } from './encoding';
import {
  DwcpAuthError,
  DwcpCancelledError,
  DwcpChecksumError,
  DwcpConnectionError,
  DwcpDiskFullError,
  DwcpError,
  DwcpIoError,
  DwcpProtocolError,
  DwcpUnknownTransferError,
} from './errors';
import {
  ChunkEncoding,
  ErrorBodySchema,
  FrameType,
  isTransferId,
  jsonPayload,
  parseJsonPayload,
  type EncodeFrameInput,
  type Frame,
} from './framing';
import { TransferJournal } from './journal';
import {
  MANIFEST_ENTRY_BYTES,
  ManifestBuilder,
  manifestDigest,
  manifestEntry,
  validateManifest,
  type Manifest,
  type ScanSummary,
} from './manifest';
import { serveProbe } from './mode';
import {
  ChunkState,
  EndReplySchema,
  EndSchema,
  HelloReplySchema,
  HelloSchema,
  MANIFEST_PART_ENTRIES,
  ManifestEndSchema,
  TransferKind,
  type End,
  type Hello,
  type HelloReply,
  type ManifestEnd,
  type NackReason,
} from './protocol';
import { Notifier, SendEngine, type SendWorkload } from './send-engine';

export interface TransferProgress {
  /** Bytes of the logical content that the receiver has (including resumed, deduplicated and zero chunks). */
  logicalBytes: number;
  /** Frame bytes this side has put on the wire, over every attempt. */
  wireBytes: number;
  chunksDone: number;
  /** Unknown for a stream until its end. */
  chunksTotal: number | undefined;
}

export interface ChunkStats {
  total: number;
  /** Chunks whose data crossed the wire (last successful send of each). */
  data: number;
  /** Chunks the receiver copied from its chunk index. */
  refs: number;
  zero: number;
  /** Chunks the receiver already had from an earlier attempt. */
  resumed: number;
  /** Resends after a NACK. */
  resent: number;
}

export interface SendResult {
  transferId: string;
  sha256: string;
  logicalBytes: number;
  wireBytes: number;
  wireBytesReceived: number;
  attempts: number;
  durationMs: number;
  chunks: ChunkStats;
}

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

export interface SendFileInput extends SenderOptions {
  sourcePath: string;
  chunking?: ChunkingParams;
}

export interface SendStreamInput extends SenderOptions {
  source: AsyncIterable<Buffer>;
  chunkBytes?: number;
}

const DEFAULT_CHUNKING = chunkingParams({ avgBytes: 64 * 1024 });
const DEFAULT_STREAM_CHUNK_BYTES = 256 * 1024;
const HELLO_TIMEOUT_MS = 30_000;

/** State of one send call that outlives its attempts. */
class SenderContext {
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
  private lastProgressAt = 0;

  constructor(options: SenderOptions) {
    if (!isTransferId(options.transferId))
      throw new DwcpProtocolError(`transfer id must be a UUID: ${options.transferId}`);
    this.options = options;
    this.ownsPool = options.pool === undefined;
    this.pool = options.pool ?? new DwcpWorkerPool();
    this.streams = Math.max(1, Math.min(64, options.streams ?? 4));
    this.throttle = createThrottle(options.maxBytesPerSecond);
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

  progress(input: {
    logicalBytes: number;
    chunksDone: number;
    chunksTotal: number | undefined;
    force?: boolean;
  }): void {
    const now = Date.now();
    if (this.options.onProgress === undefined || (!input.force && now - this.lastProgressAt < 100)) return;
    this.lastProgressAt = now;
    this.options.onProgress({
      logicalBytes: input.logicalBytes,
      wireBytes: this.wireBytes,
      chunksDone: input.chunksDone,
      chunksTotal: input.chunksTotal,
    });
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
        if (!error.retryable) throw error;
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

async function openDataSockets(input: {
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

/**
 * The sender's scan of its source, shared by every attempt of one send: manifest parts become available while later
 * parts are still being cut and hashed in a worker, and the whole-file sha256 comes out of the same pass.
 */
class SourceScan {
  readonly manifest = new ManifestBuilder();
  private summary: ScanSummary | undefined;
  private failure: DwcpError | undefined;
  private readonly changed = new Notifier();
  private readonly chunking: ChunkingParams;

  constructor(input: { pool: DwcpWorkerPool; path: string; chunking: ChunkingParams; size: number }) {
    this.chunking = input.chunking;
    input.pool
      .runWithParts({ kind: 'scanParts', path: input.path, chunking: input.chunking }, (part) => {
        this.manifest.put(part.first, part.entries);
        this.changed.notify();
      })
      .then((summary) => {
        if (summary.size !== input.size) throw new DwcpIoError(`${input.path} changed size during the transfer`);
        this.summary = summary;
      })
      .catch((err: unknown) => {
        this.failure = DwcpError.fromNative(err, `scanning ${input.path}`);
      })
      .finally(() => this.changed.notify());
  }

  /** Entries known so far; waits for more unless the scan has finished. Undefined once `from` is the end. */
  async entriesFrom(from: number): Promise<{ first: number; entries: Buffer } | undefined> {
    for (;;) {
      if (this.failure !== undefined) throw this.failure;
      if (this.manifest.chunkCount > from) {
        return { first: from, entries: Buffer.from(this.manifest.entries.subarray(from * MANIFEST_ENTRY_BYTES)) };
      }
      if (this.summary !== undefined) return undefined;
      await this.changed.wait();
    }
  }

  get chunkCount(): number | undefined {
    return this.summary?.chunkCount;
  }

  async done(): Promise<{ manifest: Manifest; digest: string }> {
    while (this.summary === undefined) {
      if (this.failure !== undefined) throw this.failure;
      await this.changed.wait();
    }
    const manifest: Manifest = { ...this.summary, entries: this.manifest.entries, chunking: this.chunking };
    return { manifest, digest: manifestDigest({ manifest }) };
  }
}

/**
 * Streams the manifest on the control connection as the scan produces it, then MANIFEST_END. Parts are capped so a
 * frame stays well under the payload limit.
 */
async function streamManifest(input: { socket: FrameSocket; scan: SourceScan; transferId: string }): Promise<void> {
  let next = 0;
  for (;;) {
    const part = await input.scan.entriesFrom(next);
    if (part === undefined) break;
    const maxBytes = MANIFEST_PART_ENTRIES * MANIFEST_ENTRY_BYTES;
    for (let at = 0; at < part.entries.length; at += maxBytes) {
      await input.socket.send({
        type: FrameType.MANIFEST,
        transferId: input.transferId,
        chunkIndex: part.first + at / MANIFEST_ENTRY_BYTES,
        payload: part.entries.subarray(at, at + maxBytes),
      });
    }
    next = part.first + part.entries.length / MANIFEST_ENTRY_BYTES;
  }
  const { manifest, digest } = await input.scan.done();
  const end: ManifestEnd = { chunkCount: manifest.chunkCount, sha256: manifest.sha256, manifestDigest: digest };
  await input.socket.send({ type: FrameType.MANIFEST_END, transferId: input.transferId, payload: jsonPayload(end) });
}

/**
 * Sends a file: scans it into a content-defined chunk manifest, streaming the manifest to the receiver part by
 * part; the receiver answers each part with the chunks it lacks, and those are sent while later parts are still
 * being hashed. Resumes across reconnects and receiver restarts.
 */
export async function sendFile(input: SendFileInput): Promise<SendResult> {
  const ctx = new SenderContext(input);
  try {
    const level = input.compressionLevel ?? 1;
    const chunking = input.chunking ?? DEFAULT_CHUNKING;
    const size = await stat(input.sourcePath).then(
      (info) => info.size,
      (err: unknown) => {
        throw DwcpError.fromNative(err, `source ${input.sourcePath}`);
      },
    );
    // The scan starts before the first connection, and the receiver indexes its base images meanwhile.
    const scan = new SourceScan({ pool: ctx.pool, path: input.sourcePath, chunking, size });
    const manifest = scan.manifest;
    const stats: ChunkStats = { total: 0, data: 0, refs: 0, zero: 0, resumed: 0, resent: 0 };
    let logicalBytes = 0;
    let chunksDone = 0;

    const { attempts } = await ctx.withReconnect(async (attempt) => {
      const control = await ctx.connect({
        streamIndex: 0,
        hello: { kind: TransferKind.FILE, attempt, streamIndex: 0, streams: ctx.streams, file: { size, chunking } },
      });
      const sockets = [control.socket];
      try {
        if (control.reply.completed !== undefined) {
          const { manifest: whole } = await scan.done();
          if (control.reply.completed !== whole.sha256)
            throw new DwcpChecksumError('receiver completed with another sha256');
          logicalBytes = whole.size;
          chunksDone = whole.chunkCount;
          return;
        }
        // Data connections join before the manifest starts, so a receiver that refuses the first part (disk full)
        // reports it on connections the engine is already reading.
        sockets.push(...(await openDataSockets({ ctx, attempt, kind: TransferKind.FILE })));

        stats.zero = 0;
        stats.resumed = 0;
        logicalBytes = 0;
        chunksDone = 0;
        let states = new Uint8Array(0);
        /** Chunks the receiver's NEED parts have answered so far. */
        let answered = 0;
        let manifestSent = false;
        const queue: number[] = [];
        let queueHead = 0;

        const workload: SendWorkload = {
          pull: () => {
            if (queueHead < queue.length) return Promise.resolve(queue[queueHead++]!);
            queue.length = 0;
            queueHead = 0;
            const total = scan.chunkCount;
            return Promise.resolve(manifestSent && total !== undefined && answered === total ? 'end' : 'wait');
          },
          onNeed: (frame) => {
            const part = new Uint8Array(decompress(frame.payload));
            if (frame.chunkIndex !== answered || answered + part.length > manifest.chunkCount) {
              throw new DwcpProtocolError(`NEED for chunks ${frame.chunkIndex}+${part.length} is out of order`);
            }
            if (states.length < answered + part.length) {
              const grown = new Uint8Array(Math.max(answered + part.length, states.length * 2));
              grown.set(states);
              states = grown;
            }
            states.set(part, answered);
            for (let i = answered; i < answered + part.length; i++) {
              if (states[i] === ChunkState.DONE) {
                const entry = manifestEntry({ manifest, index: i });
                if (entry.zero) stats.zero++;
                else stats.resumed++;
                logicalBytes += entry.length;
                chunksDone++;
              } else {
                queue.push(i);
              }
            }
            answered += part.length;
          },
          prepare: async (index) => {
            const entry = manifestEntry({ manifest, index });
            const base = {
              transferId: input.transferId,
              chunkIndex: index,
              offset: entry.offset,
              rawLength: entry.length,
            };
            if (states[index] === ChunkState.REF) {
              return {
                ...base,
                type: FrameType.CHUNK_REF,
                encoding: ChunkEncoding.REF,
                payload: Buffer.from(entry.hash),
              };
            }
            const encoded = await ctx.pool.run({
              kind: 'encodeFile',
              path: input.sourcePath,
              offset: entry.offset,
              length: entry.length,
              level,
            });
            return {
              ...base,
              type: encoded.encoding === ChunkEncoding.ZERO ? FrameType.ZERO : FrameType.CHUNK,
              encoding: encoded.encoding,
              payload: encoded.payload,
              checksum: encoded.checksum,
            };
          },
          onAck: (index) => {
            if (states[index] === ChunkState.REF) stats.refs++;
            else stats.data++;
            states[index] = ChunkState.DONE;
            ctx.acks++;
            logicalBytes += manifestEntry({ manifest, index }).length;
            chunksDone++;
            ctx.progress({ logicalBytes, chunksDone, chunksTotal: scan.chunkCount });
          },
          onNack: (index, reason: NackReason) => {
            if (reason === 'ref-miss') states[index] = ChunkState.SEND;
            else stats.resent++;
          },
        };
        const engine = new SendEngine({
          sockets,
          workload,
          queue: [],
          maxInFlight: input.maxInFlightChunks ?? 16 * ctx.streams,
          maxRetriesPerChunk: input.maxRetriesPerChunk ?? 5,
          throttle: ctx.throttle,
          signal: input.signal,
          onFrameSent: () => undefined,
        });
        streamManifest({ socket: control.socket, scan, transferId: input.transferId }).then(
          () => {
            manifestSent = true;
            engine.wake();
          },
          (err: unknown) => engine.fail(DwcpError.fromNative(err, 'manifest')),
        );
        const reply = await engine.run(async () => {
          const { manifest: whole } = await scan.done();
          return {
            type: FrameType.END,
            transferId: input.transferId,
            payload: jsonPayload({
              sha256: whole.sha256,
              size: whole.size,
              chunkCount: whole.chunkCount,
            } satisfies End),
          };
        });
        const end = parseJsonPayload({ frame: reply, schema: EndReplySchema });
        const { manifest: whole } = await scan.done();
        if (end.sha256 !== whole.sha256) throw new DwcpChecksumError('receiver reports a different sha256');
      } finally {
        for (const s of sockets) s.destroy();
      }
    });
    const { manifest: whole } = await scan.done();
    stats.total = whole.chunkCount;
    ctx.progress({ logicalBytes, chunksDone, chunksTotal: whole.chunkCount, force: true });
    return {
      transferId: input.transferId,
      sha256: whole.sha256,
      logicalBytes,
      wireBytes: ctx.wireBytes,
      wireBytesReceived: ctx.wireBytesReceived,
      attempts,
      durationMs: Date.now() - ctx.started,
      chunks: stats,
    };
  } finally {
    await ctx.close();
  }
}

/** Cuts an async byte source into owned buffers of `size` bytes (the last may be shorter). */
async function* fixedChunks(source: AsyncIterable<Buffer>, size: number): AsyncGenerator<Buffer> {
  let current = Buffer.allocUnsafeSlow(size);
  let filled = 0;
  for await (const piece of source) {
    let at = 0;
    while (at < piece.length) {
      const n = Math.min(size - filled, piece.length - at);
      piece.copy(current, filled, at, at + n);
      filled += n;
      at += n;
      if (filled === size) {
        yield current;
        current = Buffer.allocUnsafeSlow(size);
        filled = 0;
      }
    }
  }
  if (filled > 0) yield Buffer.from(current.subarray(0, filled));
}

/**
 * Sends an ordered byte stream. Chunks stay in memory until acknowledged (the receiver acknowledges on delivery),
 * so a cut connection resends only what the receiver has not delivered; the in-flight window bounds that memory.
 */
export async function sendStream(input: SendStreamInput): Promise<SendResult> {
  const ctx = new SenderContext(input);
  try {
    const level = input.compressionLevel ?? 1;
    const chunkBytes = input.chunkBytes ?? DEFAULT_STREAM_CHUNK_BYTES;
    const window = input.maxInFlightChunks ?? 16 * ctx.streams;
    const chunks = fixedChunks(input.source, chunkBytes)[Symbol.asyncIterator]();
    const hash = createHash('sha256');
    const retained = new Map<
      number,
      { length: number; data: Buffer | undefined; frame: EncodeFrameInput | undefined }
    >();
    const stats: ChunkStats = { total: 0, data: 0, refs: 0, zero: 0, resumed: 0, resent: 0 };
    let pulled = 0;
    let size = 0;
    let ended = false;
    let sha256 = '';
    let logicalBytes = 0;
    let chunksDone = 0;

    const acknowledge = (index: number): void => {
      const chunk = retained.get(index);
      if (chunk === undefined) return;
      retained.delete(index);
      logicalBytes += chunk.length;
      chunksDone++;
      if (chunk.frame?.type === FrameType.ZERO) stats.zero++;
      else stats.data++;
    };

    const workload: SendWorkload = {
      pull: async () => {
        if (ended) return 'end';
        const oldest = retained.keys().next();
        // The receiver buffers at most `window` chunks past its delivery point; never send beyond that.
        if (!oldest.done && pulled >= oldest.value + window) return 'wait';
        const next = await chunks.next();
        if (next.done === true) {
          ended = true;
          sha256 = hash.digest('hex');
          stats.total = pulled;
          return 'end';
        }
        hash.update(next.value);
        size += next.value.length;
        retained.set(pulled, { length: next.value.length, data: next.value, frame: undefined });
        return pulled++;
      },
      prepare: async (index) => {
        const chunk = retained.get(index);
        if (chunk === undefined) throw new DwcpProtocolError(`chunk ${index} is no longer retained`);
        if (chunk.frame !== undefined) return chunk.frame;
        if (chunk.data === undefined) throw new DwcpProtocolError(`chunk ${index} has no data`);
        const data = chunk.data;
        chunk.data = undefined;
        const encoded = await ctx.pool.run({ kind: 'encode', data, level });
        chunk.frame = {
          type: encoded.encoding === ChunkEncoding.ZERO ? FrameType.ZERO : FrameType.CHUNK,
          transferId: input.transferId,
          chunkIndex: index,
          offset: index * chunkBytes,
          rawLength: encoded.rawLength,
          encoding: encoded.encoding,
          payload: encoded.payload,
          checksum: encoded.checksum,
        };
        return chunk.frame;
      },
      onAck: (index) => {
        acknowledge(index);
        ctx.acks++;
        ctx.progress({ logicalBytes, chunksDone, chunksTotal: ended ? pulled : undefined });
      },
      onNack: () => {
        stats.resent++;
      },
    };

    const { attempts } = await ctx.withReconnect(async (attempt) => {
      const control = await ctx.connect({
        streamIndex: 0,
        hello: { kind: TransferKind.STREAM, attempt, streamIndex: 0, streams: ctx.streams },
      });
      const sockets = [control.socket];
      try {
        if (control.reply.completed !== undefined) {
          if (!ended || control.reply.completed !== sha256)
            throw new DwcpChecksumError('receiver completed another stream');
          return;
        }
        const nextIndex = control.reply.nextIndex ?? 0;
        if (nextIndex > pulled) throw new DwcpProtocolError('receiver claims chunks that were never sent');
        for (const index of [...retained.keys()]) if (index < nextIndex) acknowledge(index);
        sockets.push(...(await openDataSockets({ ctx, attempt, kind: TransferKind.STREAM })));
        const engine = new SendEngine({
          sockets,
          workload,
          queue: [...retained.keys()],
          maxInFlight: window,
          maxRetriesPerChunk: input.maxRetriesPerChunk ?? 5,
          throttle: ctx.throttle,
          signal: input.signal,
          onFrameSent: () => undefined,
        });
        const reply = await engine.run(() => ({
          type: FrameType.END,
          transferId: input.transferId,
          payload: jsonPayload({ sha256, size, chunkCount: pulled } satisfies End),
        }));
        const end = parseJsonPayload({ frame: reply, schema: EndReplySchema });
        if (end.sha256 !== sha256) throw new DwcpChecksumError('receiver reports a different sha256');
      } finally {
        for (const s of sockets) s.destroy();
      }
    });
    ctx.progress({ logicalBytes, chunksDone, chunksTotal: pulled, force: true });
    return {
      transferId: input.transferId,
      sha256,
      logicalBytes,
      wireBytes: ctx.wireBytes,
      wireBytesReceived: ctx.wireBytesReceived,
      attempts,
      durationMs: Date.now() - ctx.started,
      chunks: stats,
    };
  } finally {
    await ctx.close();
  }
}

export interface ReceiveResult {
  transferId: string;
  sha256: string;
  logicalBytes: number;
  /** Frame bytes received over every attempt. */
  wireBytes: number;
  durationMs: number;
  chunks: ChunkStats;
}

export interface DwcpReceiverOptions {
  tls: TlsMaterial;
  host?: string;
  port?: number;
  pool?: DwcpWorkerPool;
  /** Journal batches: fsync after this many chunks or this many milliseconds, whichever comes first. */
  journalBatchChunks?: number;
  journalIntervalMs?: number;
  /**
   * Keep chunk-index sidecars (`<file>.dwcp-index.<chunking>`) next to indexed base images and received targets,
   * so the next transfer against them needs no scan. Off by default: they are new files beside the images, and code
   * that lists an image directory must skip them first (isSidecarPath). See chunk-index.ts.
   */
  indexSidecars?: boolean;
  onAuthFailure?: (err: Error) => void;
}

export interface ExpectFileInput {
  transferId: string;
  targetPath: string;
  /** Files whose chunks may be copied instead of sent; the existing target (a previous version) is always used. */
  baseImages?: string[];
  /** Only a sender whose certificate has this common name may deliver the transfer. */
  peerHostId?: string;
  /** Refuse up front when the file system cannot hold the missing chunks (default true). */
  checkFreeSpace?: boolean;
  onProgress?: (progress: TransferProgress) => void;
}

export interface ExpectStreamInput {
  transferId: string;
  sink: Writable;
  peerHostId?: string;
  /** Must be at least the sender's maxInFlightChunks. */
  maxReorderChunks?: number;
  onProgress?: (progress: TransferProgress) => void;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (err: unknown) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // The caller may attach its handler later than the failure; that must not be an unhandled rejection.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

async function sendError(socket: FrameSocket, transferId: string, err: DwcpError): Promise<void> {
  try {
    await socket.send({
      type: FrameType.ERROR,
      transferId,
      payload: jsonPayload({ code: err.code, message: err.message }),
    });
  } catch {
    // The connection is already gone; the sender learns of the failure from that.
  }
}

interface ReceiverContext {
  pool: DwcpWorkerPool;
  chunkIndex: ChunkIndex;
  journalBatchChunks: number;
  journalIntervalMs: number;
  onFinished: (transferId: string, sha256: string | undefined) => void;
}

/** Limits concurrent chunk handling per connection; the sender's window bounds it further. */
const CHUNKS_IN_PROGRESS_PER_SOCKET = 16;

abstract class ReceiveTransfer {
  readonly transferId: string;
  readonly peerHostId: string | undefined;
  readonly result = deferred<ReceiveResult>();
  protected readonly ctx: ReceiverContext;
  protected readonly sockets = new Set<FrameSocket>();
  protected readonly retiredWireBytes: number[] = [];
  protected attempt = -1;
  protected finished = false;
  protected readonly started = Date.now();
  protected readonly stats: ChunkStats = { total: 0, data: 0, refs: 0, zero: 0, resumed: 0, resent: 0 };
  private readonly onProgress: ((p: TransferProgress) => void) | undefined;
  private lastProgressAt = 0;

  constructor(input: {
    transferId: string;
    peerHostId: string | undefined;
    ctx: ReceiverContext;
    onProgress?: (p: TransferProgress) => void;
  }) {
    this.transferId = input.transferId;
    this.peerHostId = input.peerHostId;
    this.ctx = input.ctx;
    this.onProgress = input.onProgress;
  }

  abstract attach(socket: FrameSocket, hello: Hello): Promise<void>;

  protected get wireBytes(): number {
    let sum = this.retiredWireBytes.reduce((a, b) => a + b, 0);
    for (const s of this.sockets) sum += s.bytesIn;
    return sum;
  }

  /** A new attempt's control connection supersedes every older connection. */
  protected beginAttempt(socket: FrameSocket, hello: Hello): void {
    if (hello.attempt < this.attempt)
      throw new DwcpProtocolError(`attempt ${hello.attempt} is older than ${this.attempt}`);
    this.attempt = hello.attempt;
    for (const old of this.sockets) this.retire(old);
    this.sockets.add(socket);
  }

  protected joinAttempt(socket: FrameSocket, hello: Hello): void {
    if (hello.attempt !== this.attempt)
      throw new DwcpProtocolError(`stream of attempt ${hello.attempt}, current is ${this.attempt}`);
    this.sockets.add(socket);
  }

  protected retire(socket: FrameSocket): void {
    if (!this.sockets.delete(socket)) return;
    this.retiredWireBytes.push(socket.bytesIn);
    socket.destroy();
  }

  protected progress(input: {
    logicalBytes: number;
    chunksDone: number;
    chunksTotal: number | undefined;
    force?: boolean;
  }): void {
    const now = Date.now();
    if (this.onProgress === undefined || (!input.force && now - this.lastProgressAt < 100)) return;
    this.lastProgressAt = now;
    this.onProgress({ ...input, wireBytes: this.wireBytes });
  }

  /** Reads frames from one connection, handing chunks to `onChunk` with bounded concurrency. */
  protected serve(
    socket: FrameSocket,
    handlers: {
      onChunk: (frame: Frame) => Promise<void>;
      onEnd: (frame: Frame) => Promise<void>;
      /** MANIFEST and MANIFEST_END frames, handled one at a time in arrival order (file transfers only). */
      onManifest?: (frame: Frame) => Promise<void>;
    },
  ): void {
    const running = new Set<Promise<void>>();
    const loop = async (): Promise<void> => {
      for (;;) {
        const frame = await socket.receive();
        if (frame.transferId !== this.transferId) throw new DwcpProtocolError('frame for another transfer');
        switch (frame.type) {
          case FrameType.CHUNK:
          case FrameType.CHUNK_REF:
          case FrameType.ZERO: {
            while (running.size >= CHUNKS_IN_PROGRESS_PER_SOCKET) await Promise.race(running);
            const task = handlers.onChunk(frame).catch((err: unknown) => this.onChunkError(socket, err));
            running.add(task);
            void task.finally(() => running.delete(task));
            break;
          }
          case FrameType.MANIFEST:
          case FrameType.MANIFEST_END:
            if (handlers.onManifest === undefined) throw new DwcpProtocolError('manifest in a stream transfer');
            await handlers.onManifest(frame);
            break;
          case FrameType.END:
            await Promise.all(running);
            await handlers.onEnd(frame);
            return;
          case FrameType.ERROR:
            this.fail(DwcpError.fromRemote(parseJsonPayload({ frame, schema: ErrorBodySchema })), false);
            return;
          default:
            throw new DwcpProtocolError(`unexpected frame type ${frame.type} from the sender`);
        }
      }
    };
    loop().catch((err: unknown) => this.onChunkError(socket, err));
  }

  /** Connection and protocol trouble only costs this connection (the sender reconnects); disk trouble is final. */
  private onChunkError(socket: FrameSocket, err: unknown): void {
    const error = DwcpError.fromNative(err, 'receiving');
    if (error.retryable || error instanceof DwcpCancelledError) {
      this.retire(socket);
      return;
    }
    this.fail(error, true);
  }

  protected async ack(socket: FrameSocket, index: number): Promise<void> {
    // The chunk's own connection may have died meanwhile; an ACK on any live connection of the attempt will do.
    const target = socket.isOpen ? socket : [...this.sockets].find((s) => s.isOpen);
    await target?.send({ type: FrameType.ACK, transferId: this.transferId, chunkIndex: index }).catch(() => undefined);
  }

  protected async nack(socket: FrameSocket, index: number, reason: NackReason): Promise<void> {
    if (reason === 'checksum') this.stats.resent++;
    await socket
      .send({ type: FrameType.NACK, transferId: this.transferId, chunkIndex: index, payload: jsonPayload({ reason }) })
      .catch(() => undefined);
  }

  fail(err: DwcpError, notifySender: boolean): void {
    if (this.finished) return;
    this.finished = true;
    const sockets = [...this.sockets];
    void (async () => {
      if (notifySender) {
        await Promise.all(sockets.map((s) => sendError(s, this.transferId, err)));
        // The sender closes on the first ERROR it reads. Closing here at once could let it see a bare close on one
        // connection before the ERROR on another, and retry a transfer that cannot succeed.
        for (const s of sockets) setTimeout(() => s.close(), 5000).unref();
      } else {
        for (const s of sockets) s.close();
      }
      await this.release();
    })().finally(() => {
      this.ctx.onFinished(this.transferId, undefined);
      this.result.reject(err);
    });
  }

  protected abstract release(): Promise<void>;
}

/** What the receiver knows of the manifest stream of the current attempt. */
interface ManifestStream {
  /** Entries received in this attempt (the manifest restarts from chunk 0 with every attempt). */
  received: number;
  /** Offset just past the last received entry. */
  nextOffset: number;
  end: ManifestEnd | undefined;
  /** Base images indexed with the attempt's chunking; awaited before the first NEED. */
  indexing: Promise<void>;
}

class FileReceiveTransfer extends ReceiveTransfer {
  private readonly input: ExpectFileInput;
  private readonly manifest = new ManifestBuilder();
  private chunking: ChunkingParams | undefined;
  private size = 0;
  private stream: ManifestStream | undefined;
  /** One byte a chunk: 1 when it is on disk (or a hole for a zero chunk). Grows with the manifest. */
  private done = new Uint8Array(0);
  /** Chunks the journal of an earlier receiver process recorded, by index → offset. */
  private journaled = new Map<number, number>();
  /**
   * True when some content on disk was not verified by this process as it arrived (it resumed from an earlier
   * process's journal, or a new attempt described a chunk differently): END then re-hashes the whole file.
   */
  private verifyWholeFile = false;
  /** Bytes of chunks asked for (SEND or REF) but not yet written: what the free-space check must leave room for. */
  private outstandingBytes = 0;
  private journal: TransferJournal | undefined;
  private partial: FileHandle | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private logicalBytes = 0;
  private chunksDone = 0;
  private readonly partialPath: string;
  private readonly journalPath: string;

  constructor(input: ExpectFileInput, ctx: ReceiverContext) {
    super({
      transferId: input.transferId,
      peerHostId: input.peerHostId,
      ctx,
      ...(input.onProgress ? { onProgress: input.onProgress } : {}),
    });
    this.input = input;
    this.partialPath = `${input.targetPath}.dwcp-partial`;
    this.journalPath = `${input.targetPath}.dwcp-journal`;
  }

  async attach(socket: FrameSocket, hello: Hello): Promise<void> {
    if (hello.kind !== TransferKind.FILE) throw new DwcpProtocolError('this transfer expects a file');
    if (hello.streamIndex > 0) {
      if (this.stream === undefined) throw new DwcpProtocolError('data stream before the control stream');
      this.joinAttempt(socket, hello);
      await socket.send({
        type: FrameType.HELLO,
        transferId: this.transferId,
        payload: jsonPayload({ ok: true } satisfies HelloReply),
      });
      this.serveChunks(socket);
      return;
    }
    const file = hello.file;
    if (file === undefined) throw new DwcpProtocolError('file HELLO without file description');
    this.beginAttempt(socket, hello);
    const chunking = chunkingParams(file.chunking);
    await this.open(file.size, chunking);
    // Index base images while the sender is still scanning its source: both read a whole image.
    const indexing = this.indexBases(chunking);
    indexing.catch(() => undefined);
    this.stream = { received: 0, nextOffset: 0, end: undefined, indexing };
    this.logicalBytes = 0;
    this.chunksDone = 0;
    this.outstandingBytes = 0;
    await socket.send({
      type: FrameType.HELLO,
      transferId: this.transferId,
      payload: jsonPayload({ ok: true } satisfies HelloReply),
    });
    this.serveChunks(socket);
  }

  /**
   * Opens (or keeps) the partial target and its journal for this size and chunking. A journal written by another
   * process makes its chunks candidates for DONE, and makes END re-hash the whole file; no matching journal means
   * a fresh sparse file, all holes.
   */
  private async open(size: number, chunking: ChunkingParams): Promise<void> {
    const key = chunkingKey(chunking);
    if (this.partial !== undefined && this.size === size && this.chunking && chunkingKey(this.chunking) === key) return;
    await this.release();
    await mkdir(path.dirname(this.input.targetPath), { recursive: true });
    const partial = await open(this.partialPath, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o600);
    const { journal, done, reset } = await TransferJournal.open({
      path: this.journalPath,
      header: { transferId: this.transferId, size, chunking: key },
      data: partial,
    });
    // Without journaled chunks nothing in the partial file can be trusted; a fresh sparse file is all holes.
    const fresh = reset || done.size === 0;
    if (fresh) await partial.truncate(0);
    await partial.truncate(size);
    this.partial = partial;
    this.journal = journal;
    this.size = size;
    this.chunking = chunking;
    this.manifest.truncate(0);
    this.done = new Uint8Array(0);
    this.journaled = done;
    this.verifyWholeFile = !fresh;
    this.stats.total = 0;
    this.flushTimer = setInterval(() => this.flushJournal(true), this.ctx.journalIntervalMs);
    this.flushTimer.unref();
  }

  /** Indexes the existing target (a previous version) and the base images with the sender's chunking. */
  private async indexBases(chunking: ChunkingParams): Promise<void> {
    for (const base of [this.input.targetPath, ...(this.input.baseImages ?? [])]) {
      try {
        await this.ctx.chunkIndex.addFile({ path: base, chunking });
      } catch (err) {
        if (!(typeof err === 'object' && err !== null && 'code' in err && err.code === 'ENOENT')) throw err;
      }
    }
  }

  private onManifest(socket: FrameSocket, frame: Frame): Promise<void> {
    if (!frame.checksumOk) throw new DwcpProtocolError('manifest part failed its checksum');
    return frame.type === FrameType.MANIFEST ? this.onManifestPart(socket, frame) : this.onManifestEnd(frame);
  }

  /**
   * Takes one manifest part: checks that it continues the file, plans each chunk (DONE: on disk, a hole, or in
   * the journal; REF: the chunk index has it; SEND), checks free space for what it asks for, and answers NEED.
   */
  private async onManifestPart(socket: FrameSocket, frame: Frame): Promise<void> {
    const stream = this.stream;
    const chunking = this.chunking;
    if (stream === undefined || chunking === undefined || stream.end !== undefined) {
      throw new DwcpProtocolError('manifest part outside a manifest');
    }
    if (frame.chunkIndex !== stream.received || frame.payload.length % MANIFEST_ENTRY_BYTES !== 0) {
      throw new DwcpProtocolError(`manifest part at chunk ${frame.chunkIndex} does not continue the manifest`);
    }
    const first = frame.chunkIndex;
    const count = frame.payload.length / MANIFEST_ENTRY_BYTES;
    const part = { entries: frame.payload, chunkCount: count };
    let offset = stream.nextOffset;
    for (let j = 0; j < count; j++) {
      const entry = manifestEntry({ manifest: part, index: j });
      if (entry.offset !== offset || entry.length <= 0 || entry.length > chunking.maxBytes) {
        throw new DwcpProtocolError(`manifest entry ${first + j} does not continue the file`);
      }
      offset += entry.length;
    }
    if (offset > this.size) throw new DwcpProtocolError('manifest runs past the end of the file');
    await stream.indexing;
    if (this.stream !== stream) throw new DwcpConnectionError('a newer attempt took over');

    // A chunk this process already has stays DONE only if the new attempt describes it the same way.
    const known = Math.min(this.manifest.chunkCount, first + count) - first;
    for (let j = 0; j < known; j++) {
      const i = first + j;
      const before = this.manifest.entries.subarray(i * MANIFEST_ENTRY_BYTES, (i + 1) * MANIFEST_ENTRY_BYTES);
      const now = frame.payload.subarray(j * MANIFEST_ENTRY_BYTES, (j + 1) * MANIFEST_ENTRY_BYTES);
      if (!before.equals(now) && this.done[i] === 1) {
        this.done[i] = 0;
        this.verifyWholeFile = true;
      }
    }
    this.manifest.put(first, frame.payload);
    if (this.done.length < first + count) {
      const grown = new Uint8Array(Math.max(first + count, this.done.length * 2));
      grown.set(this.done);
      this.done = grown;
    }

    const plan = new Uint8Array(count);
    let asked = 0;
    for (let j = 0; j < count; j++) {
      const i = first + j;
      const entry = manifestEntry({ manifest: this.manifest, index: i });
      if (this.done[i] !== 1) {
        if (entry.zero) {
          this.done[i] = 1;
          this.stats.zero++;
        } else if (this.journaled.get(i) === entry.offset) {
          this.done[i] = 1;
          this.stats.resumed++;
        }
      }
      if (this.done[i] === 1) {
        plan[j] = ChunkState.DONE;
        this.logicalBytes += entry.length;
        this.chunksDone++;
        continue;
      }
      plan[j] = this.ctx.chunkIndex.lookup(entry.hash) === undefined ? ChunkState.SEND : ChunkState.REF;
      asked += entry.length;
    }
    stream.received = first + count;
    stream.nextOffset = offset;
    this.outstandingBytes += asked;
    if (asked > 0 && (this.input.checkFreeSpace ?? true)) {
      const fsInfo = await statfs(path.dirname(this.partialPath));
      const available = fsInfo.bavail * fsInfo.bsize;
      if (this.outstandingBytes > available) {
        throw new DwcpDiskFullError(
          `${path.dirname(this.partialPath)} has ${available} bytes free, the transfer needs ${this.outstandingBytes}`,
        );
      }
    }
    await socket.send({
      type: FrameType.NEED,
      transferId: this.transferId,
      chunkIndex: first,
      encoding: ChunkEncoding.ZSTD,
      payload: compress(plan),
    });
  }

  /** The manifest is complete: it must cover the file exactly and match the digest the sender computed. */
  private onManifestEnd(frame: Frame): Promise<void> {
    const stream = this.stream;
    const chunking = this.chunking;
    if (stream === undefined || chunking === undefined || stream.end !== undefined) {
      throw new DwcpProtocolError('MANIFEST_END outside a manifest');
    }
    const end = parseJsonPayload({ frame, schema: ManifestEndSchema });
    if (end.chunkCount !== stream.received) throw new DwcpProtocolError('MANIFEST_END does not match its parts');
    this.manifest.truncate(end.chunkCount);
    const manifest: Manifest = {
      size: this.size,
      sha256: end.sha256,
      chunkCount: end.chunkCount,
      entries: this.manifest.entries,
      chunking,
    };
    validateManifest({ manifest });
    if (manifestDigest({ manifest }) !== end.manifestDigest) {
      throw new DwcpProtocolError('manifest does not match its digest');
    }
    stream.end = end;
    this.stats.total = end.chunkCount;
    return Promise.resolve();
  }

  private serveChunks(socket: FrameSocket): void {
    this.serve(socket, {
      onChunk: (frame) => this.handleChunk(socket, frame),
      onEnd: (frame) => this.finish(socket, frame),
      onManifest: (frame) => this.onManifest(socket, frame),
    });
  }

  private async handleChunk(socket: FrameSocket, frame: Frame): Promise<void> {
    if (frame.chunkIndex >= (this.stream?.received ?? 0)) {
      throw new DwcpProtocolError(`chunk ${frame.chunkIndex} before its manifest part`);
    }
    const entry = manifestEntry({ manifest: this.manifest, index: frame.chunkIndex });
    if (entry.offset !== frame.offset || entry.length !== frame.rawLength) {
      throw new DwcpProtocolError(`chunk ${entry.index} does not match the manifest`);
    }
    if (!frame.checksumOk) return this.nack(socket, entry.index, 'checksum');
    if (this.done[entry.index] === 1) return this.ack(socket, entry.index);

    // Workers check the content against the manifest's sha256 and write it to the partial file themselves, so
    // chunk data never crosses back to this thread; the check before the write is what END relies on.
    const target = { path: this.partialPath, offset: entry.offset };
    if (frame.type === FrameType.ZERO) {
      if (!entry.zero) return this.nack(socket, entry.index, 'checksum');
    } else if (frame.type === FrameType.CHUNK_REF) {
      if (!frame.payload.equals(entry.hash)) throw new DwcpProtocolError(`chunk ${entry.index} refers to another hash`);
      const location = this.ctx.chunkIndex.lookup(entry.hash);
      if (location === undefined) return this.nack(socket, entry.index, 'ref-miss');
      const copied = await this.ctx.pool
        .run({
          kind: 'copyVerified',
          path: location.path,
          offset: location.offset,
          length: location.length,
          expectedHash: entry.hash,
          target,
        })
        .catch((err: unknown) => {
          // A base image that went away or shrank is a miss; the target's own trouble (disk full) is not.
          const error = DwcpError.fromNative(err, 'copying a known chunk');
          if (error instanceof DwcpDiskFullError) throw error;
          return { written: false };
        });
      if (!copied.written) {
        this.ctx.chunkIndex.forget(entry.hash);
        return this.nack(socket, entry.index, 'ref-miss');
      }
    } else {
      const decoded = await this.ctx.pool.run({
        kind: 'decodeInto',
        encoding: frame.encoding,
        payload: frame.payload,
        rawLength: frame.rawLength,
        expectedHash: entry.hash,
        target,
      });
      if (!decoded.written) return this.nack(socket, entry.index, 'checksum');
    }
    if (this.finished) return;
    if (this.done[entry.index] !== 1) {
      this.done[entry.index] = 1;
      this.outstandingBytes -= entry.length;
      if (frame.type === FrameType.CHUNK_REF) this.stats.refs++;
      else if (frame.type === FrameType.ZERO) this.stats.zero++;
      else this.stats.data++;
      this.logicalBytes += entry.length;
      this.chunksDone++;
      this.journal?.record(entry.index, entry.offset);
      this.flushJournal(false);
    }
    this.progress({
      logicalBytes: this.logicalBytes,
      chunksDone: this.chunksDone,
      chunksTotal: this.stream?.end?.chunkCount,
    });
    await this.ack(socket, entry.index);
  }

  /**
   * Durability runs beside the data path, not in it: an ACK only tells the sender the chunk arrived, and after a
   * crash the journal (not the ACKs) decides what is resent, so waiting for fsync before acknowledging would only
   * stall the pipeline.
   */
  private flushJournal(onTimer: boolean): void {
    const journal = this.journal;
    if (journal === undefined || journal.busy || journal.pendingCount === 0) return;
    if (!onTimer && journal.pendingCount < this.ctx.journalBatchChunks) return;
    journal.flush().catch((err: unknown) => this.fail(DwcpError.fromNative(err, 'journal'), true));
  }

  /**
   * The end-to-end check. Every chunk this process wrote was checked against the manifest's sha256 in memory
   * before the write, zero chunks are holes of a file this process created empty, and the manifest matched the
   * digest over its entries and the sender's whole-file sha256 (computed in the same pass as the chunk hashes).
   * So the file's sha256 is the manifest's, without reading the file again. When some content came from an
   * earlier process (journal) or an earlier description of the file, the whole file is re-hashed instead.
   */
  private async finish(socket: FrameSocket, frame: Frame): Promise<void> {
    const manifestEnd = this.stream?.end;
    const journal = this.journal;
    const partial = this.partial;
    if (manifestEnd === undefined || journal === undefined || partial === undefined)
      throw new DwcpProtocolError('END before the manifest');
    const end = parseJsonPayload({ frame, schema: EndSchema });
    if (this.done.subarray(0, manifestEnd.chunkCount).some((d) => d !== 1)) {
      throw new DwcpProtocolError('END before every chunk arrived');
    }
    await journal.flush();
    const sha256 = this.verifyWholeFile
      ? (await this.ctx.pool.run({ kind: 'hashFile', path: this.partialPath })).sha256
      : manifestEnd.sha256;
    if (sha256 !== manifestEnd.sha256 || end.sha256 !== manifestEnd.sha256) {
      // A whole-file mismatch means the chunk-level checks were fooled; keep nothing from this attempt.
      await this.release();
      await rm(this.journalPath, { force: true });
      await rm(this.partialPath, { force: true });
      this.fail(new DwcpChecksumError(`received content has sha256 ${sha256}, expected ${manifestEnd.sha256}`), true);
      return;
    }
    await partial.sync();
    await this.release();
    await rename(this.partialPath, this.input.targetPath);
    await rm(this.journalPath, { force: true });
    const dir = await open(path.dirname(this.input.targetPath), 'r');
    await dir.sync().finally(() => dir.close());
    this.finished = true;
    this.ctx.onFinished(this.transferId, sha256);
    await socket.send({ type: FrameType.END, transferId: this.transferId, payload: jsonPayload({ sha256 }) });
    socket.close();
    // The verified manifest is the new target's chunk index: its next version is then indexed without a scan.
    const chunking = this.chunking;
    if (chunking !== undefined) {
      await this.ctx.chunkIndex
        .addKnownFile({ path: this.input.targetPath, chunking, entries: this.manifest.entries })
        .catch(() => undefined);
    }
    this.progress({
      logicalBytes: this.logicalBytes,
      chunksDone: this.chunksDone,
      chunksTotal: manifestEnd.chunkCount,
      force: true,
    });
    this.result.resolve({
      transferId: this.transferId,
      sha256,
      logicalBytes: this.logicalBytes,
      wireBytes: this.wireBytes,
      durationMs: Date.now() - this.started,
      chunks: { ...this.stats },
    });
  }

  protected async release(): Promise<void> {
    clearInterval(this.flushTimer);
    this.flushTimer = undefined;
    const journal = this.journal;
    const partial = this.partial;
    this.journal = undefined;
    this.partial = undefined;
    // Keep whatever progress was made durable, so a later expectFile of the same transfer resumes from it.
    await journal?.flush().catch(() => undefined);
    await journal?.close().catch(() => undefined);
    await partial?.close().catch(() => undefined);
  }
}

class StreamReceiveTransfer extends ReceiveTransfer {
  private readonly sink: Writable;
  private readonly maxReorder: number;
  private readonly buffer = new Map<number, { data: Buffer; socket: FrameSocket; zero: boolean }>();
  private readonly hash = createHash('sha256');
  private nextIndex = 0;
  private delivered = 0;
  private delivering = false;

  constructor(input: ExpectStreamInput, ctx: ReceiverContext) {
    super({
      transferId: input.transferId,
      peerHostId: input.peerHostId,
      ctx,
      ...(input.onProgress ? { onProgress: input.onProgress } : {}),
    });
    this.sink = input.sink;
    this.maxReorder = input.maxReorderChunks ?? 1024;
  }

  async attach(socket: FrameSocket, hello: Hello): Promise<void> {
    if (hello.kind !== TransferKind.STREAM) throw new DwcpProtocolError('this transfer expects a stream');
    if (hello.streamIndex === 0) this.beginAttempt(socket, hello);
    else this.joinAttempt(socket, hello);
    const reply: HelloReply = { ok: true, nextIndex: this.nextIndex };
    await socket.send({ type: FrameType.HELLO, transferId: this.transferId, payload: jsonPayload(reply) });
    this.serve(socket, {
      onChunk: (frame) => this.handleChunk(socket, frame),
      onEnd: (frame) => this.finish(socket, frame),
    });
  }

  private async handleChunk(socket: FrameSocket, frame: Frame): Promise<void> {
    const index = frame.chunkIndex;
    if (!frame.checksumOk) return this.nack(socket, index, 'checksum');
    if (index < this.nextIndex) return this.ack(socket, index);
    if (index >= this.nextIndex + this.maxReorder)
      throw new DwcpProtocolError(`chunk ${index} is beyond the reorder window`);
    if (this.buffer.has(index)) return;
    let data: Buffer;
    if (frame.type === FrameType.ZERO) {
      data = decodeChunk({ encoding: ChunkEncoding.ZERO, payload: frame.payload, rawLength: frame.rawLength });
    } else if (frame.type === FrameType.CHUNK) {
      const decoded = await this.ctx.pool.run({
        kind: 'decode',
        encoding: frame.encoding,
        payload: frame.payload,
        rawLength: frame.rawLength,
      });
      if (decoded.data === undefined) return this.nack(socket, index, 'checksum');
      data = decoded.data;
    } else {
      throw new DwcpProtocolError('chunk references are not used in stream mode');
    }
    if (index < this.nextIndex || this.buffer.has(index)) return this.ack(socket, index);
    this.buffer.set(index, { data, socket, zero: frame.type === FrameType.ZERO });
    await this.deliver();
  }

  /** Writes buffered chunks to the sink in order, honouring the sink's backpressure; one delivery loop at a time. */
  private async deliver(): Promise<void> {
    if (this.delivering) return;
    this.delivering = true;
    try {
      for (;;) {
        const chunk = this.buffer.get(this.nextIndex);
        if (chunk === undefined || this.finished) return;
        this.buffer.delete(this.nextIndex);
        this.hash.update(chunk.data);
        if (!this.sink.write(chunk.data)) await waitDrain(this.sink);
        const index = this.nextIndex++;
        this.delivered += chunk.data.length;
        if (chunk.zero) this.stats.zero++;
        else this.stats.data++;
        this.progress({ logicalBytes: this.delivered, chunksDone: this.nextIndex, chunksTotal: undefined });
        await this.ack(chunk.socket, index);
      }
    } finally {
      this.delivering = false;
    }
  }

  private async finish(socket: FrameSocket, frame: Frame): Promise<void> {
    const end = parseJsonPayload({ frame, schema: EndSchema });
    await this.deliver();
    if (this.nextIndex !== end.chunkCount || this.delivered !== end.size) {
      throw new DwcpProtocolError(`END after ${this.nextIndex} of ${end.chunkCount} chunks`);
    }
    const sha256 = this.hash.digest('hex');
    if (sha256 !== end.sha256) {
      this.fail(new DwcpChecksumError(`stream has sha256 ${sha256}, sender says ${end.sha256}`), true);
      return;
    }
    await new Promise<void>((resolve, reject) => {
      this.sink.once('error', reject);
      this.sink.end(() => resolve());
    });
    this.finished = true;
    this.stats.total = this.nextIndex;
    this.ctx.onFinished(this.transferId, sha256);
    await socket.send({ type: FrameType.END, transferId: this.transferId, payload: jsonPayload({ sha256 }) });
    socket.close();
    this.progress({
      logicalBytes: this.delivered,
      chunksDone: this.nextIndex,
      chunksTotal: this.nextIndex,
      force: true,
    });
    this.result.resolve({
      transferId: this.transferId,
      sha256,
      logicalBytes: this.delivered,
      wireBytes: this.wireBytes,
      durationMs: Date.now() - this.started,
      chunks: { ...this.stats },
    });
  }

  protected release(): Promise<void> {
    this.buffer.clear();
    return Promise.resolve();
  }
}

function waitDrain(sink: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      sink.off('drain', onDrain);
      sink.off('error', done);
      sink.off('close', onClose);
      if (err) reject(DwcpError.fromNative(err, 'stream sink'));
      else resolve();
    };
    const onDrain = (): void => done();
    const onClose = (): void => done(new Error('stream sink closed'));
    sink.on('drain', onDrain);
    sink.on('error', done);
    sink.on('close', onClose);
  });
}

/**
 * The receiving end on one host: a mutual-TLS listener that serves link probes and the transfers registered with
 * expectFile / expectStream. Transfers are registered by id before the sender connects, so the receiving host, not
 * the sender, decides where content lands.
 */
export class DwcpReceiver {
  readonly chunkIndex: ChunkIndex;
  private readonly server: tls.Server;
  private readonly pool: DwcpWorkerPool;
  private readonly ownsPool: boolean;
  private readonly transfers = new Map<string, ReceiveTransfer>();
  /** Finished transfers, so a sender that lost the END reply can still learn the outcome. */
  private readonly completed = new Map<string, string>();
  private readonly connections = new Set<FrameSocket>();
  private readonly ctx: ReceiverContext;

  private constructor(options: DwcpReceiverOptions) {
    this.ownsPool = options.pool === undefined;
    this.pool = options.pool ?? new DwcpWorkerPool();
    this.chunkIndex = new ChunkIndex({ pool: this.pool, sidecars: options.indexSidecars ?? false });
    this.ctx = {
      pool: this.pool,
      chunkIndex: this.chunkIndex,
      journalBatchChunks: options.journalBatchChunks ?? 256,
      journalIntervalMs: options.journalIntervalMs ?? 1000,
      onFinished: (transferId, sha256) => {
        this.transfers.delete(transferId);
        if (sha256 !== undefined) {
          this.completed.set(transferId, sha256);
          if (this.completed.size > 1000) this.completed.delete(this.completed.keys().next().value ?? '');
        }
      },
    };
    this.server = createTlsServer({
      tls: options.tls,
      onConnection: (socket) => this.onConnection(socket),
      ...(options.onAuthFailure ? { onAuthFailure: options.onAuthFailure } : {}),
    });
  }

  static async start(options: DwcpReceiverOptions): Promise<DwcpReceiver> {
    const receiver = new DwcpReceiver(options);
    await new Promise<void>((resolve, reject) => {
      receiver.server.once('error', reject);
      receiver.server.listen(options.port ?? 0, options.host ?? '0.0.0.0', () => {
        receiver.server.off('error', reject);
        resolve();
      });
    });
    return receiver;
  }

  get port(): number {
    const address = this.server.address();
    if (address === null || typeof address === 'string') throw new Error('receiver is not listening');
    return address.port;
  }

  /** Registers a file transfer; resolves when the verified file is in place at `targetPath`. */
  expectFile(input: ExpectFileInput): Promise<ReceiveResult> {
    return this.register(new FileReceiveTransfer(input, this.ctx));
  }

  /** Registers a stream transfer; resolves after the last byte was written to `sink` and the sink ended. */
  expectStream(input: ExpectStreamInput): Promise<ReceiveResult> {
    return this.register(new StreamReceiveTransfer(input, this.ctx));
  }

  /**
   * Stops an expected transfer: its promise rejects with DwcpCancelledError and the sender is told, so it stops too.
   * The partial file and journal stay, so registering the same transfer id again resumes it. False if unknown.
   */
  cancel(transferId: string, reason = 'cancelled by the receiver'): boolean {
    const transfer = this.transfers.get(transferId);
    if (transfer === undefined) return false;
    transfer.fail(new DwcpCancelledError(reason), true);
    return true;
  }

  async close(): Promise<void> {
    for (const transfer of this.transfers.values()) transfer.fail(new DwcpCancelledError('receiver closed'), true);
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const c of this.connections) c.destroy();
    });
    if (this.ownsPool) await this.pool.close();
  }

  private register(transfer: ReceiveTransfer): Promise<ReceiveResult> {
    if (!isTransferId(transfer.transferId)) return Promise.reject(new DwcpProtocolError('transfer id must be a UUID'));
    if (this.transfers.has(transfer.transferId)) {
      return Promise.reject(new DwcpProtocolError(`transfer ${transfer.transferId} is already expected`));
    }
    this.completed.delete(transfer.transferId);
    this.transfers.set(transfer.transferId, transfer);
    return transfer.result.promise;
  }

  private onConnection(stream: tls.TLSSocket): void {
    const socket = new FrameSocket({ stream });
    this.connections.add(socket);
    stream.once('close', () => this.connections.delete(socket));
    void this.handshake(socket, stream).catch(async (err: unknown) => {
      const error = DwcpError.fromNative(err, 'handshake');
      await sendError(socket, '00000000-0000-0000-0000-000000000000', error);
      socket.close();
    });
  }

  private async handshake(socket: FrameSocket, stream: tls.TLSSocket): Promise<void> {
    const frame = await socket.receive({ timeoutMs: HELLO_TIMEOUT_MS });
    if (frame.type !== FrameType.HELLO) throw new DwcpProtocolError(`expected HELLO, got frame type ${frame.type}`);
    const hello = parseJsonPayload({ frame, schema: HelloSchema });
    if (hello.kind === TransferKind.PROBE) {
      await serveProbe({ socket, transferId: frame.transferId });
      return;
    }
    const completed = this.completed.get(frame.transferId);
    if (completed !== undefined) {
      await socket.send({
        type: FrameType.HELLO,
        transferId: frame.transferId,
        payload: jsonPayload({ ok: true, completed } satisfies HelloReply),
      });
      socket.close();
      return;
    }
    const transfer = this.transfers.get(frame.transferId);
    if (transfer === undefined) throw new DwcpUnknownTransferError(`transfer ${frame.transferId} is not expected here`);
    if (transfer.peerHostId !== undefined && peerCommonName({ stream }) !== transfer.peerHostId) {
      throw new DwcpAuthError(`transfer ${frame.transferId} may only be sent by ${transfer.peerHostId}`);
    }
    try {
      await transfer.attach(socket, hello);
    } catch (err) {
      const error = DwcpError.fromNative(err, 'transfer setup');
      if (!error.retryable) transfer.fail(error, true);
      throw error;
    }
  }
}
