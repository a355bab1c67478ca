/**
 * DwcpWorkerPool: the few worker threads that run all of DWCP's CPU work (chunking, hashing, zstd, verified reads
 * and writes), so that a transfer's event loop only moves frames. Also the calls that outside code makes through
 * the pool: a file's sha256, and the compression calibration on a sample of an image's data.
 */
import { open } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { isZeroChunk } from './chunking';
import { DwcpCancelledError, DwcpError, DwcpIoError } from './errors';
import { postWorkerMessage, reviveBuffers, type WorkerRequest, type WorkerResponse } from './worker-messages';
import type { Calibration, WorkerParts, WorkerResults, WorkerTask } from './worker-tasks';

export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}

interface PendingTask {
  id: number;
  task: WorkerTask;
  onPart: ((part: WorkerParts[keyof WorkerParts]) => void) | undefined;
  resolve: (value: WorkerResults[WorkerTask['kind']]) => void;
  reject: (err: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  busy: PendingTask | undefined;
  /**
   * Shared with the worker: the id of a task to give up (worker-entry.ts checks it before it hands out each part). An
   * id, not a flag, so a cancel that comes too late cannot stop the task after it.
   */
  cancel: Int32Array;
}

/**
 * A small fixed pool of worker threads, one task per worker at a time (tasks are CPU-bound; more would only queue
 * inside the worker). Workers are unref'd while idle so an open pool never keeps a process alive on its own.
 */
export class DwcpWorkerPool {
  private readonly workers: PoolWorker[] = [];
  private readonly queue: PendingTask[] = [];
  private nextId = 1;
  private closed = false;
  readonly size: number;

  constructor(input: { size?: number } = {}) {
    this.size = input.size ?? defaultWorkerCount();
    for (let i = 0; i < this.size; i++) this.workers.push(this.spawn());
  }

  /** Buffers in `task` are moved to the worker, not copied: the caller must not use them afterwards. */
  run<K extends WorkerTask['kind']>(task: Extract<WorkerTask, { kind: K }>): Promise<WorkerResults[K]> {
    return this.enqueue(task, undefined);
  }

  /**
   * Runs a task that reports parts before it finishes; `onPart` gets them in order, on this thread, before the
   * returned promise settles. A throwing `onPart` does not stop the task: handle failures inside it; `signal` does
   * (see cancel).
   */
  runWithParts<K extends keyof WorkerParts>(
    task: Extract<WorkerTask, { kind: K }>,
    onPart: (part: WorkerParts[K]) => void,
    options: { signal?: AbortSignal } = {},
  ): Promise<WorkerResults[K]> {
    return this.enqueue(task, onPart, options.signal);
  }

  private enqueue<K extends WorkerTask['kind']>(
    task: Extract<WorkerTask, { kind: K }>,
    onPart: ((part: WorkerParts[keyof WorkerParts]) => void) | undefined,
    signal?: AbortSignal,
  ): Promise<WorkerResults[K]> {
    if (this.closed) return Promise.reject(new DwcpIoError('worker pool is closed'));
    if (signal?.aborted) return Promise.reject(new DwcpCancelledError('task cancelled before it started'));
    return new Promise<WorkerResults[K]>((resolve, reject) => {
      const onAbort = (): void => this.cancel(pending);
      const settled = (): void => signal?.removeEventListener('abort', onAbort);
      const pending: PendingTask = {
        id: this.nextId++,
        task,
        onPart,
        resolve: (value) => {
          settled();
          resolve(value as WorkerResults[K]);
        },
        reject: (err) => {
          settled();
          reject(err);
        },
      };
      this.queue.push(pending);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.dispatch();
    });
  }

  /**
   * A queued task leaves the queue; a running one is asked to stop at its next part, and its promise rejects with
   * DwcpCancelledError when it does (or settles as usual if it finished first). Only tasks that report parts look.
   */
  private cancel(pending: PendingTask): void {
    const queued = this.queue.indexOf(pending);
    if (queued >= 0) {
      this.queue.splice(queued, 1);
      pending.reject(new DwcpCancelledError('task cancelled before it started'));
      return;
    }
    const slot = this.workers.find((w) => w.busy === pending);
    if (slot !== undefined) Atomics.store(slot.cancel, 0, pending.id);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const pending of this.queue.splice(0)) pending.reject(new DwcpIoError('worker pool closed'));
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }

