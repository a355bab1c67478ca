/**
 * Domain events as an async iterator, read from one long-running `virsh event --loop`, so that a caller learns of
 * lifecycle changes (a guest that stopped or crashed) without polling every domain.
 */
import type { SpawnedCommand } from './command-runner';
import { LibvirtConnectionLostError, LibvirtError, LibvirtErrorCode } from './errors';
import type { DomainEvent } from './libvirt-types';
import { parseEventLine } from './virsh-parsers';

/** An async iterator of domain events. Ends after `close()`; throws LibvirtConnectionLostError if virsh dies. */
export class DomainEventStream implements AsyncIterable<DomainEvent> {
  readonly ready: Promise<void>;
  private readonly queue: DomainEvent[] = [];
  private waiter: (() => void) | undefined;
  private failure: LibvirtError | undefined;
  private ended = false;
  private closing = false;
  private markReady!: () => void;
  private readonly pump: Promise<void>;

  constructor(
    private readonly command: SpawnedCommand,
    uri: string,
  ) {
    this.ready = new Promise((resolve) => (this.markReady = resolve));
    this.pump = this.consume(uri);
    // Readiness must not hang a caller when virsh fails before printing anything.
    void this.pump.finally(() => this.markReady());
  }

  private async consume(uri: string): Promise<void> {
    for await (const line of this.command.lines) {
      if (line === 'novacron-events-ready') {
        this.markReady();
        continue;
      }
      const event = parseEventLine(line);
      if (event) this.push(event);
    }
    const result = await this.command.exited;
    if (!this.closing) {
      const operation = `events ${uri}`;
      this.failure =
        result.stderr.trim() === ''
          ? new LibvirtConnectionLostError({
              message: `${operation}: virsh event ended unexpectedly`,
              code: LibvirtErrorCode.noConnect,
              operation,
            })
          : LibvirtError.fromVirsh({ stderr: result.stderr, operation });
    }
    this.ended = true;
    this.wake();
  }

  private push(event: DomainEvent): void {
    this.queue.push(event);
    this.wake();
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  async next(): Promise<IteratorResult<DomainEvent>> {
    for (;;) {
      const event = this.queue.shift();
      if (event) return { value: event, done: false };
      if (this.failure) throw this.failure;
      if (this.ended) return { value: undefined, done: true };
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    this.command.kill();
    await this.pump;
  }

  [Symbol.asyncIterator](): AsyncIterator<DomainEvent> {
    return {
      next: () => this.next(),
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }
}
