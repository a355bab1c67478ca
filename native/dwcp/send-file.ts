/**
 * sendFile: a file as content-defined chunks, against a receiver that answers each manifest part with the chunks it
 * still lacks (resumed from its journal, copied from its base images, or holes for zero chunks).
 */
import { stat } from 'node:fs/promises';
import { decompress } from 'zstd-napi';
import { localChunkHashes, type ChunkHash } from './chunk-hash';
import { chunkHashOf, chunkingKey, chunkingParams, withChunkHash, type ChunkingParams } from './chunking';
import { DwcpChecksumError, DwcpError, DwcpProtocolError } from './errors';
import { ChunkEncoding, FrameFlag, FrameType, jsonPayload, parseJsonPayload } from './framing';
import { growPerChunk, manifestEntry } from './manifest';
import { ChunkState, EndReplySchema, TransferKind, verifiedIdentity, type End, type HelloReply } from './protocol';
import type { SendWorkload } from './send-engine';
import { openDataSockets, SenderContext, type SenderOptions } from './sender-context';
import { SourceScan, streamManifest } from './source-scan';
import { emptyChunkStats, type SendResult } from './transfer-types';

export interface SendFileInput extends SenderOptions {
  sourcePath: string;
  /** How to cut; the hash that names the chunks is agreed with the receiver instead (chunkHashes). */
  chunking?: ChunkingParams;
  /**
   * The chunk hashes this sender offers, best first (default: what this process can compute, localChunkHashes).
   * Tests narrow it to play a host without dwcp-native.
   */
  chunkHashes?: readonly ChunkHash[];
  /**
   * Offered to the receiver as what to cut with instead of `chunking` when it has nothing to deduplicate against
   * (typically fixed extents, fixedChunking): the scan then waits for the receiver's answer instead of starting
   * before the first connection.
   */
  firstCopyChunking?: ChunkingParams;
  /**
   * Also compute the whole file's sha256 in the scan (default true), for callers that identify content by it (the
   * image library). False saves a hash of every byte, holes included; the receiver's checks are as strong either
   * way: every chunk against its chunk hash, and the manifest against its digest.
   */
  wholeFileSha256?: boolean;
}

const DEFAULT_CHUNKING = chunkingParams({ avgBytes: 64 * 1024 });

/**
 * Sends a file: scans it into a content-defined chunk manifest, streaming the manifest to the receiver part by
 * part; the receiver answers each part with the chunks it lacks, and those are sent while later parts are still
 * being hashed. Resumes across reconnects and receiver restarts.
 */
/** The chunking the scan uses: the receiver may only pick what was offered. */
function chosenChunking(input: {
  reply: HelloReply['chunking'];
  offered: ChunkingParams | undefined;
  otherwise: ChunkingParams;
}): ChunkingParams {
  if (input.reply === undefined) return input.otherwise;
  const picked = chunkingParams(input.reply);
  if (input.offered === undefined || chunkingKey(picked) !== chunkingKey(input.offered)) {
    throw new DwcpProtocolError(`the receiver chose chunking ${chunkingKey(picked)}, which was not offered`);
  }
  return input.offered;
}

