/**
 * sendStream: an ordered byte stream (a QEMU migration stream, say) in chunks of up to chunkBytes. There is no
 * manifest to resume from, so chunks stay in memory until the receiver has delivered them, bounded by the in-flight
 * window. sendStreamChannels sends several such streams at once (QEMU's multifd channels), one transfer each.
 */
import { createHash } from 'node:crypto';
import { encodeChunk } from './encoding';
import { DwcpChecksumError, DwcpError, DwcpIoError, DwcpProtocolError } from './errors';
import { ChunkEncoding, FrameType, jsonPayload, parseJsonPayload, type EncodeFrameInput } from './framing';
import { EndReplySchema, TransferKind, type End } from './protocol';
import type { SendWorkload } from './send-engine';
import { openDataSockets, SenderContext, type SenderOptions } from './sender-context';
import { DwcpWorkerPool } from './worker-pool';
import { emptyChunkStats, streamIdentity, type SendResult } from './transfer-types';

export interface SendStreamInput extends SenderOptions {
  source: AsyncIterable<Buffer>;
  chunkBytes?: number;
  /**
   * How long the source may stay silent before a partly filled chunk leaves anyway, so a source that pauses (QEMU
   * waiting for an answer from the destination) is never held back behind a half-filled chunk. 0: full chunks only.
   */
  idleFlushMs?: number;
  /**
   * Hash the whole stream on both ends and compare at END (default true; the receiver's expectStream must say the
   * same). The receiver has handed every byte to its sink by then, so for a live migration the comparison only
   * reports on what QEMU already consumed; the check that gates delivery is each chunk's CRC-32 (and zstd's
   * checksum), inside TLS. Leaving it out saves a sha256 pass on each end's event loop.
   */
  wholeStreamSha256?: boolean;
}

const DEFAULT_STREAM_CHUNK_BYTES = 256 * 1024;
/** See docs/dwcp.md, "Stream mode", for the measurement behind it. */
export const DEFAULT_IDLE_FLUSH_MS = 1;
/**
 * Chunks up to this size (typically one cut short by an idle flush) are encoded on the event loop: the pool's round
 * trip costs more than encoding a few KiB, and it is latency the paused source is waiting for.
 */
const ENCODE_INLINE_MAX_BYTES = 16 * 1024;

const IDLE = Symbol('idle');

/** The source's next piece, or IDLE once it has been silent for `ms`. */
function nextOrIdle<T>(next: Promise<T>, ms: number): Promise<T | typeof IDLE> {
  let timer: NodeJS.Timeout | undefined;
  const idle = new Promise<typeof IDLE>((resolve) => {
    timer = setTimeout(resolve, ms, IDLE);
  });
  return Promise.race([next, idle]).finally(() => clearTimeout(timer));
}

/**
 * Full-size chunk buffers whose chunk was acknowledged, to be filled again: a stream of N chunks would otherwise
 * allocate N buffers outside V8's heap, and V8 answers every few MiB of those with a full collection (about a third
 * of the sender's CPU on loopback before this, see docs/dwcp.md).
 */
class ChunkBuffers {
  private readonly free: Buffer[] = [];
  constructor(
    private readonly size: number,
    private readonly max: number,
  ) {}

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
  }

  /** Only whole buffers of their own come back (a raw payload is its chunk's buffer, returned by the pool). */
  give(buffer: Buffer): void {
    const whole = buffer.length === this.size && buffer.byteOffset === 0 && buffer.buffer.byteLength === this.size;
    if (whole && this.free.length < this.max) this.free.push(buffer);
  }
}

/**
 * Cuts an async byte source into owned buffers of `size` bytes. A partly filled chunk is cut short when the source
 * has been silent for `idleFlushMs`, and at the end of the source.
 */
