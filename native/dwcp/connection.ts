/**
 * Frame-level connections: mutual-TLS dialing and listening, and FrameSocket, which turns any duplex byte stream
 * into a queue of frames with write backpressure. The dialer is injectable so tests (and future transports such as
 * PSK or an in-process pipe) can stand in for TLS.
 */
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { TlsMaterial } from './certs';
import { DwcpCancelledError, DwcpConnectionError, DwcpError, DwcpTimeoutError } from './errors';
import { FRAME_HEADER_BYTES, FrameDecoder, encodeFrame, type EncodeFrameInput, type Frame } from './framing';

export interface DialInput {
  host: string;
  port: number;
  tls: TlsMaterial;
  /** Which of the transfer's parallel streams this connection is (0 is the control stream). */
  streamIndex: number;
  servername?: string;
  timeoutMs: number;
  signal?: AbortSignal;
}

export type Dialer = (input: DialInput) => Promise<Duplex>;

/** TLS 1.3 only: both sides present certificates from the fleet CA, and the server name or IP must match the SAN. */
export const dialTls: Dialer = (input) =>
  new Promise<Duplex>((resolve, reject) => {
    if (input.signal?.aborted) {
      reject(new DwcpCancelledError('connect cancelled'));
      return;
    }
    const socket = tls.connect({
      host: input.host,
      port: input.port,
      ca: input.tls.ca,
      cert: input.tls.cert,
      key: input.tls.key,
      minVersion: 'TLSv1.3',
      // Node refuses an IP address as SNI; for IPs the certificate's IP SAN is checked against `host` instead.
      ...(input.servername !== undefined
        ? { servername: input.servername }
        : isIP(input.host)
          ? {}
          : { servername: input.host }),
    });
    const timer = setTimeout(
      () => fail(new DwcpTimeoutError(`TLS connect to ${input.host}:${input.port} timed out`)),
      input.timeoutMs,
    );
    const onAbort = (): void => fail(new DwcpCancelledError('connect cancelled'));
    input.signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = (): void => {
      clearTimeout(timer);
      input.signal?.removeEventListener('abort', onAbort);
      socket.off('error', onError);
    };
    function fail(err: DwcpError): void {
      cleanup();
      socket.destroy();
      reject(err);
    }
    function onError(err: Error): void {
      fail(DwcpError.fromNative(err, `connect to ${input.host}:${input.port}`));
    }
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      cleanup();
      socket.setNoDelay(true);
      resolve(socket);
    });
  });

export interface TlsServerInput {
  tls: TlsMaterial;
  onConnection: (socket: tls.TLSSocket) => void;
  /** Called for handshakes that fail, typically a peer whose certificate is not from the fleet CA. */
  onAuthFailure?: (err: Error) => void;
}

export function createTlsServer(input: TlsServerInput): tls.Server {
  const server = tls.createServer(
    {
      ca: input.tls.ca,
      cert: input.tls.cert,
      key: input.tls.key,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
    },
    (socket) => {
      socket.setNoDelay(true);
      input.onConnection(socket);
    },
  );
  server.on('tlsClientError', (err: Error, socket: Socket) => {
    socket.destroy();
    input.onAuthFailure?.(err);
  });
  return server;
}

const HIGH_WATER_FRAMES = 256;
const LOW_WATER_FRAMES = 32;

/**
 * A duplex stream seen as frames. Incoming frames queue until `receive()` takes them; the socket is paused while
 * the queue is long, so a fast peer cannot grow it without bound. `send()` resolves once the frame is handed to
 * the socket and the socket is below its high-water mark.
 */
export class FrameSocket {
  private readonly decoder: FrameDecoder;
  private readonly queue: Frame[] = [];
  private waiter: { resolve: (f: Frame) => void; reject: (e: DwcpError) => void } | undefined;
  private failure: DwcpError | undefined;
  private paused = false;
  bytesIn = 0;
  bytesOut = 0;
  readonly stream: Duplex;

