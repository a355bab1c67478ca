/**
 * The receiving side's base for one expected transfer, shared by file and stream transfers: which connections
 * belong to the current attempt, the frame loop of each connection, ACK/NACK, and failure. What a chunk means is
 * the subclass's business (file-receive-transfer.ts, stream-receive-transfer.ts).
 */
import type { ChunkHash } from './chunk-hash';
import type { ChunkingParams } from './chunking';
import type { ChunkIndex } from './chunk-index';
import type { FrameSocket } from './connection';
import type { DwcpWorkerPool } from './worker-pool';
import { DwcpError, DwcpProtocolError } from './errors';
import { ErrorBodySchema, FrameType, jsonPayload, parseJsonPayload, type Frame } from './framing';
import type { EndReply, Hello, NackReason } from './protocol';
import { emptyChunkStats, progressReporter, type ReceiveResult, type TransferProgress } from './transfer-types';

export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (err: unknown) => void;
}

export function deferred<T>(): Deferred<T> {
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

/** Tells the peer why its transfer failed; best effort, since the connection may be gone. */
export async function sendError(socket: FrameSocket, transferId: string, err: DwcpError): Promise<void> {
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

/**
 * A finished transfer as the receiver remembers it for a sender that lost the END reply: what it verified (see
 * EndReplySchema) and, for a file, how its chunks were cut and named, since a manifest digest depends on both.
 */
export interface Completion {
  verified: string;
  chunkHash?: ChunkHash;
  /** The cuts alone (chunkHash names the hash). */
  cuts?: ChunkingParams;
}

/** What every transfer of one receiver shares. */
export interface ReceiverContext {
  pool: DwcpWorkerPool;
  chunkIndex: ChunkIndex;
  journalBatchChunks: number;
  journalIntervalMs: number;
  /** The chunk hashes this receiver can check, best first. */
  chunkHashes: readonly ChunkHash[];
  /** `completed`: what the receiver verified, undefined when the transfer failed. */
  onFinished: (transferId: string, completed: Completion | undefined) => void;
}

/** Limits concurrent chunk handling per connection; the sender's window bounds it further. */
const CHUNKS_IN_PROGRESS_PER_SOCKET = 16;

/**
 * One expected transfer and its connections: attempts that supersede each other, frames read with bounded
 * concurrency, ACK/NACK, and failure that tells the sender and releases what the transfer holds.
 */
export abstract class ReceiveTransfer {
  readonly transferId: string;
  readonly peerHostId: string | undefined;
  readonly result = deferred<ReceiveResult>();
  protected readonly ctx: ReceiverContext;
  protected readonly sockets = new Set<FrameSocket>();
  protected readonly retiredWireBytes: number[] = [];
  protected attempt = -1;
  protected finished = false;
  protected readonly started = Date.now();
  protected readonly stats = emptyChunkStats();
  protected readonly progress: ReturnType<typeof progressReporter>;

  constructor(
    input: { transferId: string; peerHostId?: string; onProgress?: (p: TransferProgress) => void },
    ctx: ReceiverContext,
  ) {
    this.transferId = input.transferId;
    this.peerHostId = input.peerHostId;
    this.ctx = ctx;
    this.progress = progressReporter({ onProgress: input.onProgress, wireBytes: () => this.wireBytes });
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

  /**
   * Connection and protocol trouble (and a cancel the sender reported) only costs this connection: the sender
   * reconnects or sends again later. Disk trouble is final.
   */
  private onChunkError(socket: FrameSocket, err: unknown): void {
    const error = DwcpError.fromNative(err, 'receiving');
    if (error.retryable) {
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

  /**
   * Answers the sender's END with what this side verified (see EndReplySchema); from then on the receiver only
   * remembers it.
   */
  protected async answerEnd(socket: FrameSocket, completion: Completion): Promise<void> {
    const { verified } = completion;
    this.finished = true;
    this.ctx.onFinished(this.transferId, completion);
    await socket.send({
      type: FrameType.END,
      transferId: this.transferId,
      payload: jsonPayload({ sha256: verified } satisfies EndReply),
    });
    socket.close();
  }

  /** The final progress report, then the result for whoever expects the transfer. */
  protected succeed(input: {
    sha256: string | undefined;
    manifestDigest?: string;
    logicalBytes: number;
    chunksDone: number;
    chunksTotal: number;
  }): void {
    const { sha256, manifestDigest, ...progress } = input;
    this.progress({ ...progress, force: true });
    this.result.resolve({
      transferId: this.transferId,
      ...(sha256 !== undefined ? { sha256 } : {}),
      ...(manifestDigest !== undefined ? { manifestDigest } : {}),
      logicalBytes: input.logicalBytes,
      wireBytes: this.wireBytes,
      durationMs: Date.now() - this.started,
      chunks: { ...this.stats },
    });
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
