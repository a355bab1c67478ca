/**
 * The work a DwcpWorkerPool thread does: every task by kind, what each returns, and runWorkerTask, which runs one
 * in the calling thread. Reads, writes and hashing are synchronous here on purpose: they run in a worker, where
 * blocking the thread is the point, and the main thread's event loop stays free for the connections.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants as fsConstants, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { compress } from 'zstd-napi';
import { hashChunk, localChunkHashes, type ChunkHash } from './chunk-hash';
import { chunkLengths, chunkingParams, isZeroChunk, type ChunkingParams } from './chunking';
import { decodeChunk, encodeChunk, type EncodedChunk } from './encoding';
import { DwcpChecksumError, DwcpIoError } from './errors';
import { fileVersion, sameVersion, type FileVersion } from './file-version';
import type { ChunkEncoding } from './framing';
import {
  MANIFEST_ENTRY_BYTES,
  manifestEntry,
  scanFileParts,
  scanFileSync,
  type Manifest,
  type ManifestPart,
  type ScanSummary,
} from './manifest';

/** Tasks a pool worker runs; each maps to a result type below. */
export type WorkerTask =
  | { kind: 'scan'; path: string; chunking: ChunkingParams }
  | { kind: 'scanParts'; path: string; chunking: ChunkingParams; hashWholeFile?: boolean }
  | { kind: 'encodeFile'; path: string; offset: number; length: number; level: number; checksum?: boolean }
  | { kind: 'encode'; data: Buffer; level: number }
  | { kind: 'decode'; encoding: ChunkEncoding; payload: Buffer; rawLength: number; expected?: ExpectedHash }
  | {
      kind: 'decodeInto';
      encoding: ChunkEncoding;
      payload: Buffer;
      rawLength: number;
      expected: ExpectedHash;
      target: FileRange;
    }
  | { kind: 'readVerified'; path: string; offset: number; length: number; expected: ExpectedHash }
  | { kind: 'copyVerified'; copies: VerifiedCopy[]; targetPath: string; hash: ChunkHash }
  | { kind: 'index'; path: string; chunking: ChunkingParams }
  | { kind: 'hashFile'; path: string }
  | { kind: 'checkManifest'; path: string; entries: Buffer; hash: ChunkHash }
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
  /** One byte a copy: 1 when it was written, 0 when its source could not be read or did not match its hash. */
  copyVerified: { written: Uint8Array };
  /** A file's chunk entries without the whole-file sha256, for the receiver's chunk index. */
  index: { entries: Buffer; chunkCount: number };
  hashFile: { sha256: string };
  /** The first chunk whose content is not what its manifest entry says (a zero chunk must read as zeros). */
  checkManifest: { firstMismatch: number | undefined };
  calibrate: Calibration;
}

/** What a chunk's content must hash to, and with which hash (its chunking's, chunk-hash.ts). */
export interface ExpectedHash {
  digest: Buffer;
  hash: ChunkHash;
}

/**
 * Level-1 zstd speed and ratio, and the speed of chunking plus chunk hashing (the work every byte costs), per worker.
 * The hash timed is the one this end offers first, so against a host without BLAKE3 hashing costs more than this.
 */
export interface Calibration {
  mbps: number;
  ratio: number;
  hashMBps: number;
}

/**
 * Where a verified chunk goes: an existing file (never created here, so a write after the receiver removed a failed
 * partial file fails instead of recreating it) and the offset in it.
 */
export interface FileRange {
  path: string;
  offset: number;
}

/** A range of some file to copy into the target at targetOffset, if it still hashes to expectedHash. */
export interface VerifiedCopy {
  path: string;
  offset: number;
  length: number;
  /** In the batch's hash (the copyVerified task's `hash`). */
  expectedHash: Buffer;
  targetOffset: number;
  /**
   * The source's version when this process hashed the range (ChunkLocation.hashedVersion): a source still at that
   * version, before and after the batch reads it, is copied without hashing the range again.
   */
  hashedVersion?: FileVersion;
}

/** Tasks that report parts of their result before they finish, and what a part is. */
export interface WorkerParts {
  scanParts: ManifestPart;
}

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
      return encodeChunk({
        data: readRangeSync(task.path, task.offset, task.length),
        level: task.level,
        ...(task.checksum !== undefined ? { checksum: task.checksum } : {}),
      });
    case 'encode':
      return encodeChunk({ data: task.data, level: task.level });
    case 'decode':
      return { data: decodeVerified(task) };
    case 'decodeInto': {
      const data = decodeVerified(task);
      if (data === undefined) return { written: false };
      writeRangeSync(task.target, data);
      return { written: true };
    }
    case 'readVerified': {
      const data = readRangeSync(task.path, task.offset, task.length);
      return { data: matchesHash(data, task.expected) ? data : undefined };
    }
    case 'copyVerified':
      return { written: copyVerifiedSync(task) };
    case 'index': {
      const parts: Buffer[] = [];
      const { chunkCount } = scanFileParts({ ...task, hashWholeFile: false, onPart: (p) => parts.push(p.entries) });
      return { entries: Buffer.concat(parts), chunkCount };
    }
    case 'hashFile':
      return { sha256: hashFileSync(task.path) };
    case 'checkManifest':
      return { firstMismatch: firstManifestMismatch(task) };
    case 'calibrate':
      return calibrate(task.sample, task.durationMs);
  }
}

/** The decoded chunk, or undefined when the payload does not decode or the content does not match `expected`. */
function decodeVerified(input: {
  encoding: ChunkEncoding;
  payload: Buffer;
  rawLength: number;
  expected?: ExpectedHash;
}): Buffer | undefined {
  let data: Buffer;
  try {
    data = decodeChunk(input);
  } catch (err) {
    if (err instanceof DwcpChecksumError) return undefined;
    throw err;
  }
  return matchesHash(data, input.expected) ? data : undefined;
}

