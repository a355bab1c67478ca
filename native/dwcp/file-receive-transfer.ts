/**
 * The receiving side of sendFile: the protocol state of one expected file (manifest parts, the NEED plan for each,
 * chunks, the journal and the end-to-end check). What touches the partial file itself is in partial-file.ts.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { compress } from 'zstd-napi';
import { pickChunkHash, type ChunkHash } from './chunk-hash';
import { chunkHashOf, chunkingParams, withChunkHash, type ChunkingParams } from './chunking';
import type { ChunkLocation } from './chunk-index';
import type { FrameSocket } from './connection';
import { DwcpChecksumError, DwcpConnectionError, DwcpProtocolError } from './errors';
import { ChunkEncoding, crcOmitted, FrameType, jsonPayload, parseJsonPayload, type Frame } from './framing';
import {
  MANIFEST_ENTRY_BYTES,
  ManifestBuilder,
  entriesEnd,
  growPerChunk,
  manifestDigest,
  manifestEntry,
  validateManifest,
  type Manifest,
  type ManifestEntry,
} from './manifest';
import {
  ensureFreeSpace,
  moveOntoTarget,
  PartialFile,
  partialPaths,
  removePartial,
  writeChunk,
  type PartialPaths,
} from './partial-file';
import {
  ChunkState,
  EndSchema,
  ManifestEndSchema,
  TransferKind,
  verifiedIdentity,
  type Hello,
  type HelloReply,
  type ManifestEnd,
} from './protocol';
import { ReceiveTransfer, type Completion, type ReceiverContext } from './receive-transfer';
import type { TransferProgress } from './transfer-types';

export interface ExpectFileInput {
  transferId: string;
  targetPath: string;
  /** Files whose chunks may be copied instead of sent; the existing target (a previous version) is always used. */
  baseImages?: string[];
  /** Only a sender whose certificate has this common name may deliver the transfer. */
  peerHostId?: string;
  /** Refuse up front when the file system cannot hold the missing chunks (default true). */
  checkFreeSpace?: boolean;
  onProgress?: (progress: TransferProgress) => void;
}

/** The files among `paths` that hold content to deduplicate against: regular and not empty. */
async function usableBases(paths: string[]): Promise<string[]> {
  const sizes = await Promise.all(
    paths.map((p) =>
      stat(p).then(
        (info) => (info.isFile() ? info.size : 0),
        () => 0,
      ),
    ),
  );
  return paths.filter((_, i) => sizes[i]! > 0);
}

/** What the receiver knows of the manifest stream of the current attempt. */
interface ManifestStream {
  /** Entries received in this attempt (the manifest restarts from chunk 0 with every attempt). */
  received: number;
  /** Offset just past the last received entry. */
  nextOffset: number;
  end: ManifestEnd | undefined;
  /** Base images indexed with the attempt's chunking; awaited before the first NEED. */
  indexing: Promise<void>;
  /** The NEED of the latest part: sent once that part's known chunks are copied and the NEED before it went out. */
  answering: Promise<void>;
}

/** A chunk of a manifest part that the chunk index has: where it is, and its place in the part's plan. */
interface KnownChunk {
  planIndex: number;
  entry: ManifestEntry;
  source: ChunkLocation;
}

/**
 * One expected file: plans each manifest part against what is on disk, journaled or in the chunk index, writes
 * chunks into the partial file, and moves the file into place once its sha256 is verified.
 */
export class FileReceiveTransfer extends ReceiveTransfer {
  private readonly input: ExpectFileInput;
  private readonly manifest = new ManifestBuilder();
  private chunking: ChunkingParams | undefined;
  private size = 0;
  private stream: ManifestStream | undefined;
  /** One byte a chunk: 1 when it is on disk (or a hole for a zero chunk). Grows with the manifest. */
  private done = new Uint8Array(0);
  /** Chunks the journal of an earlier receiver process recorded, by index → offset. */
  private journaled = new Map<number, number>();
  /**
   * True when some content on disk was not verified by this process as it arrived (it resumed from an earlier
   * process's journal, or a new attempt described a chunk differently): END then re-hashes the whole file.
   */
  private verifyWholeFile = false;
  /**
   * Bytes of chunks not on disk when their part was planned (to be sent or copied) and not written yet: what the
   * free-space check must leave room for.
   */
  private outstandingBytes = 0;
  private file: PartialFile | undefined;
  private logicalBytes = 0;
  private chunksDone = 0;
  private readonly paths: PartialPaths;

