/**
 * The disk side of one file receive: `<target>.dwcp-partial` and its journal `<target>.dwcp-journal`. The partial
 * file is opened for one size and chunking, written chunk by chunk by pool workers that verify before they write,
 * journaled in batches beside the data path, and in the end moved onto the target or thrown away. The protocol
 * state that decides what to write is in file-receive-transfer.ts.
 */
import type { ChunkHash } from './chunk-hash';
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, rename, rm, statfs, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { chunkingKey, type ChunkingParams } from './chunking';
import type { DwcpWorkerPool } from './worker-pool';
import { DwcpDiskFullError, DwcpError } from './errors';
import { FrameType, type Frame } from './framing';
import { TransferJournal } from './journal';
import type { ManifestEntry } from './manifest';
import type { NackReason } from './protocol';

export interface PartialPaths {
  partialPath: string;
  journalPath: string;
}

export function partialPaths(targetPath: string): PartialPaths {
  return { partialPath: `${targetPath}.dwcp-partial`, journalPath: `${targetPath}.dwcp-journal` };
}

/** The open partial file and its journal, for one size and chunking. */
export class PartialFile {
  readonly size: number;
  /** Chunks the journal of an earlier receiver process recorded, by index → offset. */
  readonly journaled: Map<number, number>;
  /** True when nothing of an earlier process could be trusted, so the file started all holes. */
  readonly fresh: boolean;
  private readonly chunkingKey: string;
  private readonly handle: FileHandle;
  private readonly journal: TransferJournal;
  private readonly journalBatchChunks: number;
  private readonly onJournalError: (err: DwcpError) => void;
  private readonly flushTimer: NodeJS.Timeout;

  private constructor(input: {
    size: number;
    chunkingKey: string;
    handle: FileHandle;
    journal: TransferJournal;
    journaled: Map<number, number>;
    fresh: boolean;
    journalBatchChunks: number;
    journalIntervalMs: number;
    onJournalError: (err: DwcpError) => void;
  }) {
    this.size = input.size;
    this.chunkingKey = input.chunkingKey;
    this.handle = input.handle;
    this.journal = input.journal;
    this.journaled = input.journaled;
    this.fresh = input.fresh;
    this.journalBatchChunks = input.journalBatchChunks;
    this.onJournalError = input.onJournalError;
    this.flushTimer = setInterval(() => this.flushJournal(true), input.journalIntervalMs);
    this.flushTimer.unref();
  }

  /**
   * Opens the partial file and its journal. A journal written by another process for the same transfer, size and
   * chunking returns its chunks in `journaled`; without one the file is truncated to a fresh sparse file.
   */
  static async open(input: {
    targetPath: string;
    transferId: string;
    size: number;
    chunking: ChunkingParams;
    journalBatchChunks: number;
    journalIntervalMs: number;
    onJournalError: (err: DwcpError) => void;
  }): Promise<PartialFile> {
    const { partialPath, journalPath } = partialPaths(input.targetPath);
    const key = chunkingKey(input.chunking);
    await mkdir(path.dirname(input.targetPath), { recursive: true });
    const handle = await open(partialPath, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o600);
    const { journal, done, reset } = await TransferJournal.open({
      path: journalPath,
      header: { transferId: input.transferId, size: input.size, chunking: key },
      data: handle,
    });
    // Without journaled chunks nothing in the partial file can be trusted; a fresh sparse file is all holes.
    const fresh = reset || done.size === 0;
    if (fresh) await handle.truncate(0);
    await handle.truncate(input.size);
    return new PartialFile({ ...input, chunkingKey: key, handle, journal, journaled: done, fresh });
  }

  matches(size: number, chunking: ChunkingParams): boolean {
    return this.size === size && this.chunkingKey === chunkingKey(chunking);
  }

  /** Journals a chunk that is on disk; the journal reaches the disk in batches (flushJournal). */
  record(index: number, offset: number): void {
    this.journal.record(index, offset);
    this.flushJournal(false);
  }

  /** Makes every recorded chunk durable now. */
  flush(): Promise<void> {
    return this.journal.flush();
  }

  sync(): Promise<void> {
    return this.handle.sync();
  }

  /** Closes the file and its journal, keeping what was journaled durable for a later resume. */
  async close(): Promise<void> {
    clearInterval(this.flushTimer);
    await this.journal.flush().catch(() => undefined);
    await this.journal.close().catch(() => undefined);
    await this.handle.close().catch(() => undefined);
  }

  /**
   * Durability runs beside the data path, not in it: an ACK only tells the sender the chunk arrived, and after a
   * crash the journal (not the ACKs) decides what is resent, so waiting for fsync before acknowledging would only
   * stall the pipeline.
   */
  private flushJournal(onTimer: boolean): void {
    const journal = this.journal;
    if (journal.busy || journal.pendingCount === 0) return;
    if (!onTimer && journal.pendingCount < this.journalBatchChunks) return;
    journal.flush().catch((err: unknown) => this.onJournalError(DwcpError.fromNative(err, 'journal')));
  }
}

/**
 * Has a worker verify one chunk against its manifest entry and write it into the partial file. Returns why the
 * chunk was refused (the sender then resends it), or undefined once it is on disk.
 */
export async function writeChunk(input: {
  pool: DwcpWorkerPool;
  frame: Frame;
  entry: ManifestEntry;
  /** The hash that names the transfer's chunks. */
  hash: ChunkHash;
  partialPath: string;
}): Promise<NackReason | undefined> {
  const { frame, entry } = input;
  if (frame.type === FrameType.ZERO) return entry.zero ? undefined : 'checksum';
  // Workers check the content against the manifest's hash and write it to the partial file themselves, so
  // chunk data never crosses back to this thread; the check before the write is what END relies on.
  const decoded = await input.pool.run({
    kind: 'decodeInto',
    encoding: frame.encoding,
    payload: frame.payload,
    rawLength: frame.rawLength,
    expected: { digest: entry.hash, hash: input.hash },
    target: { path: input.partialPath, offset: entry.offset },
  });
  return decoded.written ? undefined : 'checksum';
}

/** Refuses up front a transfer that the file system cannot hold, instead of failing on a full disk midway. */
export async function ensureFreeSpace(input: { dir: string; neededBytes: number }): Promise<void> {
  const fsInfo = await statfs(input.dir);
  const available = fsInfo.bavail * fsInfo.bsize;
  if (input.neededBytes > available) {
    throw new DwcpDiskFullError(`${input.dir} has ${available} bytes free, the transfer needs ${input.neededBytes}`);
  }
}

/** Renames the verified, synced partial file onto the target and makes the rename durable. */
export async function moveOntoTarget(input: PartialPaths & { targetPath: string }): Promise<void> {
  await rename(input.partialPath, input.targetPath);
  await rm(input.journalPath, { force: true });
  const dir = await open(path.dirname(input.targetPath), 'r');
  await dir.sync().finally(() => dir.close());
}

export async function removePartial(input: PartialPaths): Promise<void> {
  await rm(input.journalPath, { force: true });
  await rm(input.partialPath, { force: true });
}
