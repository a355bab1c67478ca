/**
 * HDE: how a chunk is put on the wire (zero, raw, or zstd), the rule that picks the zstd level from link speed versus
 * CPU speed, and the worker pool that runs compression and hashing off the event loop.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants as fsConstants, openSync, readSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { compress, decompress } from 'zstd-napi';
import {
  INCOMPRESSIBLE_RATIO,
  chunkLengths,
  chunkingParams,
  isZeroChunk,
  looksIncompressible,
  type ChunkingParams,
} from './chunking';
import { DwcpChecksumError, DwcpError, DwcpIoError } from './errors';
import { ChunkEncoding } from './framing';
import { scanFileParts, scanFileSync, type Manifest, type ManifestPart, type ScanSummary } from './manifest';

/** Level 0 means "do not compress" here; zstd itself would read 0 as its default level 3. */
export const COMPRESSION_OFF = 0;

export interface EncodedChunk {
  encoding: ChunkEncoding;
  payload: Buffer;
  rawLength: number;
  /** CRC-32 of the payload, the per-chunk wire checksum. */
  checksum: number;
}

/**
 * Picks the cheapest faithful representation: zero chunks carry no payload, incompressible chunks go raw (a sample
 * is tried first), and zstd output that saves less than 5% is thrown away in favour of raw.
 */
export function encodeChunk(input: { data: Buffer; level: number }): EncodedChunk {
  const { data, level } = input;
  const raw = (): EncodedChunk => ({
    encoding: ChunkEncoding.RAW,
    payload: data,
    rawLength: data.length,
    checksum: crc32(data),
  });
  if (isZeroChunk(data)) {
    return { encoding: ChunkEncoding.ZERO, payload: Buffer.alloc(0), rawLength: data.length, checksum: 0 };
  }
  if (level === COMPRESSION_OFF || looksIncompressible({ data })) return raw();
  // The zstd frame checksum verifies the decompressed content again on the receiver, beyond the wire CRC.
  const packed = compress(data, { compressionLevel: level, checksumFlag: true });
  if (packed.length / data.length > INCOMPRESSIBLE_RATIO) return raw();
  return { encoding: ChunkEncoding.ZSTD, payload: packed, rawLength: data.length, checksum: crc32(packed) };
}

/** Reverses encodeChunk; a payload that does not decode to rawLength bytes is a checksum failure. */
export function decodeChunk(input: { encoding: ChunkEncoding; payload: Buffer; rawLength: number }): Buffer {
  const { encoding, payload, rawLength } = input;
  let data: Buffer;
  switch (encoding) {
    case ChunkEncoding.ZERO:
      data = Buffer.alloc(rawLength);
      break;
    case ChunkEncoding.RAW:
      data = payload;
      break;
    case ChunkEncoding.ZSTD:
      try {
        data = decompress(payload);
      } catch (err) {
        throw new DwcpChecksumError('zstd payload does not decode', err);
      }
      break;
    default:
      throw new DwcpChecksumError(`encoding ${encoding} carries no chunk data`);
  }
  if (data.length !== rawLength) throw new DwcpChecksumError(`chunk decoded to ${data.length}, not ${rawLength} bytes`);
  return data;
}

/**
 * Speed and size of zstd levels relative to level 1 (zstd 1.5 on the Silesia corpus, single thread). Levels above 12
 * are left out: on disk images they buy a few percent of ratio for 10-100x the CPU.
 */
export const ZSTD_LEVEL_PROFILE = [
  { level: 1, speed: 1.0, size: 1.0 },
  { level: 3, speed: 0.65, size: 0.92 },
  { level: 6, speed: 0.3, size: 0.87 },
  { level: 9, speed: 0.17, size: 0.85 },
  { level: 12, speed: 0.08, size: 0.83 },
] as const;

export interface CompressionChoice {
  level: number;
  /** Expected logical throughput in MB/s with this level: min(compression speed, link speed / ratio). */
  expectedMBps: number;
}