  constructor(input: ExpectFileInput, ctx: ReceiverContext) {
    super(input, ctx);
    this.input = input;
    this.paths = partialPaths(input.targetPath);
  }

  /** The hash that names the chunks of the current attempt (its chunking's). */
  private get chunkHash(): ChunkHash {
    return chunkHashOf(this.chunking);
  }

  async attach(socket: FrameSocket, hello: Hello): Promise<void> {
    if (hello.kind !== TransferKind.FILE) throw new DwcpProtocolError('this transfer expects a file');
    let chosen: ChunkingParams | undefined;
    let chunkHash: ChunkHash | undefined;
    if (hello.streamIndex > 0) {
      if (this.stream === undefined) throw new DwcpProtocolError('data stream before the control stream');
      this.joinAttempt(socket, hello);
    } else {
      const file = hello.file;
      if (file === undefined) throw new DwcpProtocolError('file HELLO without file description');
      this.beginAttempt(socket, hello);
      // The older attempt's copies finish first: they mark chunks done, which this attempt's plan must see.
      await this.stream?.answering.catch(() => undefined);
      const bases = await usableBases([this.input.targetPath, ...(this.input.baseImages ?? [])]);
      // Nothing to deduplicate against: the sender's cheaper first-copy chunking, if it offered one. The choice
      // depends only on the bases, so a resumed transfer chooses as its first attempt did and its journal applies.
      const firstCopy = bases.length === 0 ? file.firstCopyChunking : undefined;
      if (firstCopy !== undefined) chosen = chunkingParams(firstCopy);
      // A sender that offers nothing is an older release: sha256, and no chunkHash in the reply it would not read.
      if (file.chunkHashes !== undefined) {
        chunkHash = pickChunkHash({ offered: file.chunkHashes, supported: this.ctx.chunkHashes });
      }
      const chunking = withChunkHash(chunkingParams(firstCopy ?? file.chunking), chunkHash ?? 'sha256');
      await this.open(file.size, chunking);
      // Index the existing target (a previous version) and the base images while the sender is still scanning its
      // source: both read a whole image.
      const indexing = this.ctx.chunkIndex.addExistingFiles({ paths: bases, chunking });
      indexing.catch(() => undefined);
      this.stream = { received: 0, nextOffset: 0, end: undefined, indexing, answering: Promise.resolve() };
      this.logicalBytes = 0;
      this.chunksDone = 0;
      this.outstandingBytes = 0;
    }
    await socket.send({
      type: FrameType.HELLO,
      transferId: this.transferId,
      payload: jsonPayload({
        ok: true,
        ...(chosen ? { chunking: chosen } : {}),
        ...(chunkHash ? { chunkHash } : {}),
      } satisfies HelloReply),
    });
    this.serveChunks(socket);
  }

  /**
   * Opens (or keeps) the partial target and its journal for this size and chunking. A journal written by another
   * process makes its chunks candidates for DONE, and makes END re-hash the whole file; no matching journal means
   * a fresh sparse file, all holes.
   */
  private async open(size: number, chunking: ChunkingParams): Promise<void> {
    if (this.file?.matches(size, chunking)) return;
    await this.release();
    const file = await PartialFile.open({
      targetPath: this.input.targetPath,
      transferId: this.transferId,
      size,
      chunking,
      journalBatchChunks: this.ctx.journalBatchChunks,
      journalIntervalMs: this.ctx.journalIntervalMs,
      onJournalError: (err) => this.fail(err, true),
    });
    this.file = file;
    this.size = size;
    this.chunking = chunking;
    this.manifest.truncate(0);
    this.done = new Uint8Array(0);
    this.journaled = file.journaled;
    this.verifyWholeFile = !file.fresh;
    this.stats.total = 0;
  }