  private spawn(): PoolWorker {
    const extension = path.extname(__filename);
    // The entry sits beside this file: worker-entry.ts under tsx, worker-entry.js in a build.
    const entry = path.join(__dirname, `worker-entry${extension}`);
    // Workers do not inherit tsx's loader hooks, so under tsx the worker is a small eval'd script that registers
    // them (tsx/cjs) before it requires the entry; the paths are embedded as JSON string literals.
    const cancel = new Int32Array(new SharedArrayBuffer(4));
    const workerData = { cancel };
    const worker =
      extension === '.ts'
        ? new Worker(`require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(entry)});`, {
            eval: true,
            workerData,
          })
        : new Worker(entry, { workerData });
    const slot: PoolWorker = { worker, busy: undefined, cancel };
    worker.unref();
    worker.on('message', (message: WorkerResponse) => {
      const pending = slot.busy;
      if ('part' in message) {
        if (pending !== undefined && pending.id === message.id) pending.onPart?.(reviveBuffers(message.part));
        return;
      }
      slot.busy = undefined;
      worker.unref();
      if (pending !== undefined && pending.id === message.id) {
        if (message.ok) pending.resolve(reviveBuffers(message.result));
        else pending.reject(workerError(message.error));
      }
      this.dispatch();
    });
    worker.on('error', (err) => {
      const pending = slot.busy;
      slot.busy = undefined;
      pending?.reject(new DwcpIoError(`worker failed: ${err.message}`, err));
    });
    worker.on('exit', () => {
      const pending = slot.busy;
      slot.busy = undefined;
      pending?.reject(new DwcpIoError('worker exited'));
      const at = this.workers.indexOf(slot);
      if (!this.closed && at >= 0) {
        this.workers[at] = this.spawn();
        this.dispatch();
      }
    });
    return slot;
  }

  private dispatch(): void {
    for (const slot of this.workers) {
      while (slot.busy === undefined) {
        const next = this.queue.shift();
        if (next === undefined) return;
        const request: WorkerRequest = { id: next.id, task: next.task };
        try {
          postWorkerMessage({ post: (m, t) => slot.worker.postMessage(m, t), message: request });
        } catch (err) {
          next.reject(new DwcpIoError('task could not be sent to a worker', err));
          continue;
        }
        slot.busy = next;
        slot.worker.ref();
      }
    }
  }
}

function workerError(error: { name: string; message: string; code?: string }): Error {
  if (error.name.startsWith('Dwcp') && error.code !== undefined) {
    return DwcpError.fromCode({ code: error.code, message: error.message });
  }
  return DwcpError.fromNative(Object.assign(new Error(error.message), { code: error.code }), 'worker task');
}

/** The whole-file sha256, computed in a pool worker so a large image never holds up the caller's event loop. */
export async function hashFileInPool(input: { pool: DwcpWorkerPool; path: string }): Promise<string> {
  return (await input.pool.run({ kind: 'hashFile', path: input.path })).sha256;
}

/**
 * Up to 8 MiB of a file's data for measureCompression: 1 MiB blocks every 16 MiB, skipping all-zero blocks, because
 * an image's free space would make zstd look absurdly fast. Undefined when the file holds no data at all.
 */
export async function sampleFileData(file: string): Promise<Buffer | undefined> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    const blocks: Buffer[] = [];
    for (let at = 0; at < size && blocks.length < 8; at += 16 * 1024 * 1024) {
      const block = Buffer.alloc(1024 * 1024);
      const { bytesRead } = await handle.read(block, 0, block.length, at);
      const data = block.subarray(0, bytesRead);
      if (bytesRead > 0 && !isZeroChunk(data)) blocks.push(data);
    }
    return blocks.length > 0 ? Buffer.concat(blocks) : undefined;
  } finally {
    await handle.close();
  }
}

/**
 * Measures level-1 compression speed and ratio, and the chunking + hashing speed, on a sample of the real data in a
 * pool worker (half of `durationMs` each).
 */
export async function measureCompression(input: {
  pool: DwcpWorkerPool;
  sample: Buffer;
  durationMs?: number;
}): Promise<Calibration> {
  return input.pool.run({ kind: 'calibrate', sample: Buffer.from(input.sample), durationMs: input.durationMs ?? 200 });
}
