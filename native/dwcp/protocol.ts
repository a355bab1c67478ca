/**
 * The DWCP session protocol on top of framing: bodies of the control frames and the chunk states exchanged after the
 * manifest. One transfer runs as numbered attempts; each attempt opens N connections, stream 0 first:
 *
 * 1. sender → HELLO {kind, attempt, streamIndex, streams, file?}; receiver → HELLO {ok, nextIndex?, completed?,
 *    chunking?, chunkHash?} (chunking: the receiver has no base, so the sender cuts fixed extents instead of
 *    content-defined chunks; chunkHash: the hash that names chunks, picked from those the sender offered)
 * 2. file kind, stream 0 only: sender → MANIFEST parts (chunkIndex = the part's first chunk) as its scan cuts
 *    them, then MANIFEST_END {chunkCount, sha256, manifestDigest}; the receiver answers each part with a NEED
 *    (same chunkIndex, zstd of one ChunkState byte per chunk of the part), once it has copied the part's chunks
 *    that its chunk index holds. The HELLO comes before the sender's scan, so the receiver indexes its base images
 *    while the sender hashes its source, and chunks of early parts travel while later parts are still being hashed.
 * 3. CHUNK / ZERO frames on any stream for the chunks a NEED asked for; receiver → ACK or NACK {reason} for each
 * 4. sender → END {sha256, size, chunkCount} on stream 0; receiver checks that every chunk is in place and the
 *    manifest matched its digest (and re-hashes the whole file when it resumed from a journal) → END {sha256}
 *
 * A later attempt's stream-0 HELLO supersedes every connection of earlier attempts, and the receiver's answer to it
 * (journal, stream position) is what makes resuming send only the missing chunks.
 */
import { z } from 'zod';
import { CHUNK_HASHES } from './chunk-hash';

export const TransferKind = {
  FILE: 'file',
  STREAM: 'stream',
  PROBE: 'probe',
} as const;
export type TransferKind = (typeof TransferKind)[keyof typeof TransferKind];

export const ChunkState = {
  /** The receiver needs the chunk's data. */
  SEND: 0,
  /** The receiver has it on disk already (journal, zero chunk). */
  DONE: 1,
  /** The receiver had it in its chunk index (a base image, the previous version) and copied it: nothing to send. */
  REF: 2,
} as const;
export type ChunkState = (typeof ChunkState)[keyof typeof ChunkState];

export const ChunkingSchema = z.object({
  minBytes: z.number().int().positive(),
  avgBytes: z.number().int().positive(),
  maxBytes: z.number().int().positive(),
  normalization: z.number().int().nonnegative(),
  fixed: z.boolean().optional(),
  /** Absent: sha256. An older release strips this field, which is why the hash is agreed on first (chunkHashes). */
  hash: z.enum(CHUNK_HASHES).optional(),
});

export const HelloSchema = z.object({
  kind: z.enum([TransferKind.FILE, TransferKind.STREAM, TransferKind.PROBE]),
  attempt: z.number().int().nonnegative(),
  streamIndex: z.number().int().nonnegative(),
  streams: z.number().int().positive().max(64),
  /** File kind, stream 0: enough for the receiver to start indexing its base images while the sender scans. */
  file: z
    .object({
      size: z.number().int().nonnegative(),
      chunking: ChunkingSchema,
      /**
       * What the sender would rather cut with when the receiver has nothing to deduplicate against (no existing
       * target, no base image): the receiver's reply names the chunking it chose. Only before the sender's scan
       * began; later attempts describe the chunking the scan used.
       */
      firstCopyChunking: ChunkingSchema.optional(),
      /**
       * The chunk hashes the sender can compute, best first (chunk-hash.ts); absent from older senders, which
       * mean sha256. Once the scan has begun, only the hash it uses.
       */
      chunkHashes: z.array(z.enum(CHUNK_HASHES)).min(1).max(CHUNK_HASHES.length).optional(),
    })
    .optional(),
});
export type Hello = z.infer<typeof HelloSchema>;

export const ManifestEndSchema = z.object({
  chunkCount: z.number().int().nonnegative(),
  /** The whole file's sha256; absent when the sender did not compute one (sendFile's wholeFileSha256: false). */
  sha256: z
    .string()
    .regex(/^[0-9a-f]{64}$/)
    .optional(),
  manifestDigest: z.string().regex(/^[0-9a-f]{64}$/),
});
export type ManifestEnd = z.infer<typeof ManifestEndSchema>;

export const HelloReplySchema = z.object({
  ok: z.literal(true),
  /** Stream kind: the first chunk index the receiver has not yet delivered. */
  nextIndex: z.number().int().nonnegative().optional(),
  /** The transfer already finished (the sender missed the END reply); its verified sha256. */
  completed: z.string().optional(),
  /** File kind: the chunking to scan with, when the receiver took the sender's firstCopyChunking. */
  chunking: ChunkingSchema.optional(),
  /** File kind: the chunk hash the receiver picked from the sender's chunkHashes; absent from older receivers (sha256). */
  chunkHash: z.enum(CHUNK_HASHES).optional(),
});
export type HelloReply = z.infer<typeof HelloReplySchema>;

export const NackSchema = z.object({ reason: z.enum(['checksum']) });
export type NackReason = z.infer<typeof NackSchema>['reason'];

export const EndSchema = z.object({
  sha256: z
    .string()
    .regex(/^[0-9a-f]{64}$/)
    .optional(),
  size: z.number().int().nonnegative(),
  chunkCount: z.number().int().nonnegative(),
});
export type End = z.infer<typeof EndSchema>;

/**
 * What the receiver verified (also what a HELLO reply's `completed` says): the whole file's sha256 when the sender
 * computed one, otherwise the manifest digest, which covers every chunk's sha256, their order and the size.
 */
export const EndReplySchema = z.object({ sha256: z.string() });
export type EndReply = z.infer<typeof EndReplySchema>;

/** The identity a finished file transfer is known by on both ends (see EndReplySchema). */
export function verifiedIdentity(input: { sha256?: string | undefined; manifestDigest: string }): string {
  return input.sha256 || input.manifestDigest;
}

/** Manifest parts stay well under the frame payload limit. */
export const MANIFEST_PART_ENTRIES = 16 * 1024;

/** How long either end waits for the other's HELLO before giving the connection up. */
export const HELLO_TIMEOUT_MS = 30_000;