  private onManifest(socket: FrameSocket, frame: Frame): Promise<void> {
    if (!frame.checksumOk || crcOmitted(frame)) throw new DwcpProtocolError('manifest part failed its checksum');
    return frame.type === FrameType.MANIFEST ? this.onManifestPart(socket, frame) : this.onManifestEnd(frame);
  }

  /**
   * Takes one manifest part: checks that it continues the file, plans each chunk (DONE: on disk, a hole, or in
   * the journal; REF: the chunk index has it; SEND), checks free space for what it asks for, and answers NEED.
   */
  private async onManifestPart(socket: FrameSocket, frame: Frame): Promise<void> {
    const stream = this.stream;
    const chunking = this.chunking;
    if (stream === undefined || chunking === undefined || stream.end !== undefined) {
      throw new DwcpProtocolError('manifest part outside a manifest');
    }
    if (frame.chunkIndex !== stream.received || frame.payload.length % MANIFEST_ENTRY_BYTES !== 0) {
      throw new DwcpProtocolError(`manifest part at chunk ${frame.chunkIndex} does not continue the manifest`);
    }
    const first = frame.chunkIndex;
    const count = frame.payload.length / MANIFEST_ENTRY_BYTES;
    const offset = entriesEnd({
      entries: frame.payload,
      first,
      offset: stream.nextOffset,
      maxBytes: chunking.maxBytes,
    });
    if (offset > this.size) throw new DwcpProtocolError('manifest runs past the end of the file');
    await stream.indexing;
    if (this.stream !== stream) throw new DwcpConnectionError('a newer attempt took over');

    // A chunk this process already has stays DONE only if the new attempt describes it the same way.
    const known = Math.min(this.manifest.chunkCount, first + count) - first;
    for (let j = 0; j < known; j++) {
      const i = first + j;
      const before = this.manifest.entries.subarray(i * MANIFEST_ENTRY_BYTES, (i + 1) * MANIFEST_ENTRY_BYTES);
      const now = frame.payload.subarray(j * MANIFEST_ENTRY_BYTES, (j + 1) * MANIFEST_ENTRY_BYTES);
      if (!before.equals(now) && this.done[i] === 1) {
        this.done[i] = 0;
        this.verifyWholeFile = true;
      }
    }
    this.manifest.put(first, frame.payload);
    this.done = growPerChunk(this.done, first + count);

    const plan = new Uint8Array(count).fill(ChunkState.SEND);
    const copies: KnownChunk[] = [];
    let asked = 0;
    for (let j = 0; j < count; j++) {
      const i = first + j;
      const entry = manifestEntry({ manifest: this.manifest, index: i });
      if (this.done[i] !== 1) {
        if (entry.zero) {
          this.done[i] = 1;
          this.stats.zero++;
        } else if (this.journaled.get(i) === entry.offset) {
          this.done[i] = 1;
          this.stats.resumed++;
        }
      }
      if (this.done[i] === 1) {
        plan[j] = ChunkState.DONE;
        this.logicalBytes += entry.length;
        this.chunksDone++;
        continue;
      }
      const location = this.ctx.chunkIndex.lookup({ digest: entry.hash, hash: this.chunkHash });
      if (location !== undefined) copies.push({ planIndex: j, entry, source: location });
      asked += entry.length;
    }
    stream.received = first + count;
    stream.nextOffset = offset;
    this.outstandingBytes += asked;
    if (asked > 0 && (this.input.checkFreeSpace ?? true)) {
      await ensureFreeSpace({ dir: path.dirname(this.input.targetPath), neededBytes: this.outstandingBytes });
    }
    // This part's copies run while the next part is planned; its NEED waits for them and for the part before it, so
    // NEEDs go out in order and the sender only ever sends what this receiver could not copy.
    const previous = stream.answering;
    const answer = this.copyKnownChunks({ known: copies, plan }).then(async () => {
      await previous;
      if (this.stream !== stream) return;
      await socket.send({
        type: FrameType.NEED,
        transferId: this.transferId,
        chunkIndex: first,
        encoding: ChunkEncoding.ZSTD,
        payload: compress(plan),
      });
    });
    stream.answering = answer;
    answer.catch(() => undefined);
    await previous;
  }