export async function sendFile(input: SendFileInput): Promise<SendResult> {
  const ctx = new SenderContext(input);
  /** The scan the send reads; cancelled when the send ends, so a failed or cancelled send does not read on. */
  let scan: SourceScan | undefined;
  try {
    const level = input.compressionLevel ?? 1;
    // Cuts only: the hash is agreed with the receiver, whatever these name.
    const chunking = withChunkHash(input.chunking ?? DEFAULT_CHUNKING, 'sha256');
    const firstCopyChunking = input.firstCopyChunking && withChunkHash(input.firstCopyChunking, 'sha256');
    const offered = input.chunkHashes ?? localChunkHashes;
    const preferred = offered[0];
    if (preferred === undefined) throw new RangeError('chunkHashes must name at least one hash');
    const size = await stat(input.sourcePath).then(
      (info) => info.size,
      (err: unknown) => {
        throw DwcpError.fromNative(err, `source ${input.sourcePath}`);
      },
    );
    const startScan = (with_: ChunkingParams) =>
      new SourceScan({
        pool: ctx.pool,
        path: input.sourcePath,
        chunking: with_,
        size,
        hashWholeFile: input.wholeFileSha256 ?? true,
      });
    // Without an alternative to offer, the scan starts before the first connection, in the hash this end prefers,
    // and the receiver indexes its base images meanwhile.
    scan = firstCopyChunking === undefined ? startScan(withChunkHash(chunking, preferred)) : undefined;
    const stats = emptyChunkStats();
    let logicalBytes = 0;
    let chunksDone = 0;
    /** A receiver has accepted the scan's chunk hash. */
    let hashAgreed = false;

    const { attempts } = await ctx.withReconnect(async (attempt) => {
      const offer = scan === undefined ? firstCopyChunking : undefined;
      const file = {
        size,
        chunking: scan?.chunking ?? chunking,
        ...(offer !== undefined ? { firstCopyChunking: offer } : {}),
        // Until a receiver has answered, everything this end can compute (an early scan's hash comes first);
        // afterwards only the scan's, so a later attempt keeps the chunks already sent.
        chunkHashes: scan !== undefined && hashAgreed ? [chunkHashOf(scan.chunking)] : [...offered],
      };
      const control = await ctx.connect({
        streamIndex: 0,
        hello: { kind: TransferKind.FILE, attempt, streamIndex: 0, streams: ctx.streams, file },
      });
      const sockets = [control.socket];
      try {
        // An older receiver, or one without dwcp-native, answers sha256 whatever was offered.
        const hash = control.reply.chunkHash ?? 'sha256';
        if (!offered.includes(hash)) {
          throw new DwcpProtocolError(`the receiver chose chunk hash ${hash}, which was not offered`);
        }
        if (scan !== undefined && chunkHashOf(scan.chunking) !== hash) {
          // The receiver cannot check the hash the scan uses (an older release, or a host without dwcp-native):
          // scan again in its hash. The abandoned scan stops at its next part and frees its worker.
          scan.cancel();
          scan = startScan(withChunkHash(scan.chunking, hash));
        }
        const current = (scan ??= startScan(
          withChunkHash(chosenChunking({ reply: control.reply.chunking, offered: offer, otherwise: chunking }), hash),
        ));
        hashAgreed = true;
        const manifest = current.manifest;
        if (control.reply.completed !== undefined) {
          const { manifest: whole, digest } = await current.done();
          if (control.reply.completed !== verifiedIdentity({ sha256: whole.sha256, manifestDigest: digest }))
            throw new DwcpChecksumError('receiver completed with other content');
          logicalBytes = whole.size;
          chunksDone = whole.chunkCount;
          return;
        }
        // Data connections join before the manifest starts, so a receiver that refuses the first part (disk full)
        // reports it on connections the engine is already reading.
        sockets.push(...(await openDataSockets({ ctx, attempt, kind: TransferKind.FILE })));

        stats.zero = 0;
        stats.resumed = 0;
        logicalBytes = 0;
        chunksDone = 0;
        let states = new Uint8Array(0);
        /** Chunks the receiver's NEED parts have answered so far. */
        let answered = 0;
        let manifestSent = false;
        const queue: number[] = [];
        let queueHead = 0;

        const workload: SendWorkload = {
          pull: () => {
            if (queueHead < queue.length) return Promise.resolve(queue[queueHead++]!);
            queue.length = 0;
            queueHead = 0;
            const total = current.chunkCount;
            return Promise.resolve(manifestSent && total !== undefined && answered === total ? 'end' : 'wait');
          },
          onNeed: (frame) => {
            const part = new Uint8Array(decompress(frame.payload));
            if (frame.chunkIndex !== answered || answered + part.length > manifest.chunkCount) {
              throw new DwcpProtocolError(`NEED for chunks ${frame.chunkIndex}+${part.length} is out of order`);
            }
            states = growPerChunk(states, answered + part.length);
            states.set(part, answered);
            for (let i = answered; i < answered + part.length; i++) {
              if (states[i] === ChunkState.SEND) {
                queue.push(i);
                continue;
              }
              const entry = manifestEntry({ manifest, index: i });
              if (states[i] === ChunkState.REF) stats.refs++;
              else if (entry.zero) stats.zero++;
              else stats.resumed++;
              logicalBytes += entry.length;
              chunksDone++;
            }
            answered += part.length;
            ctx.progress({ logicalBytes, chunksDone, chunksTotal: current.chunkCount });
          },
          prepare: async (index) => {
            const entry = manifestEntry({ manifest, index });
            const base = {
              transferId: input.transferId,
              chunkIndex: index,
              offset: entry.offset,
              rawLength: entry.length,
            };
            const encoded = await ctx.pool.run({
              kind: 'encodeFile',
              path: input.sourcePath,
              offset: entry.offset,
              length: entry.length,
              level,
              // The receiver checks the chunk against its chunk hash before writing it: a CRC would add nothing.
              checksum: false,
            });
            return {
              ...base,
              type: encoded.encoding === ChunkEncoding.ZERO ? FrameType.ZERO : FrameType.CHUNK,
              encoding: encoded.encoding,
              payload: encoded.payload,
              flags: FrameFlag.PAYLOAD_CRC_OMITTED,
            };
          },
          onAck: (index) => {
            stats.data++;
            states[index] = ChunkState.DONE;
            ctx.acks++;
            logicalBytes += manifestEntry({ manifest, index }).length;
            chunksDone++;
            ctx.progress({ logicalBytes, chunksDone, chunksTotal: current.chunkCount });
          },
          onNack: () => {
            stats.resent++;
          },
        };
        const engine = ctx.engine({
          sockets,
          workload,
          queue: [],
          maxInFlight: input.maxInFlightChunks ?? 16 * ctx.streams,
        });
        streamManifest({ socket: control.socket, scan: current, transferId: input.transferId }).then(
          () => {
            manifestSent = true;
            engine.wake();
          },
          (err: unknown) => engine.fail(DwcpError.fromNative(err, 'manifest')),
        );
        const reply = await engine.run(async () => {
          const { manifest: whole } = await current.done();
          return {
            type: FrameType.END,
            transferId: input.transferId,
            payload: jsonPayload({
              ...(whole.sha256 !== '' ? { sha256: whole.sha256 } : {}),
              size: whole.size,
              chunkCount: whole.chunkCount,
            } satisfies End),
          };
        });
        const end = parseJsonPayload({ frame: reply, schema: EndReplySchema });
        const { manifest: whole, digest } = await current.done();
        if (end.sha256 !== verifiedIdentity({ sha256: whole.sha256, manifestDigest: digest }))
          throw new DwcpChecksumError('receiver verified other content');
      } finally {
        for (const s of sockets) s.destroy();
      }
    });
    if (scan === undefined) throw new DwcpProtocolError('the send ended before the receiver answered');
    const { manifest: whole, digest } = await scan.done();
    stats.total = whole.chunkCount;
    ctx.progress({ logicalBytes, chunksDone, chunksTotal: whole.chunkCount, force: true });
    return ctx.result({
      ...(whole.sha256 !== '' ? { sha256: whole.sha256 } : {}),
      manifestDigest: digest,
      logicalBytes,
      attempts,
      chunks: stats,
      chunking: chunkingKey(whole.chunking),
    });
  } finally {
    scan?.cancel();
    await ctx.close();
  }
}
