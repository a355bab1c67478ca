/**
 * The sending side of one attempt, shared by file and stream transfers: spreads chunks over the attempt's
 * connections, keeps at most `maxInFlight` chunks unacknowledged (the bound on memory at both ends), resends NACKed
 * chunks, and fails the whole attempt on the first broken connection so the caller can reconnect and resume.
 */
import { DwcpCancelledError, DwcpChecksumError, DwcpError, DwcpProtocolError } from './errors';
import type { FrameSocket } from './connection';
import {
  ErrorBodySchema,
  FRAME_HEADER_BYTES,
  FrameType,
  parseJsonPayload,
  type EncodeFrameInput,
  type Frame,
} from './framing';
import { NackSchema, type NackReason } from './protocol';

/** What the engine asks of a file or stream transfer. */
export interface SendWorkload {
  /** The next new chunk index, 'wait' while none can be taken yet, or 'end' when the content is exhausted. */
  pull(): Promise<number | 'wait' | 'end'>;
  /** Builds the frame for a chunk (compressing in the worker pool); called again when a chunk is resent. */
  prepare(index: number): Promise<EncodeFrameInput>;
  onAck(index: number): void;
  onNack(index: number, reason: NackReason): void;
  /**
   * A NEED frame (the receiver's answer to one manifest part) read from a connection; chunks it asks for become
   * available to `pull`. Only file transfers get these.
   */
  onNeed?(frame: Frame): void;
}

export interface SendEngineInput {
  sockets: FrameSocket[];
  workload: SendWorkload;
  /** Chunks already known to need sending (resumed or preloaded), in order. */
  queue: number[];
  maxInFlight: number;
  maxRetriesPerChunk: number;
  /** Waits until `bytes` may be written (bandwidth cap); resolves at once without a cap. */
  throttle: (bytes: number) => Promise<void>;
  signal: AbortSignal | undefined;
  onFrameSent: (input: { index: number; frame: EncodeFrameInput }) => void;
}

/**
 * Wakes everyone waiting for the next change. A change nobody was waiting for is remembered, and the next wait
 * returns at once: a producer outside the engine's own reads (a stream source, wake()) may land between a caller's
 * look at the state and its wait, and must not be lost there. Callers re-check their state after every wait anyway.
 */
export class Notifier {
  private waiters: (() => void)[] = [];
  private missed = false;