async function* streamChunks(input: {
  source: AsyncIterable<Buffer>;
  buffers: ChunkBuffers;
  size: number;
  idleFlushMs: number;
}): AsyncGenerator<Buffer> {
  const { size, idleFlushMs } = input;
  const pieces = input.source[Symbol.asyncIterator]();
  let current = input.buffers.take();
  let filled = 0;
  // A buffer of its own, since the pool moves whole buffers to its threads; `current` is then filled again.
  const cutShort = (): Buffer => {
    const out = Buffer.allocUnsafeSlow(filled);
    current.copy(out, 0, 0, filled);
    filled = 0;
    return out;
  };
  for (;;) {
    const next = pieces.next();
    let piece = filled > 0 && idleFlushMs > 0 ? await nextOrIdle(next, idleFlushMs) : await next;
    if (piece === IDLE) {
      yield cutShort();
      piece = await next;
    }
    if (piece.done === true) break;
    const data = piece.value;
    let at = 0;
    while (at < data.length) {
      const n = Math.min(size - filled, data.length - at);
      data.copy(current, filled, at, at + n);
      filled += n;
      at += n;
      if (filled === size) {
        yield current;
        current = input.buffers.take();
        filled = 0;
      }
    }
  }
  if (filled > 0) yield cutShort();
}

/**
 * Reads the chunked source one chunk ahead of the engine, in the background: the engine's pump never waits on a
 * silent source, so resends after a NACK and a broken connection are dealt with while QEMU is paused (it may be
 * waiting for exactly the bytes a resend carries). A source that fails ends the transfer: the stream is lost.
 */
class ChunkReader {
  private readonly chunks: AsyncIterator<Buffer>;
  private ready: Buffer | undefined;
  private reading = false;
  private exhausted = false;
  private failure: DwcpError | undefined;
  /** Called when a read lands; the current attempt's engine sets it. */
  onReady: () => void = () => undefined;

  constructor(chunks: AsyncIterator<Buffer>) {
    this.chunks = chunks;
  }

  /** The next chunk, 'end' after the last one, or 'wait' while it is being read (onReady follows). */
  take(): Buffer | 'end' | 'wait' {
    if (this.failure !== undefined) throw this.failure;
    const chunk = this.ready;
    if (chunk !== undefined) {
      this.ready = undefined;
      this.read();
      return chunk;
    }
    if (this.exhausted) return 'end';
    this.read();
    return 'wait';
  }