function matchesHash(data: Buffer, expected: ExpectedHash | undefined): boolean {
  if (expected === undefined) return true;
  return hashChunk(data, expected.hash).equals(expected.digest);
}

function readRangeSync(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const out = Buffer.allocUnsafeSlow(length);
    if (!readFullySync(fd, out, offset)) throw new DwcpIoError(`${file} ended before offset ${offset + length}`);
    return out;
  } finally {
    closeSync(fd);
  }
}

/** Fills all of `data` from `offset`; false when the file ends first. */
function readFullySync(fd: number, data: Buffer, offset: number): boolean {
  for (let filled = 0; filled < data.length;) {
    const n = readSync(fd, data, filled, data.length - filled, offset + filled);
    if (n === 0) return false;
    filled += n;
  }
  return true;
}

/** Writes all of `data` at target.offset; sync because it runs in a worker, where the thread is free to block. */
function writeRangeSync(target: FileRange, data: Buffer): void {
  const fd = openSync(target.path, fsConstants.O_WRONLY);
  try {
    writeAllSync(fd, data, target.offset);
  } finally {
    closeSync(fd);
  }
}

function writeAllSync(fd: number, data: Buffer, offset: number): void {
  let written = 0;
  while (written < data.length) written += writeSync(fd, data, written, data.length - written, offset + written);
}

/**
 * The receiver's copies of chunks it already has, a batch per task: each source file and the target are opened once
 * and one buffer is reused, where a task per chunk paid a message, two opens and a fresh buffer for every chunk. A
 * source that is gone, short or changed is a miss, not an error (the chunk is sent instead); the target's own
 * trouble (ENOSPC, a removed partial file) is thrown.
 *
 * A range is hashed before it is written unless its source is still the version this process hashed it in. That
 * is checked when the source is opened and again after the batch has read it: a source that changed in between
 * turns those unhashed copies back into misses, and the chunks sent for them overwrite what was written.
 */
function copyVerifiedSync(input: { copies: VerifiedCopy[]; targetPath: string; hash: ChunkHash }): Uint8Array {
  const written = new Uint8Array(input.copies.length);
  const buffer = Buffer.allocUnsafeSlow(Math.max(0, ...input.copies.map((c) => c.length)));
  const sources = new Map<string, CopySource | undefined>();
  const target = openSync(input.targetPath, fsConstants.O_WRONLY);
  try {
    input.copies.forEach((copy, i) => {
      const data = buffer.subarray(0, copy.length);
      const source = openSource(sources, copy.path);
      if (source === undefined || !readFullyOrMiss(source.fd, data, copy.offset)) return;
      const vouched = copy.hashedVersion !== undefined && sameVersion(copy.hashedVersion, source.opened);
      if (!vouched && !matchesHash(data, { digest: copy.expectedHash, hash: input.hash })) return;
      writeAllSync(target, data, copy.targetOffset);
      written[i] = 1;
      if (vouched) source.unhashed.push(i);
    });
    for (const source of sources.values()) {
      if (source === undefined || source.unhashed.length === 0) continue;
      if (sameVersion(fileVersion(fstatSync(source.fd)), source.opened)) continue;
      for (const i of source.unhashed) written[i] = 0;
    }
  } finally {
    closeSync(target);
    for (const source of sources.values()) if (source !== undefined) closeSync(source.fd);
  }
  return written;
}

/** A copy source opened once per batch: its version then, and the copies written from it without a hash. */
interface CopySource {
  fd: number;
  opened: FileVersion;
  unhashed: number[];
}

/** The batch's source at `file`, opened on first use; undefined when it cannot be opened. */
function openSource(sources: Map<string, CopySource | undefined>, file: string): CopySource | undefined {
  if (!sources.has(file)) {
    let source: CopySource | undefined;
    try {
      const fd = openSync(file, 'r');
      source = { fd, opened: fileVersion(fstatSync(fd)), unhashed: [] };
    } catch {
      source = undefined;
    }
    sources.set(file, source);
  }
  return sources.get(file);
}

/** Fills `data` from `offset`; false when the file ends first or cannot be read. */
function readFullyOrMiss(fd: number, data: Buffer, offset: number): boolean {
  try {
    return readFullySync(fd, data, offset);
  } catch {
    return false;
  }
}

function firstManifestMismatch(input: { path: string; entries: Buffer; hash: ChunkHash }): number | undefined {
  const manifest = { entries: input.entries, chunkCount: input.entries.length / MANIFEST_ENTRY_BYTES };
  for (let index = 0; index < manifest.chunkCount; index++) {
    const entry = manifestEntry({ manifest, index });
    const data = readRangeSync(input.path, entry.offset, entry.length);
    if (entry.zero ? !isZeroChunk(data) : !matchesHash(data, { digest: entry.hash, hash: input.hash })) return index;
  }
  return undefined;
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
  // What a send costs per byte without compression: cutting chunks (datacenter size) and hashing each (with the
  // hash this end offers first) and the whole.
  const params = CALIBRATION_CHUNKING;
  const chunkHash = localChunkHashes[0]!;
  const hashMBps = timed(() => {
    const whole = createHash('sha256').update(sample);
    let at = 0;
    for (const length of chunkLengths({ data: sample, params })) {
      hashChunk(sample.subarray(at, at + length), chunkHash);
      at += length;
    }
    whole.digest();
  });
  return { mbps, ratio: packed / compressed, hashMBps };
}

const CALIBRATION_CHUNKING = chunkingParams({ avgBytes: 128 * 1024 });