  wait(): Promise<void> {
    if (this.missed) {
      this.missed = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  notify(): void {
    const waiters = this.waiters;
    if (waiters.length === 0) {
      this.missed = true;
      return;
    }
    this.waiters = [];
    for (const w of waiters) w();
  }
}

interface SocketState {
  socket: FrameSocket;
  inFlight: number;
  chain: Promise<void>;
}

export class SendEngine {
  private readonly input: SendEngineInput;
  private readonly sockets: SocketState[];
  private readonly inFlight = new Map<number, SocketState | undefined>();
  private readonly retries = new Map<number, number>();
  private readonly changed = new Notifier();
  private failure: DwcpError | undefined;
  private endReply: ((frame: Frame) => void) | undefined;

  constructor(input: SendEngineInput) {
    this.input = input;
    this.sockets = input.sockets.map((socket) => ({ socket, inFlight: 0, chain: Promise.resolve() }));
  }

  /** Sends every chunk and waits for all acknowledgements; then sends END and returns the receiver's END reply. */
  async run(buildEnd: () => EncodeFrameInput | Promise<EncodeFrameInput>): Promise<Frame> {
    const readers = this.sockets.map((s) => this.read(s));
    const onAbort = (): void => this.fail(new DwcpCancelledError('transfer cancelled'));
    if (this.input.signal?.aborted) onAbort();
    this.input.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await this.pump();
      const control = this.sockets[0];
      if (control === undefined) throw new DwcpProtocolError('no control connection');
      const reply = new Promise<Frame>((resolve) => {
        this.endReply = resolve;
      });
      const end = await buildEnd();
      this.check();
      await control.socket.send(end);
      for (;;) {
        const settled = await Promise.race([reply, this.changed.wait().then(() => undefined)]);
        this.check();
        if (settled !== undefined) return settled;
      }
    } finally {
      this.input.signal?.removeEventListener('abort', onAbort);
      for (const s of this.sockets) s.socket.destroy();
      await Promise.allSettled(readers);
    }
  }

  /** Tells the pump that `pull` may have something new (chunks became known outside the engine's own reads). */
  wake(): void {
    this.changed.notify();
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  fail(err: DwcpError): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    for (const s of this.sockets) s.socket.destroy(err);
    this.changed.notify();
  }

  private async pump(): Promise<void> {
    const { queue } = this.input;
    let exhausted = false;
    for (;;) {
      this.check();
      if (this.inFlight.size >= this.input.maxInFlight) {
        await this.changed.wait();
        continue;
      }
      let index = queue.shift();
      if (index === undefined && !exhausted) {
        const pulled = await this.input.workload.pull();
        this.check();
        if (pulled === 'end') exhausted = true;
        else if (pulled !== 'wait') index = pulled;
        else if (this.inFlight.size > 0) {
          await this.changed.wait();
          continue;
        }
      }
      if (index === undefined) {
        if (this.inFlight.size === 0 && queue.length === 0 && exhausted) return;
        await this.changed.wait();
        continue;
      }
      this.inFlight.set(index, undefined);
      this.dispatch(index).catch((err: unknown) => this.fail(DwcpError.fromNative(err, `chunk ${index}`)));
    }
  }

  private async dispatch(index: number): Promise<void> {
    const frame = await this.input.workload.prepare(index);
    this.check();
    const target = this.pickSocket();
    this.inFlight.set(index, target);
    target.inFlight++;
    const size = (frame.payload?.length ?? 0) + FRAME_HEADER_BYTES;
    // Per-socket chain: frames on one connection go out one after another, each waiting for drain if needed.
    target.chain = target.chain.then(async () => {
      await this.input.throttle(size);
      this.check();
      await target.socket.send(frame);
      this.input.onFrameSent({ index, frame });
    });
    await target.chain;
  }

  /** The connection with the fewest unacknowledged chunks: a slower stream is given less. */
  private pickSocket(): SocketState {
    let best: SocketState | undefined;
    for (const s of this.sockets) if (s.socket.isOpen && (best === undefined || s.inFlight < best.inFlight)) best = s;
    if (best === undefined) throw this.failure ?? new DwcpProtocolError('no open connection');
    return best;
  }

  private settle(index: number): SocketState | undefined {
    const owner = this.inFlight.get(index);
    if (owner !== undefined) owner.inFlight--;
    this.inFlight.delete(index);
    return owner;
  }

  private async read(state: SocketState): Promise<void> {
    try {
      for (;;) {
        const frame = await state.socket.receive();
        switch (frame.type) {
          case FrameType.ACK:
            if (!this.inFlight.has(frame.chunkIndex)) break;
            this.settle(frame.chunkIndex);
            this.retries.delete(frame.chunkIndex);
            this.input.workload.onAck(frame.chunkIndex);
            this.changed.notify();
            break;
          case FrameType.NACK: {
            if (!this.inFlight.has(frame.chunkIndex)) break;
            const { reason } = parseJsonPayload({ frame, schema: NackSchema });
            const tries = (this.retries.get(frame.chunkIndex) ?? 0) + 1;
            this.retries.set(frame.chunkIndex, tries);
            if (reason === 'checksum' && tries > this.input.maxRetriesPerChunk) {
              throw new DwcpChecksumError(`chunk ${frame.chunkIndex} failed its checksum ${tries} times`);
            }
            this.settle(frame.chunkIndex);
            this.input.workload.onNack(frame.chunkIndex, reason);
            this.input.queue.unshift(frame.chunkIndex);
            this.changed.notify();
            break;
          }
          case FrameType.NEED:
            if (this.input.workload.onNeed === undefined) throw new DwcpProtocolError('NEED in a stream transfer');
            this.input.workload.onNeed(frame);
            this.changed.notify();
            break;
          case FrameType.END:
            this.endReply?.(frame);
            this.changed.notify();
            break;
          case FrameType.ERROR:
            throw DwcpError.fromRemote(parseJsonPayload({ frame, schema: ErrorBodySchema }));
          default:
            throw new DwcpProtocolError(`unexpected frame type ${frame.type} from the receiver`);
        }
      }
    } catch (err) {
      this.fail(DwcpError.fromNative(err, 'receiver connection'));
    }
  }
}