  private read(): void {
    if (this.reading || this.exhausted) return;
    this.reading = true;
    this.chunks.next().then(
      (next) => {
        if (next.done === true) this.exhausted = true;
        else this.ready = next.value;
        this.reading = false;
        this.onReady();
      },
      (err: unknown) => {
        this.failure = new DwcpIoError(`stream source: ${err instanceof Error ? err.message : String(err)}`, err);
        this.reading = false;
        this.onReady();
      },
    );
  }
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
    const buffers = new ChunkBuffers(chunkBytes, window);
    const reader = new ChunkReader(
      streamChunks({
        source: input.source,
        buffers,
        size: chunkBytes,
        idleFlushMs: input.idleFlushMs ?? DEFAULT_IDLE_FLUSH_MS,
      }),
    );
    const hash = input.wholeStreamSha256 === false ? undefined : createHash('sha256');
    const retained = new Map<
      number,
      { offset: number; length: number; data: Buffer | undefined; frame: EncodeFrameInput | undefined }
    >();
    const stats = emptyChunkStats();
    let pulled = 0;
    let size = 0;
    let ended = false;
    let sha256: string | undefined;
    /** What the receiver answers END with: the sha256, or the stream's identity without one. */
    let identity = '';
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
      // Delivered, so its frame went out long ago and is never sent again.
      if (chunk.frame?.encoding === ChunkEncoding.RAW && chunk.frame.payload !== undefined)
        buffers.give(chunk.frame.payload);
    };

    const workload: SendWorkload = {
      pull: () => {
        if (ended) return Promise.resolve('end');
        const oldest = retained.keys().next();
        // The receiver buffers at most `window` chunks past its delivery point; never send beyond that.
        if (!oldest.done && pulled >= oldest.value + window) return Promise.resolve('wait');
        const next = reader.take();
        if (next === 'wait') return Promise.resolve('wait');
        if (next === 'end') {
          ended = true;
          sha256 = hash?.digest('hex');
          identity = sha256 ?? streamIdentity({ size, chunkCount: pulled });
          stats.total = pulled;
          return Promise.resolve('end');
        }
        hash?.update(next);
        retained.set(pulled, { offset: size, length: next.length, data: next, frame: undefined });
        size += next.length;
        return Promise.resolve(pulled++);
      },
      prepare: async (index) => {
        const chunk = retained.get(index);
        if (chunk === undefined) throw new DwcpProtocolError(`chunk ${index} is no longer retained`);
        if (chunk.frame !== undefined) return chunk.frame;
        if (chunk.data === undefined) throw new DwcpProtocolError(`chunk ${index} has no data`);
        const data = chunk.data;
        chunk.data = undefined;
        const encoded =
          data.length <= ENCODE_INLINE_MAX_BYTES
            ? encodeChunk({ data, level })
            : await ctx.pool.run({ kind: 'encode', data, level });
        chunk.frame = {
          type: encoded.encoding === ChunkEncoding.ZERO ? FrameType.ZERO : FrameType.CHUNK,
          transferId: input.transferId,
          chunkIndex: index,
          offset: chunk.offset,
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
          if (!ended || control.reply.completed !== identity)
            throw new DwcpChecksumError('receiver completed another stream');
          return;
        }
        const nextIndex = control.reply.nextIndex ?? 0;
        if (nextIndex > pulled) throw new DwcpProtocolError('receiver claims chunks that were never sent');
        for (const index of [...retained.keys()]) if (index < nextIndex) acknowledge(index);
        sockets.push(...(await openDataSockets({ ctx, attempt, kind: TransferKind.STREAM })));
        const engine = ctx.engine({ sockets, workload, queue: [...retained.keys()], maxInFlight: window });
        reader.onReady = () => engine.wake();
        const reply = await engine.run(() => ({
          type: FrameType.END,
          transferId: input.transferId,
          payload: jsonPayload({ ...(sha256 !== undefined ? { sha256 } : {}), size, chunkCount: pulled } satisfies End),
        }));
        const end = parseJsonPayload({ frame: reply, schema: EndReplySchema });
        if (end.sha256 !== identity) throw new DwcpChecksumError('receiver reports a different stream');
      } finally {
        reader.onReady = () => undefined;
        for (const s of sockets) s.destroy();
      }
    });
    ctx.progress({ logicalBytes, chunksDone, chunksTotal: pulled, force: true });
    return ctx.result({ ...(sha256 !== undefined ? { sha256 } : {}), logicalBytes, attempts, chunks: stats });
  } finally {
    await ctx.close();
  }
}

export interface SendStreamChannelsInput extends Omit<SendStreamInput, 'transferId' | 'source'> {
  /** One ordered stream each (QEMU's main channel and its multifd channels), under the id its receiver expects. */
  channels: Array<{ transferId: string; source: AsyncIterable<Buffer> }>;
}

/**
 * Sends several independent ordered streams at once, one stream transfer per channel over one worker pool. The
 * mode's `streams` and `maxInFlightChunks` are for the whole migration, so they are shared out between the channels
 * (at least one connection each). The first channel to fail cancels the others, since a migration needs them all;
 * its error is the one thrown.
 */
export async function sendStreamChannels(input: SendStreamChannelsInput): Promise<SendResult[]> {
  const { channels, signal, ...options } = input;
  const count = Math.max(1, channels.length);
  const pool = input.pool ?? new DwcpWorkerPool();
  const cancel = new AbortController();
  const onAbort = (): void => cancel.abort();
  if (signal?.aborted) cancel.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  let firstFailure: DwcpError | undefined;
  try {
    const sends = channels.map((channel) =>
      sendStream({
        ...options,
        ...channel,
        pool,
        signal: cancel.signal,
        streams: Math.max(1, Math.round((input.streams ?? 4) / count)),
        ...(input.maxInFlightChunks !== undefined
          ? { maxInFlightChunks: Math.max(1, Math.ceil(input.maxInFlightChunks / count)) }
          : {}),
      }).catch((err: unknown) => {
        firstFailure ??= DwcpError.fromNative(err, 'stream channel');
        cancel.abort();
        throw err;
      }),
    );
    const settled = await Promise.allSettled(sends);
    if (firstFailure !== undefined) throw firstFailure;
    return settled.map((s) => (s as PromiseFulfilledResult<SendResult>).value);
  } finally {
    signal?.removeEventListener('abort', onAbort);
    if (input.pool === undefined) await pool.close();
  }
}
