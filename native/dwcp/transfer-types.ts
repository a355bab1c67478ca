/**
 * What both ends of a DWCP transfer report: progress while it runs, and the result with its chunk statistics when
 * it ends. Sender and receiver modules share these, so they live apart from either side.
 */

export interface TransferProgress {
  /** Bytes of the logical content that the receiver has (including resumed, deduplicated and zero chunks). */
  logicalBytes: number;
  /** Frame bytes this side has put on the wire, over every attempt. */
  wireBytes: number;
  chunksDone: number;
  /** Unknown for a stream until its end. */
  chunksTotal: number | undefined;
}

export interface ChunkStats {
  total: number;
  /** Chunks whose data crossed the wire (last successful send of each). */
  data: number;
  /** Chunks the receiver copied from its chunk index. */
  refs: number;
  zero: number;
  /** Chunks the receiver already had from an earlier attempt. */
  resumed: number;
  /** Resends after a NACK. */
  resent: number;
}

export interface SendResult {
  transferId: string;
  /** The whole content's sha256, unless sent with wholeFileSha256 / wholeStreamSha256: false. */
  sha256?: string;
  /** File sends: the manifest digest the receiver verified (sha256 over size, chunking and every chunk's sha256). */
  manifestDigest?: string;
  /** File sends: how the file was cut (chunkingKey), e.g. `fixed/1048576` when the receiver took a first-copy offer. */
  chunking?: string;
  logicalBytes: number;
  wireBytes: number;
  wireBytesReceived: number;
  attempts: number;
  durationMs: number;
  chunks: ChunkStats;
}

export interface ReceiveResult {
  transferId: string;
  /** As in SendResult. */
  sha256?: string;
  manifestDigest?: string;
  logicalBytes: number;
  /** Frame bytes received over every attempt. */
  wireBytes: number;
  durationMs: number;
  chunks: ChunkStats;
}

/**
 * What identifies a finished stream sent without its whole sha256 (see EndReplySchema): its size and chunk count,
 * the two figures both ends check at END.
 */
export function streamIdentity(input: { size: number; chunkCount: number }): string {
  return `stream/${input.size}/${input.chunkCount}`;
}

export function emptyChunkStats(): ChunkStats {
  return { total: 0, data: 0, refs: 0, zero: 0, resumed: 0, resent: 0 };
}

/**
 * Reports progress at most every 100 ms, so a fast transfer does not flood its listener. The report of the last chunk
 * in always goes through, since the end-to-end check that follows may take seconds (a resumed transfer re-reads the
 * file), and so does `force` (the final report).
 */
export function progressReporter(input: {
  onProgress: ((progress: TransferProgress) => void) | undefined;
  wireBytes: () => number;
}): (progress: Omit<TransferProgress, 'wireBytes'> & { force?: boolean }) => void {
  let lastAt = 0;
  return ({ force, ...progress }) => {
    const now = Date.now();
    const allIn = progress.chunksTotal !== undefined && progress.chunksDone === progress.chunksTotal;
    if (input.onProgress === undefined || (!force && !allIn && now - lastAt < 100)) return;
    lastAt = now;
    input.onProgress({ ...progress, wireBytes: input.wireBytes() });
  };
}
