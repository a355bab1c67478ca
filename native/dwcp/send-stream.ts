/**
 * sendStream: an ordered byte stream (a QEMU migration stream, say) in fixed-size chunks. There is no manifest to
 * resume from, so chunks stay in memory until the receiver has delivered them, bounded by the in-flight window.
 */
import { createHash } from 'node:crypto';
import { DwcpChecksumError, DwcpProtocolError } from './errors';
import { ChunkEncoding, FrameType, jsonPayload, parseJsonPayload, type EncodeFrameInput } from './framing';
import { EndReplySchema, TransferKind, type End } from './protocol';
import type { SendWorkload } from './send-engine';
import { openDataSockets, SenderContext, type SenderOptions } from './sender-context';
import { emptyChunkStats, type SendResult } from './transfer-types';

export interface SendStreamInput extends SenderOptions {
  source: AsyncIterable<Buffer>;
  chunkBytes?: number;
}

const DEFAULT_STREAM_CHUNK_BYTES = 256 * 1024;

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
    const stats = emptyChunkStats();
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
        const engine = ctx.engine({ sockets, workload, queue: [...retained.keys()], maxInFlight: window });
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
    return ctx.result({ sha256, logicalBytes, attempts, chunks: stats });
  } finally {
    await ctx.close();
  }
}