  /**
   * Copies the chunks the chunk index has from their files into the partial file, a batch per pool worker; each
   * copied one becomes REF in the plan, and one whose source no longer matches stays SEND and leaves the index.
   */
  private async copyKnownChunks(input: { known: KnownChunk[]; plan: Uint8Array }): Promise<void> {
    const { known, plan } = input;
    const { pool, chunkIndex } = this.ctx;
    const hash = this.chunkHash;
    const batchSize = Math.ceil(known.length / pool.size);
    const batches: KnownChunk[][] = [];
    for (let at = 0; at < known.length; at += batchSize) batches.push(known.slice(at, at + batchSize));
    await Promise.all(
      batches.map(async (batch) => {
        const { written } = await pool.run({
          kind: 'copyVerified',
          targetPath: this.paths.partialPath,
          hash,
          copies: batch.map(({ entry, source }) => ({
            path: source.path,
            offset: source.offset,
            length: source.length,
            expectedHash: entry.hash,
            targetOffset: entry.offset,
            ...(source.hashedVersion && { hashedVersion: source.hashedVersion }),
          })),
        });
        if (this.finished) return;
        batch.forEach(({ planIndex, entry }, k) => {
          if (written[k] !== 1) {
            chunkIndex.forget({ digest: entry.hash, hash });
            return;
          }
          plan[planIndex] = ChunkState.REF;
          this.recordWritten(entry, 'refs');
        });
      }),
    );
    if (known.length > 0) this.reportProgress();
  }

  /** The manifest is complete: it must cover the file exactly and match the digest the sender computed. */
  private async onManifestEnd(frame: Frame): Promise<void> {
    const stream = this.stream;
    const chunking = this.chunking;
    if (stream === undefined || chunking === undefined || stream.end !== undefined) {
      throw new DwcpProtocolError('MANIFEST_END outside a manifest');
    }
    await stream.answering;
    const end = parseJsonPayload({ frame, schema: ManifestEndSchema });
    if (end.chunkCount !== stream.received) throw new DwcpProtocolError('MANIFEST_END does not match its parts');
    this.manifest.truncate(end.chunkCount);
    const manifest: Manifest = {
      size: this.size,
      sha256: end.sha256 ?? '',
      chunkCount: end.chunkCount,
      entries: this.manifest.entries,
      chunking,
    };
    validateManifest({ manifest });
    if (manifestDigest({ manifest }) !== end.manifestDigest) {
      throw new DwcpProtocolError('manifest does not match its digest');
    }
    stream.end = end;
    this.stats.total = end.chunkCount;
  }

  private serveChunks(socket: FrameSocket): void {
    this.serve(socket, {
      onChunk: (frame) => this.handleChunk(socket, frame),
      onEnd: (frame) => this.finish(socket, frame),
      onManifest: (frame) => this.onManifest(socket, frame),
    });
  }

  private async handleChunk(socket: FrameSocket, frame: Frame): Promise<void> {
    if (frame.chunkIndex >= (this.stream?.received ?? 0)) {
      throw new DwcpProtocolError(`chunk ${frame.chunkIndex} before its manifest part`);
    }
    const entry = manifestEntry({ manifest: this.manifest, index: frame.chunkIndex });
    if (entry.offset !== frame.offset || entry.length !== frame.rawLength) {
      throw new DwcpProtocolError(`chunk ${entry.index} does not match the manifest`);
    }
    if (!frame.checksumOk) return this.nack(socket, entry.index, 'checksum');
    if (this.done[entry.index] === 1) return this.ack(socket, entry.index);

    const refused = await writeChunk({
      pool: this.ctx.pool,
      frame,
      entry,
      hash: this.chunkHash,
      partialPath: this.paths.partialPath,
    });
    if (refused !== undefined) return this.nack(socket, entry.index, refused);
    if (this.finished) return;
    this.recordWritten(entry, frame.type === FrameType.ZERO ? 'zero' : 'data');
    this.reportProgress();
    await this.ack(socket, entry.index);
  }

  /** A chunk is in the partial file, checked against its sha256: done, counted, and journaled. */
  private recordWritten(entry: ManifestEntry, kind: 'data' | 'refs' | 'zero'): void {
    if (this.done[entry.index] === 1) return;
    this.done[entry.index] = 1;
    this.outstandingBytes -= entry.length;
    this.stats[kind]++;
    this.logicalBytes += entry.length;
    this.chunksDone++;
    this.file?.record(entry.index, entry.offset);
  }