  constructor(input: { stream: Duplex; maxPayloadBytes?: number }) {
    this.stream = input.stream;
    this.decoder = new FrameDecoder(
      input.maxPayloadBytes === undefined ? {} : { maxPayloadBytes: input.maxPayloadBytes },
    );
    this.stream.on('data', (data: Buffer) => this.onData(data));
    this.stream.on('error', (err) => this.fail(DwcpError.fromNative(err, 'connection')));
    this.stream.on('close', () => this.fail(new DwcpConnectionError('connection closed')));
    this.stream.on('end', () => this.fail(new DwcpConnectionError('connection closed by peer')));
  }

  get isOpen(): boolean {
    return this.failure === undefined;
  }

  /** Why the connection ended, once it has. */
  get error(): DwcpError | undefined {
    return this.failure;
  }

  async send(frame: EncodeFrameInput): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    const [header, payload] = encodeFrame(frame);
    // Corked so header and payload leave in one TLS record instead of two.
    this.stream.cork();
    let ok = this.stream.write(header);
    if (payload.length > 0) ok = this.stream.write(payload);
    this.stream.uncork();
    this.bytesOut += FRAME_HEADER_BYTES + payload.length;
    if (!ok) await this.drained();
  }

  receive(input: { timeoutMs?: number } = {}): Promise<Frame> {
    const next = this.queue.shift();
    if (next !== undefined) {
      this.maybeResume();
      return Promise.resolve(next);
    }
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise<Frame>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      if (input.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.waiter = undefined;
          reject(new DwcpTimeoutError(`no frame within ${input.timeoutMs} ms`));
        }, input.timeoutMs);
      }
      this.waiter = {
        resolve: (f) => {
          clearTimeout(timer);
          resolve(f);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  /** Ends the connection; frames already written are still delivered. */
  close(): void {
    if (this.failure === undefined) this.failure = new DwcpConnectionError('connection closed locally');
    this.stream.end();
    setTimeout(() => this.stream.destroy(), 1000).unref();
  }

  destroy(err?: DwcpError): void {
    this.fail(err ?? new DwcpConnectionError('connection closed locally'));
    this.stream.destroy();
  }

  private drained(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        this.stream.off('drain', done);
        this.stream.off('close', done);
        if (this.failure !== undefined) reject(this.failure);
        else resolve();
      };
      this.stream.on('drain', done);
      this.stream.on('close', done);
    });
  }

  private onData(data: Buffer): void {
    this.bytesIn += data.length;
    let frames: Frame[];
    try {
      frames = this.decoder.push(data);
    } catch (err) {
      this.destroy(DwcpError.fromNative(err, 'frame decoding'));
      return;
    }
    for (const frame of frames) {
      const waiter = this.waiter;
      if (waiter !== undefined) {
        this.waiter = undefined;
        waiter.resolve(frame);
      } else {
        this.queue.push(frame);
      }
    }
    if (this.queue.length > HIGH_WATER_FRAMES && !this.paused) {
      this.paused = true;
      this.stream.pause();
    }
  }

  private maybeResume(): void {
    if (this.paused && this.queue.length < LOW_WATER_FRAMES) {
      this.paused = false;
      this.stream.resume();
    }
  }

  private fail(err: DwcpError): void {
    if (this.failure === undefined) this.failure = err;
    const waiter = this.waiter;
    if (waiter !== undefined && this.queue.length === 0) {
      this.waiter = undefined;
      waiter.reject(this.failure);
    }
  }
}

/** The common name of the peer's verified client certificate, for binding a transfer to the expected host. */
export function peerCommonName(input: { stream: Duplex }): string | undefined {
  if (!(input.stream instanceof tls.TLSSocket)) return undefined;
  const cn = input.stream.getPeerCertificate().subject?.CN;
  return typeof cn === 'string' ? cn : undefined;
}
