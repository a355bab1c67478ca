/**
 * Chunk-sized buffers handed back once their chunk has been written, to be filled again. A fresh buffer per chunk
 * costs three times: the allocator maps new memory and the kernel zero-fills it on first touch (on these VMs,
 * freed memory is also reported back to the hypervisor and faults again there), and V8 answers every few MiB of
 * memory outside its heap with a full collection. bench/dwcp/buffer-reuse.ts measures both ways side by side.
 *
 * Buffers are kept by exact length and each owns its whole ArrayBuffer, so one can still move to a worker thread
 * (worker-messages.ts copies a view instead of moving it). That suits DWCP's chunks: first copies and streams cut
 * nearly every chunk at one size, and the rare other sizes (a file's or a stream's last chunk, content-defined
 * chunks) are kept too, up to the byte budget, or left to the collector.
 */
export const DEFAULT_RECYCLER_BYTES = 64 * 1024 * 1024;
/** Below this V8's own Buffer pool and malloc's free lists already serve allocations without new mappings. */
const MIN_RECYCLED_BYTES = 64 * 1024;

export class BufferRecycler {
  /** Kept buffers by length, each length with the tick of its last take (the least recently taken goes first). */
  private readonly free = new Map<number, { buffers: Buffer[]; lastTaken: number }>();
  private readonly kept = new WeakSet<Buffer>();
  private keptBytes = 0;
  private ticks = 0;
  private readonly maxBytes: number;
  /** What take() served from kept buffers and what it allocated. */
  readonly counts = { reused: 0, allocated: 0 };

  constructor(input: { maxBytes?: number } = {}) {
    this.maxBytes = input.maxBytes ?? DEFAULT_RECYCLER_BYTES;
  }

  /** A buffer of exactly `length` bytes that owns its memory; its content is whatever it held before. */
  take(length: number): Buffer {
    const list = this.free.get(length);
    if (list !== undefined) list.lastTaken = ++this.ticks;
    const buffer = list?.buffers.pop();
    if (buffer === undefined) {
      this.counts.allocated++;
      return Buffer.allocUnsafeSlow(length);
    }
    this.kept.delete(buffer);
    this.keptBytes -= length;
    this.counts.reused++;
    return buffer;
  }

  /**
   * Takes back a buffer nobody reads or writes any more. Views into a larger ArrayBuffer, small buffers and buffers
   * already moved to another thread (length 0) are left to the collector; past the budget, the lengths least
   * recently taken make room.
   */
  give(buffer: Buffer): void {
    const length = buffer.length;
    if (length < MIN_RECYCLED_BYTES || length > this.maxBytes || this.kept.has(buffer)) return;
    if (buffer.byteOffset !== 0 || buffer.buffer.byteLength !== length || !(buffer.buffer instanceof ArrayBuffer))
      return;
    this.makeRoom(length);
    let list = this.free.get(length);
    if (list === undefined) {
      list = { buffers: [], lastTaken: 0 };
      this.free.set(length, list);
    }
    list.buffers.push(buffer);
    this.kept.add(buffer);
    this.keptBytes += length;
  }

  /** Bytes held for reuse. */
  get retainedBytes(): number {
    return this.keptBytes;
  }

  private makeRoom(length: number): void {
    while (this.keptBytes + length > this.maxBytes) {
      let victim: number | undefined;
      let oldest = Infinity;
      for (const [size, list] of this.free) {
        if (list.buffers.length > 0 && list.lastTaken < oldest) {
          victim = size;
          oldest = list.lastTaken;
        }
      }
      if (victim === undefined) return;
      const dropped = this.free.get(victim)!.buffers.pop()!;
      this.kept.delete(dropped);
      this.keptBytes -= victim;
    }
  }
}