/**
 * The level rule. With link speed L (MB/s), level-1 compression speed C1 per worker, W workers and level-1 ratio r1
 * (compressed/raw), level l delivers min(W * C1 * speed(l), L / (r1 * size(l))) logical MB/s, and no compression
 * delivers L. Take the level with the best figure; a higher level must win by more than 5% to be worth its CPU.
 * So fast links with slow CPUs get no or light compression, and slow links get the strongest affordable level.
 *
 * When `hashMBps` is given (the per-worker speed of the work every byte costs whatever the level: chunking and
 * sha256), the workers' time per byte is that work plus compression, so level l's CPU figure becomes
 * W / (1 / (C1 * speed(l)) + 1 / H) and no compression is capped at W * H. Without this term a link that is itself
 * driven by the same CPUs (loopback, or a 10 Gbit/s NIC on two cores) looks like it gains from zstd when it loses.
 */
export function chooseCompressionLevel(input: {
  bandwidthMbps: number;
  cpuMBpsAtLevel1: number;
  workers: number;
  ratioAtLevel1?: number;
  maxLevel?: number;
  hashMBps?: number;
}): CompressionChoice {
  const link = input.bandwidthMbps / 8;
  const ratio = Math.min(1, Math.max(0.01, input.ratioAtLevel1 ?? 0.5));
  const maxLevel = input.maxLevel ?? 12;
  const hashSecondsPerMB = input.hashMBps === undefined || input.hashMBps <= 0 ? 0 : 1 / input.hashMBps;
  const cpuFor = (compressMBps: number | undefined): number => {
    const seconds = (compressMBps === undefined ? 0 : 1 / compressMBps) + hashSecondsPerMB;
    return seconds === 0 ? Number.POSITIVE_INFINITY : input.workers / seconds;
  };
  let best: CompressionChoice = { level: COMPRESSION_OFF, expectedMBps: Math.min(link, cpuFor(undefined)) };
  for (const profile of ZSTD_LEVEL_PROFILE) {
    if (profile.level > maxLevel) break;
    const cpu = cpuFor(input.cpuMBpsAtLevel1 * profile.speed);
    const expected = Math.min(cpu, link / (ratio * profile.size));
    if (expected > best.expectedMBps * 1.05) best = { level: profile.level, expectedMBps: expected };
  }
  return best;
}

export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}

/** Tasks a pool worker runs; each maps to a result type below. */
export type WorkerTask =
  | { kind: 'scan'; path: string; chunking: ChunkingParams }
  | { kind: 'scanParts'; path: string; chunking: ChunkingParams }
  | { kind: 'encodeFile'; path: string; offset: number; length: number; level: number }
  | { kind: 'encode'; data: Buffer; level: number }
  | { kind: 'decode'; encoding: ChunkEncoding; payload: Buffer; rawLength: number; expectedHash?: Buffer }
  | {
      kind: 'decodeInto';
      encoding: ChunkEncoding;
      payload: Buffer;
      rawLength: number;
      expectedHash: Buffer;
      target: FileRange;
    }
  | { kind: 'readVerified'; path: string; offset: number; length: number; expectedHash: Buffer }
  | { kind: 'copyVerified'; path: string; offset: number; length: number; expectedHash: Buffer; target: FileRange }
  | { kind: 'index'; path: string; chunking: ChunkingParams }
  | { kind: 'hashFile'; path: string }
  | { kind: 'calibrate'; sample: Buffer; durationMs: number };

export interface WorkerResults {
  scan: Manifest;
  /** The entries themselves arrive as parts while the task runs (DwcpWorkerPool.runWithParts). */
  scanParts: ScanSummary;
  encodeFile: EncodedChunk;
  encode: EncodedChunk;
  /** `data` is undefined when the decoded content does not match expectedHash. */
  decode: { data: Buffer | undefined };
  /** `written` is false when the content did not match expectedHash (nothing was written then). */
  decodeInto: { written: boolean };
  readVerified: { data: Buffer | undefined };
  copyVerified: { written: boolean };
  /** A file's chunk entries without the whole-file sha256, for the receiver's chunk index. */
  index: { entries: Buffer; chunkCount: number };
  hashFile: { sha256: string };
  calibrate: Calibration;
}

/** Level-1 zstd speed and ratio, and the speed of chunking plus sha256 (the work every byte costs), per worker. */
export interface Calibration {
  mbps: number;
  ratio: number;
  hashMBps: number;
}

export interface WorkerRequest {
  id: number;
  task: WorkerTask;
}

/**
 * Where a verified chunk goes: an existing file (never created here, so a write after the receiver removed a failed
 * partial file fails instead of recreating it) and the offset in it.
 */