  private reportProgress(): void {
    this.progress({
      logicalBytes: this.logicalBytes,
      chunksDone: this.chunksDone,
      chunksTotal: this.stream?.end?.chunkCount,
    });
  }

  /**
   * The end-to-end check. Every chunk this process wrote was checked against the manifest's chunk hash in memory
   * before the write, zero chunks are holes of a file this process created empty, and the manifest matched the
   * digest over its entries and the sender's whole-file sha256 (computed in the same pass as the chunk hashes).
   * So the file's sha256 is the manifest's, without reading the file again. When some content came from an
   * earlier process (journal) or an earlier description of the file, the whole file is re-hashed instead.
   */
  private async finish(socket: FrameSocket, frame: Frame): Promise<void> {
    const manifestEnd = this.stream?.end;
    const file = this.file;
    if (manifestEnd === undefined || file === undefined) throw new DwcpProtocolError('END before the manifest');
    const end = parseJsonPayload({ frame, schema: EndSchema });
    if (this.done.subarray(0, manifestEnd.chunkCount).some((d) => d !== 1)) {
      throw new DwcpProtocolError('END before every chunk arrived');
    }
    await file.flush();
    const mismatch = end.sha256 !== manifestEnd.sha256 ? 'END names another sha256' : await this.reverify(manifestEnd);
    if (mismatch !== undefined) {
      // A whole-file mismatch means the chunk-level checks were fooled; keep nothing from this attempt.
      await this.release();
      await removePartial(this.paths);
      this.fail(new DwcpChecksumError(`received content does not match: ${mismatch}`), true);
      return;
    }
    await file.sync();
    await this.release();
    await moveOntoTarget({ ...this.paths, targetPath: this.input.targetPath });
    await this.answerEnd(socket, this.completion(verifiedIdentity(manifestEnd)));
    // The verified manifest is the new target's chunk index: its next version is then indexed without a scan.
    const chunking = this.chunking;
    if (chunking !== undefined) {
      await this.ctx.chunkIndex
        .addKnownFile({ path: this.input.targetPath, chunking, entries: this.manifest.entries })
        .catch(() => undefined);
    }
    this.succeed({
      sha256: manifestEnd.sha256,
      manifestDigest: manifestEnd.manifestDigest,
      logicalBytes: this.logicalBytes,
      chunksDone: this.chunksDone,
      chunksTotal: manifestEnd.chunkCount,
    });
  }

  /** What a sender that sends this finished transfer again needs to scan as this one did (see Completion). */
  private completion(verified: string): Completion {
    const cuts = this.chunking && withChunkHash(this.chunking, 'sha256');
    return { verified, chunkHash: this.chunkHash, ...(cuts && { cuts }) };
  }

  /**
   * When some content was not checked as it arrived (see verifyWholeFile), the file is read again: against the
   * whole-file sha256 if the sender computed one, otherwise chunk by chunk against the manifest. Undefined: it
   * matches.
   */
  private async reverify(manifestEnd: ManifestEnd): Promise<string | undefined> {
    if (!this.verifyWholeFile) return undefined;
    const { pool } = this.ctx;
    const { partialPath } = this.paths;
    if (manifestEnd.sha256 !== undefined) {
      const { sha256 } = await pool.run({ kind: 'hashFile', path: partialPath });
      return sha256 === manifestEnd.sha256 ? undefined : `sha256 ${sha256}, expected ${manifestEnd.sha256}`;
    }
    const entries = Buffer.from(this.manifest.entries.subarray(0, manifestEnd.chunkCount * MANIFEST_ENTRY_BYTES));
    const hash = this.chunkHash;
    const { firstMismatch } = await pool.run({ kind: 'checkManifest', path: partialPath, entries, hash });
    return firstMismatch === undefined ? undefined : `chunk ${firstMismatch} differs from its manifest entry`;
  }

  protected async release(): Promise<void> {
    const file = this.file;
    this.file = undefined;
    // Keep whatever progress was made durable, so a later expectFile of the same transfer resumes from it.
    await file?.close();
  }
}
