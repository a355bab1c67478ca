/**
 * The chunk manifest of a file: offset, length, zero flag and sha256 of every content-defined chunk, plus the sha256
 * of the whole file. It is packed into one buffer (45 bytes a chunk) because a 100 GiB image has over a million
 * chunks, and it travels to the receiver as-is in MANIFEST frames.
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { chunkingKey, isZeroChunk, nextChunkLength, type ChunkingParams } from './chunking';
import { DwcpProtocolError } from './errors';

export const MANIFEST_ENTRY_BYTES = 45;
const FLAG_ZERO = 1;

export interface Manifest {
  size: number;
  /** sha256 of the whole logical content, verified by the receiver at END. */
  sha256: string;
  chunkCount: number;
  entries: Buffer;
  chunking: ChunkingParams;
}

export interface ManifestEntry {
  index: number;
  offset: number;
  length: number;
  zero: boolean;
  hash: Buffer;
}

export function manifestEntry(input: {
  manifest: Pick<Manifest, 'entries' | 'chunkCount'>;
  index: number;
}): ManifestEntry {
  const { manifest, index } = input;
  if (!Number.isInteger(index) || index < 0 || index >= manifest.chunkCount) {
    throw new DwcpProtocolError(`chunk index ${index} is outside the manifest`);
  }
  const at = index * MANIFEST_ENTRY_BYTES;
  const e = manifest.entries;
  return {
    index,
    offset: Number(e.readBigUInt64BE(at)),
    length: e.readUInt32BE(at + 8),
    zero: (e.readUInt8(at + 12) & FLAG_ZERO) !== 0,
    hash: e.subarray(at + 13, at + 45),
  };
}

/** Identifies a manifest (content and chunking) so a resumed transfer can tell whether its journal still applies. */
export function manifestDigest(input: { manifest: Manifest }): string {
  const { manifest } = input;
  return createHash('sha256')
    .update(`${manifest.size}:${manifest.sha256}:${chunkingKey(manifest.chunking)}:`)
    .update(manifest.entries)
    .digest('hex');
}

/**
 * Checks a manifest received from a peer: entries must tile [0, size) exactly, or a hostile or broken sender could
 * make the receiver write outside the file.
 */
export function validateManifest(input: { manifest: Manifest }): void {
  const { manifest } = input;
  if (manifest.entries.length !== manifest.chunkCount * MANIFEST_ENTRY_BYTES) {
    throw new DwcpProtocolError('manifest length does not match its chunk count');
  }
  let expected = 0;
  for (let i = 0; i < manifest.chunkCount; i++) {
    const entry = manifestEntry({ manifest, index: i });
    if (entry.offset !== expected || entry.length <= 0 || entry.length > manifest.chunking.maxBytes) {
      throw new DwcpProtocolError(`manifest entry ${i} does not continue the file`);
    }
    expected += entry.length;
  }
  if (expected !== manifest.size) throw new DwcpProtocolError('manifest does not cover the whole file');
}

const SCAN_BLOCK_BYTES = 8 * 1024 * 1024;

/**
 * Reads a file once, cutting it into chunks and hashing each chunk and the whole file. Synchronous on purpose: it
 * runs inside a worker thread, where blocking is the point.
 */
export function scanFileSync(input: { path: string; chunking: ChunkingParams }): Manifest {
  const fd = openSync(input.path, 'r');
  try {
    const expectedSize = fstatSync(fd).size;
    const whole = createHash('sha256');
    const params = input.chunking;
    const parts: Buffer[] = [];
    let offset = 0;
    let count = 0;
    // Zero chunks come in a handful of lengths; their hashes are computed once.
    const zeroHashes = new Map<number, Buffer>();
    const add = (chunk: Buffer): void => {
      const entry = Buffer.allocUnsafe(MANIFEST_ENTRY_BYTES);
      entry.writeBigUInt64BE(BigInt(offset), 0);
      entry.writeUInt32BE(chunk.length, 8);
      const zero = isZeroChunk(chunk);
      entry.writeUInt8(zero ? FLAG_ZERO : 0, 12);
      let hash = zero ? zeroHashes.get(chunk.length) : undefined;
      if (hash === undefined) {
        hash = createHash('sha256').update(chunk).digest();
        if (zero) zeroHashes.set(chunk.length, hash);
      }
      hash.copy(entry, 13);
      parts.push(entry);
      offset += chunk.length;
      count++;
    };
    // One buffer, refilled behind the uncut tail: chunks are hashed where they lie, so nothing is copied but the
    // tail (less than one maximum chunk) once per block.
    const buffer = Buffer.allocUnsafe(SCAN_BLOCK_BYTES + params.maxBytes);
    let filled = 0;
    let eof = false;
    while (!eof || filled > 0) {
      if (!eof) {
        const n = readSync(fd, buffer, filled, buffer.length - filled, null);
        if (n === 0) eof = true;
        whole.update(buffer.subarray(filled, filled + n));
        filled += n;
      }
      let start = 0;
      for (;;) {
        const length = nextChunkLength({ data: buffer, start, end: filled, params, final: eof });
        if (length === 0) break;
        add(buffer.subarray(start, start + length));
        start += length;
      }
      buffer.copyWithin(0, start, filled);
      filled -= start;
    }
    if (offset !== expectedSize) throw new Error(`${input.path} changed size while it was scanned`);
    return {
      size: offset,
      sha256: whole.digest('hex'),
      chunkCount: count,
      entries: Buffer.concat(parts),
      chunking: input.chunking,
    };
  } finally {
    closeSync(fd);
  }
}
