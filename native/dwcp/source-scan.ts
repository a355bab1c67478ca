/**
 * The sender's side of the manifest: one scan of the source cuts and hashes it in a pool worker while earlier parts
 * of the manifest already travel to the receiver, so chunk data can flow before the whole file has been read.
 */
import type { FrameSocket } from './connection';
import type { DwcpWorkerPool } from './worker-pool';
import { DwcpError, DwcpIoError } from './errors';
import type { ChunkingParams } from './chunking';
import { FrameType, jsonPayload } from './framing';
import { MANIFEST_ENTRY_BYTES, ManifestBuilder, manifestDigest, type Manifest, type ScanSummary } from './manifest';
import { MANIFEST_PART_ENTRIES, type ManifestEnd } from './protocol';
import { Notifier } from './send-engine';

/**
 * The sender's scan of its source, shared by every attempt of one send: manifest parts become available while later
 * parts are still being cut and hashed in a worker, and the whole-file sha256 comes out of the same pass.
 */
export class SourceScan {
  readonly manifest = new ManifestBuilder();
  private summary: ScanSummary | undefined;
  private failure: DwcpError | undefined;
  private readonly changed = new Notifier();
  private readonly abandon = new AbortController();
  readonly chunking: ChunkingParams;

  constructor(input: {
    pool: DwcpWorkerPool;
    path: string;
    chunking: ChunkingParams;
    size: number;
    /** False: the manifest's sha256 is empty, and the manifest digest alone identifies the content. */
    hashWholeFile: boolean;
  }) {
    this.chunking = input.chunking;
    const task = {
      kind: 'scanParts' as const,
      path: input.path,
      chunking: input.chunking,
      hashWholeFile: input.hashWholeFile,
    };
    input.pool
      .runWithParts(
        task,
        (part) => {
          this.manifest.put(part.first, part.entries);
          this.changed.notify();
        },
        { signal: this.abandon.signal },
      )
      .then((summary) => {
        if (summary.size !== input.size) throw new DwcpIoError(`${input.path} changed size during the transfer`);
        this.summary = summary;
      })
      .catch((err: unknown) => {
        this.failure = DwcpError.fromNative(err, `scanning ${input.path}`);
      })
      .finally(() => this.changed.notify());
  }

  /**
   * Stops the scan at its next part (about every 8 MiB) if it is still running, and frees its worker: for a scan that
   * nobody will read, because the send ended or the receiver wants another hash. A no-op once the scan is done.
   */
  cancel(): void {
    this.abandon.abort();
  }

  /** Entries known so far; waits for more unless the scan has finished. Undefined once `from` is the end. */
  async entriesFrom(from: number): Promise<{ first: number; entries: Buffer } | undefined> {
    for (;;) {
      if (this.failure !== undefined) throw this.failure;
      if (this.manifest.chunkCount > from) {
        return { first: from, entries: Buffer.from(this.manifest.entries.subarray(from * MANIFEST_ENTRY_BYTES)) };
      }
      if (this.summary !== undefined) return undefined;
      await this.changed.wait();
    }
  }

  get chunkCount(): number | undefined {
    return this.summary?.chunkCount;
  }

  async done(): Promise<{ manifest: Manifest; digest: string }> {
    while (this.summary === undefined) {
      if (this.failure !== undefined) throw this.failure;
      await this.changed.wait();
    }
    const manifest: Manifest = { ...this.summary, entries: this.manifest.entries, chunking: this.chunking };
    return { manifest, digest: manifestDigest({ manifest }) };
  }
}

/**
 * Streams the manifest on the control connection as the scan produces it, then MANIFEST_END. Parts are capped so a
 * frame stays well under the payload limit.
 */
export async function streamManifest(input: {
  socket: FrameSocket;
  scan: SourceScan;
  transferId: string;
}): Promise<void> {
  let next = 0;
  for (;;) {
    const part = await input.scan.entriesFrom(next);
    if (part === undefined) break;
    const maxBytes = MANIFEST_PART_ENTRIES * MANIFEST_ENTRY_BYTES;
    for (let at = 0; at < part.entries.length; at += maxBytes) {
      await input.socket.send({
        type: FrameType.MANIFEST,
        transferId: input.transferId,
        chunkIndex: part.first + at / MANIFEST_ENTRY_BYTES,
        payload: part.entries.subarray(at, at + maxBytes),
      });
    }
    next = part.first + part.entries.length / MANIFEST_ENTRY_BYTES;
  }
  const { manifest, digest } = await input.scan.done();
  const end: ManifestEnd = {
    chunkCount: manifest.chunkCount,
    ...(manifest.sha256 !== '' ? { sha256: manifest.sha256 } : {}),
    manifestDigest: digest,
  };
  await input.socket.send({ type: FrameType.MANIFEST_END, transferId: input.transferId, payload: jsonPayload(end) });
}