export interface FileRange {
  path: string;
  offset: number;
}

/** Tasks that report parts of their result before they finish, and what a part is. */
export interface WorkerParts {
  scanParts: ManifestPart;
}

export type WorkerResponse =
  | { id: number; part: WorkerParts[keyof WorkerParts] }
  | { id: number; ok: true; result: WorkerResults[WorkerTask['kind']] }
  | { id: number; ok: false; error: { name: string; message: string; code?: string } };

/**
 * Runs a task in the calling thread; the worker entry point and tests share it. `onPart` receives the parts of a
 * task that reports them (scanParts); other tasks never call it.
 */
export function runWorkerTask(
  task: WorkerTask,
  onPart: (part: WorkerParts[keyof WorkerParts]) => void = () => undefined,
): WorkerResults[WorkerTask['kind']] {
  switch (task.kind) {
    case 'scan':
      return scanFileSync(task);
    case 'scanParts':
      return scanFileParts({ ...task, onPart });
    case 'encodeFile':
      return encodeChunk({ data: readRangeSync(task.path, task.offset, task.length), level: task.level });
    case 'encode':
      return encodeChunk({ data: task.data, level: task.level });
    case 'decode': {
      let data: Buffer;
      try {
        data = decodeChunk(task);
      } catch (err) {
        if (err instanceof DwcpChecksumError) return { data: undefined };
        throw err;
      }
      return { data: matchesHash(data, task.expectedHash) ? data : undefined };
    }
    case 'decodeInto': {
      let data: Buffer;
      try {
        data = decodeChunk(task);
      } catch (err) {
        if (err instanceof DwcpChecksumError) return { written: false };
        throw err;
      }
      if (!matchesHash(data, task.expectedHash)) return { written: false };
      writeRangeSync(task.target, data);
      return { written: true };
    }
    case 'readVerified': {
      const data = readRangeSync(task.path, task.offset, task.length);
      return { data: matchesHash(data, task.expectedHash) ? data : undefined };
    }
    case 'copyVerified': {
      const data = readRangeSync(task.path, task.offset, task.length);
      if (!matchesHash(data, task.expectedHash)) return { written: false };
      writeRangeSync(task.target, data);
      return { written: true };
    }
    case 'index': {
      const parts: Buffer[] = [];
      const { chunkCount } = scanFileParts({ ...task, hashWholeFile: false, onPart: (p) => parts.push(p.entries) });
      return { entries: Buffer.concat(parts), chunkCount };
    }
    case 'hashFile':
      return { sha256: hashFileSync(task.path) };
    case 'calibrate':
      return calibrate(task.sample, task.durationMs);
  }
}

function matchesHash(data: Buffer, expected: Buffer | undefined): boolean {
  if (expected === undefined) return true;
  return createHash('sha256').update(data).digest().equals(expected);
}

