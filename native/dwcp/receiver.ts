/**
 * DwcpReceiver, the receiving end on one host: a mutual-TLS listener that answers link probes and hands each
 * connection to the transfer its HELLO names (file-receive-transfer.ts, stream-receive-transfer.ts).
 */
import type tls from 'node:tls';
import type { TlsMaterial } from './certs';
import { ChunkIndex } from './chunk-index';
import { chunkingKey, chunkingParams, type ChunkingParams } from './chunking';
import { createTlsServer, FrameSocket, peerCommonName } from './connection';
import { DwcpWorkerPool } from './worker-pool';
import { DwcpAuthError, DwcpCancelledError, DwcpError, DwcpProtocolError, DwcpUnknownTransferError } from './errors';
import { FileReceiveTransfer, type ExpectFileInput } from './file-receive-transfer';
import { FrameType, isTransferId, jsonPayload, parseJsonPayload } from './framing';
import { serveProbe } from './mode';
import { HELLO_TIMEOUT_MS, HelloSchema, TransferKind, type Hello, type HelloReply } from './protocol';
import { localChunkHashes, type ChunkHash } from './chunk-hash';
import { sendError, type Completion, type ReceiveTransfer, type ReceiverContext } from './receive-transfer';
import { StreamReceiveTransfer, type ExpectStreamInput } from './stream-receive-transfer';
import type { ReceiveResult } from './transfer-types';

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
  /**
   * The chunk hashes this receiver accepts, best first (default: what this process can compute,
   * chunk-hash.ts's localChunkHashes). Tests narrow it to play a host without dwcp-native.
   */
  chunkHashes?: readonly ChunkHash[];
  onAuthFailure?: (err: Error) => void;
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
  private readonly completed = new Map<string, Completion>();
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
      chunkHashes: options.chunkHashes ?? localChunkHashes,
      onFinished: (transferId, completion) => {
        this.transfers.delete(transferId);
        if (completion !== undefined) {
          this.completed.set(transferId, completion);
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
      const { chunking, chunkHash } = completedChunking({ completed, hello });
      await socket.send({
        type: FrameType.HELLO,
        transferId: frame.transferId,
        payload: jsonPayload({
          ok: true,
          completed: completed.verified,
          ...(chunking !== undefined ? { chunking } : {}),
          ...(chunkHash !== undefined ? { chunkHash } : {}),
        } satisfies HelloReply),
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

/**
 * How a finished file transfer was cut and hashed, as far as the sender that sends it again can take it: the cuts
 * only when they are the first-copy chunking it offers (a chunking it did not offer is refused), the hash only when
 * it offers it (an older sender means sha256 and would not read one). Without them the sender scans as it would
 * anyway, which matches whenever the transfer is known by its whole-file sha256.
 */
function completedChunking(input: { completed: Completion; hello: Hello }): {
  chunking?: ChunkingParams;
  chunkHash?: ChunkHash;
} {
  const { completed, hello } = input;
  const offer = hello.file?.firstCopyChunking;
  const cuts = completed.cuts;
  const chunkHash = completed.chunkHash;
  return {
    ...(offer !== undefined && cuts !== undefined && chunkingKey(chunkingParams(offer)) === chunkingKey(cuts)
      ? { chunking: cuts }
      : {}),
    ...(chunkHash !== undefined && hello.file?.chunkHashes?.includes(chunkHash) ? { chunkHash } : {}),
  };
}
