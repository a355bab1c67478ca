/**
 * The receiving side of sendStream: chunks arrive on any connection in any order and leave for the sink in order,
 * through a reorder buffer as large as the sender's in-flight window. A chunk is acknowledged once it was
 * delivered, so a resumed stream starts at the first undelivered chunk.
 */
import { createHash, type Hash } from 'node:crypto';
import type { Writable } from 'node:stream';
import type { FrameSocket } from './connection';
import { decodeChunk } from './encoding';
import { DwcpChecksumError, DwcpError, DwcpProtocolError } from './errors';
import { ChunkEncoding, crcOmitted, FrameType, jsonPayload, parseJsonPayload, type Frame } from './framing';
import { EndSchema, TransferKind, type Hello, type HelloReply } from './protocol';
import { ReceiveTransfer, type ReceiverContext } from './receive-transfer';
import { streamIdentity, type TransferProgress } from './transfer-types';

export interface ExpectStreamInput {
  transferId: string;
  sink: Writable;
  peerHostId?: string;
  /** Must be at least the sender's maxInFlightChunks. */
  maxReorderChunks?: number;
  /** As the sender's wholeStreamSha256 (default true); both ends must agree. */
  wholeStreamSha256?: boolean;
  onProgress?: (progress: TransferProgress) => void;
}

/** One expected stream: chunks buffered until they are next in order, then written to the sink. */
export class StreamReceiveTransfer extends ReceiveTransfer {
  private readonly sink: Writable;
  private readonly maxReorder: number;
  private readonly buffer = new Map<number, { data: Buffer; socket: FrameSocket; zero: boolean }>();
  private readonly hash: Hash | undefined;
  private nextIndex = 0;
  private delivered = 0;
  private delivering = false;
  private zeroBuffer = Buffer.alloc(0);

  constructor(input: ExpectStreamInput, ctx: ReceiverContext) {
    super(input, ctx);
    this.sink = input.sink;
    this.maxReorder = input.maxReorderChunks ?? 1024;
    this.hash = input.wholeStreamSha256 === false ? undefined : createHash('sha256');
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
    // Nothing else checks a stream chunk before it reaches the sink, so its CRC may not be left out.
    if (crcOmitted(frame)) throw new DwcpChecksumError(`stream chunk ${index} carries no payload CRC`);
    if (!frame.checksumOk) return this.nack(socket, index, 'checksum');
    if (index < this.nextIndex) return this.ack(socket, index);
    if (index >= this.nextIndex + this.maxReorder)
      throw new DwcpProtocolError(`chunk ${index} is beyond the reorder window`);
    if (this.buffer.has(index)) return;
    let data: Buffer;
    if (frame.type === FrameType.ZERO) {
      data = this.zeros(frame.rawLength);
    } else if (frame.encoding === ChunkEncoding.RAW) {
      // A raw payload is the content itself, already checked against its CRC: the pool would only move it twice.
      data = decodeChunk({ encoding: ChunkEncoding.RAW, payload: frame.payload, rawLength: frame.rawLength });
    } else {
      const decoded = await this.ctx.pool.run({
        kind: 'decode',
        encoding: frame.encoding,
        payload: frame.payload,
        rawLength: frame.rawLength,
      });
      if (decoded.data === undefined) return this.nack(socket, index, 'checksum');
      data = decoded.data;
    }
    if (index < this.nextIndex || this.buffer.has(index)) return this.ack(socket, index);
    this.buffer.set(index, { data, socket, zero: frame.type === FrameType.ZERO });
    await this.deliver();
  }

  /** Zero chunks are views of one zero-filled buffer (sinks do not write into what they are given). */
  private zeros(length: number): Buffer {
    if (this.zeroBuffer.length < length) this.zeroBuffer = Buffer.alloc(length);
    return this.zeroBuffer.subarray(0, length);
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
        this.hash?.update(chunk.data);
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
    if ((this.hash === undefined) !== (end.sha256 === undefined)) {
      const how = (hashed: boolean): string => (hashed ? 'with' : 'without');
      const message = `stream sent ${how(end.sha256 !== undefined)} its sha256, expected ${how(this.hash !== undefined)}`;
      this.fail(new DwcpChecksumError(message), true);
      return;
    }
    const sha256 = this.hash?.digest('hex');
    if (sha256 !== end.sha256) {
      this.fail(new DwcpChecksumError(`stream has sha256 ${sha256}, sender says ${end.sha256}`), true);
      return;
    }
    await new Promise<void>((resolve, reject) => {
      this.sink.once('error', reject);
      this.sink.end(() => resolve());
    });
    this.stats.total = this.nextIndex;
    await this.answerEnd(socket, {
      verified: sha256 ?? streamIdentity({ size: end.size, chunkCount: end.chunkCount }),
    });
    this.succeed({ sha256, logicalBytes: this.delivered, chunksDone: this.nextIndex, chunksTotal: this.nextIndex });
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