function readRangeSync(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const out = Buffer.allocUnsafeSlow(length);
    let filled = 0;
    while (filled < length) {
      const n = readSync(fd, out, filled, length - filled, offset + filled);
      if (n === 0) throw new DwcpIoError(`${file} ended before offset ${offset + length}`);
      filled += n;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/** Writes all of `data` at target.offset; sync because it runs in a worker, where the thread is free to block. */
function writeRangeSync(target: FileRange, data: Buffer): void {
  const fd = openSync(target.path, fsConstants.O_WRONLY);
  try {
    let written = 0;
    while (written < data.length) {
      written += writeSync(fd, data, written, data.length - written, target.offset + written);
    }
  } finally {
    closeSync(fd);
  }
}

function hashFileSync(file: string): string {
  const fd = openSync(file, 'r');
  try {
    const hash = createHash('sha256');
    const block = Buffer.allocUnsafe(8 * 1024 * 1024);
    for (;;) {
      const n = readSync(fd, block, 0, block.length, null);
      if (n === 0) return hash.digest('hex');
      hash.update(block.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
}

function calibrate(sample: Buffer, durationMs: number): Calibration {
  const timed = (work: () => void): number => {
    const started = process.hrtime.bigint();
    let bytes = 0;
    do {
      work();
      bytes += sample.length;
    } while (Number(process.hrtime.bigint() - started) / 1e6 < durationMs / 2);
    return bytes / 1e6 / (Number(process.hrtime.bigint() - started) / 1e9);
  };
  let packed = 0;
  let compressed = 0;
  const mbps = timed(() => {
    packed += compress(sample, { compressionLevel: 1 }).length;
    compressed += sample.length;
  });
  // What a send costs per byte without compression: cutting chunks (datacenter size) and hashing each and the whole.
  const params = CALIBRATION_CHUNKING;
  const hashMBps = timed(() => {
    const whole = createHash('sha256').update(sample);
    let at = 0;
    for (const length of chunkLengths({ data: sample, params })) {
      createHash('sha256')
        .update(sample.subarray(at, at + length))
        .digest();
      at += length;
    }
    whole.digest();
  });
  return { mbps, ratio: packed / compressed, hashMBps };
}

const CALIBRATION_CHUNKING = chunkingParams({ avgBytes: 128 * 1024 });

/**
 * Prepares a message for postMessage: every byte array moves to the other thread instead of being cloned. A view
 * into a larger ArrayBuffer (a Buffer pool slab, a manifest slice) is first copied out, because structured clone
 * would copy its whole backing buffer, and transferring it would detach memory that others still use.
 */
function detachable(value: unknown, transfer: ArrayBuffer[]): unknown {
  if (value instanceof Uint8Array) {
    // Empty views (including buffers already moved to another thread) have nothing to move.
    if (value.byteLength === 0) return new Uint8Array(0);
    const owns =
      value.byteOffset === 0 && value.byteLength === value.buffer.byteLength && value.buffer instanceof ArrayBuffer;
    const bytes = owns ? value : new Uint8Array(value);
    if (!transfer.includes(bytes.buffer as ArrayBuffer)) transfer.push(bytes.buffer as ArrayBuffer);
    return bytes;
  }
  if (Array.isArray(value)) return value.map((v: unknown) => detachable(v, transfer));
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = detachable(v, transfer);
    return out;
  }
  return value;
}

/** Restores Buffer views on Uint8Arrays that arrive through postMessage. */
export function reviveBuffers<T>(value: T): T {
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength) as T;
  if (Array.isArray(value)) return value.map((v: unknown) => reviveBuffers(v)) as T;
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = reviveBuffers(v);
    return out as T;
  }
  return value;
}

export function postWorkerMessage(input: {
  post: (message: unknown, transfer: ArrayBuffer[]) => void;
  message: unknown;
}): void {
  const transfer: ArrayBuffer[] = [];
  const message = detachable(input.message, transfer);
  input.post(message, transfer);
}

interface PendingTask {
  id: number;
  task: WorkerTask;
  onPart: ((part: WorkerParts[keyof WorkerParts]) => void) | undefined;
  resolve: (value: WorkerResults[WorkerTask['kind']]) => void;
  reject: (err: unknown) => void;
}

interface PoolWorker {
  worker: Worker;
  busy: PendingTask | undefined;
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
   * returned promise settles. A throwing `onPart` does not stop the task: handle failures inside it.
   */
  runWithParts<K extends keyof WorkerParts>(
    task: Extract<WorkerTask, { kind: K }>,
    onPart: (part: WorkerParts[K]) => void,
  ): Promise<WorkerResults[K]> {
    return this.enqueue(task, onPart);
  }

  private enqueue<K extends WorkerTask['kind']>(
    task: Extract<WorkerTask, { kind: K }>,
    onPart: ((part: WorkerParts[keyof WorkerParts]) => void) | undefined,
  ): Promise<WorkerResults[K]> {
    if (this.closed) return Promise.reject(new DwcpIoError('worker pool is closed'));
    return new Promise<WorkerResults[K]>((resolve, reject) => {
      this.queue.push({
        id: this.nextId++,
        task,
        onPart,
        resolve: resolve as (value: WorkerResults[WorkerTask['kind']]) => void,
        reject,
      });
      this.dispatch();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const pending of this.queue.splice(0)) pending.reject(new DwcpIoError('worker pool closed'));
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }

  private spawn(): PoolWorker {
    const extension = path.extname(__filename);
    const entry = path.join(__dirname, `encoding-worker${extension}`);
    // Workers do not inherit tsx's loader hooks, so under tsx the worker registers them before loading its entry.
    const worker =
      extension === '.ts'
        ? new Worker(`require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(entry)});`, {
            eval: true,
          })
        : new Worker(entry);
    const slot: PoolWorker = { worker, busy: undefined };
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
