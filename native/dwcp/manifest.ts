/**
 * The chunk manifest of a file: offset, length, zero flag and hash (its chunking's, chunk-hash.ts) of every chunk, plus
 * the sha256 of the whole file. It is packed into one buffer (45 bytes a chunk) because a 100 GiB image has over a million
 * chunks, and it travels to the receiver as-is in MANIFEST frames.
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { hashChunk, type ChunkHash } from './chunk-hash';
import { blockChunkLengths, chunkHashOf, chunkingKey, isZeroChunk, type ChunkingParams } from './chunking';
import { dataExtents, type Extent } from './data-extents';
import { DwcpIoError, DwcpProtocolError } from './errors';

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
  const end = entriesEnd({ entries: manifest.entries, first: 0, offset: 0, maxBytes: manifest.chunking.maxBytes });
  if (end !== manifest.size) throw new DwcpProtocolError('manifest does not cover the whole file');
}

/**
 * Checks that entries (the first of them chunk `first`) continue a file at `offset` without gaps or overlaps, none
 * longer than `maxBytes`, and returns the offset just past them: the receiver checks each part of a manifest this
 * way as it arrives, and the whole manifest at its end.
 */
export function entriesEnd(input: { entries: Buffer; first: number; offset: number; maxBytes: number }): number {
  const part = { entries: input.entries, chunkCount: Math.floor(input.entries.length / MANIFEST_ENTRY_BYTES) };
  let offset = input.offset;
  for (let j = 0; j < part.chunkCount; j++) {
    const entry = manifestEntry({ manifest: part, index: j });
    if (entry.offset !== offset || entry.length <= 0 || entry.length > input.maxBytes) {
      throw new DwcpProtocolError(`manifest entry ${input.first + j} does not continue the file`);
    }
    offset += entry.length;
  }
  return offset;
}

/** A one-byte-per-chunk array, grown (at least doubling) to hold `length` chunks as the manifest grows. */
export function growPerChunk(bytes: Uint8Array<ArrayBuffer>, length: number): Uint8Array<ArrayBuffer> {
  if (bytes.length >= length) return bytes;
  const grown = new Uint8Array(Math.max(length, bytes.length * 2));
  grown.set(bytes);
  return grown;
}

const SCAN_BLOCK_BYTES = 8 * 1024 * 1024;

/** A run of consecutive manifest entries, starting at chunk `first`. */
export interface ManifestPart {
  first: number;
  entries: Buffer;
}

export interface ScanSummary {
  size: number;
  /** sha256 of the whole file, computed in the same sequential pass as the chunk hashes. */
  sha256: string;
  chunkCount: number;
}

/**
 * Reads a file once, cutting it into chunks and hashing each chunk and the whole file, and hands out the entries of
 * about every SCAN_BLOCK_BYTES of the file as soon as they are cut: a sender can ship the first parts of the manifest
 * (and the chunks they describe) while the rest of the file is still being hashed. Synchronous on purpose: it runs
 * inside a worker thread, where blocking is the point.
 *
 * Content-defined cuts with one rule for zeros: every block of `maxBytes` at a multiple of `maxBytes` that holds only
 * zeros is a zero chunk of its own, and the data between such blocks is cut as one run that ends at the next one. The
 * rule depends on the content alone, so a block inside a hole (dataExtents) is known to be zero without being read or
 * cut, and a file without known holes (or with its zeros written out) gets the same manifest by reading them. Most of
 * an image is holes, which both ends used to read, cut and compare with zeros in every scan.
 */
export function scanFileParts(input: {
  path: string;
  chunking: ChunkingParams;
  onPart: (part: ManifestPart) => void;
  /** False skips the whole-file sha256 (sha256 is then empty): a chunk index needs only the chunk hashes. */
  hashWholeFile?: boolean;
}): ScanSummary {
  if (input.chunking.fixed) return scanFixedParts(input);
  const params = input.chunking;
  const blockBytes = params.maxBytes;
  const fd = openSync(input.path, 'r');
  try {
    const size = fstatSync(fd).size;
    const inHoleAt = holeTest(dataExtents(input.path));
    const whole = (input.hashWholeFile ?? true) ? createHash('sha256') : undefined;
    const entries = new PartEmitter(input.onPart);
    const zeroHashes = new ZeroHashes(chunkHashOf(params));
    const zeros = Buffer.alloc(blockBytes);
    // The data run not cut yet, file offsets [runStart, runStart + filled); cut chunks are hashed where they lie,
    // so nothing is copied but the uncut tail (less than one maximum chunk) when the buffer fills.
    const buffer = Buffer.allocUnsafe(SCAN_BLOCK_BYTES + blockBytes);
    let runStart = 0;
    let filled = 0;
    const cut = (final: boolean): void => {
      let start = 0;
      for (const length of blockChunkLengths({ data: buffer, start: 0, end: filled, params, final })) {
        const chunk = buffer.subarray(start, start + length);
        entries.add(packEntry({ offset: runStart + start, chunk, zero: isZeroChunk(chunk), zeroHashes }));
        start += length;
      }
      buffer.copyWithin(0, start, filled);
      filled -= start;
      runStart += start;
    };
    for (let offset = 0; offset < size; offset += blockBytes) {
      const length = Math.min(blockBytes, size - offset);
      const inHole = inHoleAt(offset, length);
      const into = buffer.subarray(filled, filled + length);
      const block = blockAt({ fd, path: input.path, offset, inHole, zeros, into });
      whole?.update(block);
      if (length === blockBytes && (inHole || isZeroChunk(block))) {
        cut(true);
        entries.add(packEntry({ offset, chunk: zeros, zero: true, zeroHashes }));
        runStart = offset + length;
      } else {
        if (inHole) zeros.copy(buffer, filled, 0, length);
        filled += length;
        if (filled + blockBytes > buffer.length) cut(false);
      }
      entries.flushEvery({ bytes: SCAN_BLOCK_BYTES, offset: offset + length });
    }
    cut(true);
    entries.flushEvery({ bytes: 0, offset: size });
    if (fstatSync(fd).size !== size) throw new DwcpIoError(`${input.path} changed size while it was scanned`);
    return { size, sha256: whole?.digest('hex') ?? '', chunkCount: entries.count };
  } finally {
    closeSync(fd);
  }
}

/** Manifest entries gathered into parts: one part for about every `bytes` of the file scanned. */
class PartEmitter {
  private part: Buffer[] = [];
  private partOffset = 0;
  count = 0;

  constructor(private readonly onPart: (part: ManifestPart) => void) {}

  add(entry: Buffer): void {
    this.part.push(entry);
    this.count++;
  }

  /** Hands out the entries gathered so far once the scan is `bytes` past the last part (0: now). */
  flushEvery(input: { bytes: number; offset: number }): void {
    if (this.part.length === 0 || input.offset - this.partOffset < input.bytes) return;
    this.onPart({ first: this.count - this.part.length, entries: Buffer.concat(this.part) });
    this.part = [];
    this.partOffset = input.offset;
  }
}

/** A scan's chunk hash, with the hashes of zero chunks kept: they come in a handful of lengths. */
class ZeroHashes {
  private readonly byLength = new Map<number, Buffer>();

  constructor(readonly hash: ChunkHash) {}

  of(chunk: Buffer, zero: boolean): Buffer {
    if (!zero) return hashChunk(chunk, this.hash);
    let digest = this.byLength.get(chunk.length);
    if (digest === undefined) this.byLength.set(chunk.length, (digest = hashChunk(chunk, this.hash)));
    return digest;
  }
}

/** One packed manifest entry. */
function packEntry(input: { offset: number; chunk: Buffer; zero: boolean; zeroHashes: ZeroHashes }): Buffer {
  const { chunk, zero } = input;
  const entry = Buffer.allocUnsafe(MANIFEST_ENTRY_BYTES);
  entry.writeBigUInt64BE(BigInt(input.offset), 0);
  entry.writeUInt32BE(chunk.length, 8);
  entry.writeUInt8(zero ? FLAG_ZERO : 0, 12);
  input.zeroHashes.of(chunk, zero).copy(entry, 13);
  return entry;
}

/**
 * scanFileParts for fixed chunking: a chunk that lies in a hole (dataExtents) is a zero chunk without being read;
 * the others are read where they lie. Same manifest as reading every byte, since a hole reads as zeros.
 */
function scanFixedParts(input: {
  path: string;
  chunking: ChunkingParams;
  onPart: (part: ManifestPart) => void;
  hashWholeFile?: boolean;
}): ScanSummary {
  const bytes = input.chunking.maxBytes;
  const fd = openSync(input.path, 'r');
  try {
    const size = fstatSync(fd).size;
    const inHoleAt = holeTest(dataExtents(input.path));
    const whole = (input.hashWholeFile ?? true) ? createHash('sha256') : undefined;
    const buffer = Buffer.allocUnsafe(bytes);
    const zeros = Buffer.alloc(bytes);
    const zeroHashes = new ZeroHashes(chunkHashOf(input.chunking));
    const entries = new PartEmitter(input.onPart);
    for (let offset = 0; offset < size; offset += bytes) {
      const length = Math.min(bytes, size - offset);
      const inHole = inHoleAt(offset, length);
      const chunk = blockAt({ fd, path: input.path, offset, inHole, zeros, into: buffer.subarray(0, length) });
      whole?.update(chunk);
      entries.add(packEntry({ offset, chunk, zero: inHole || isZeroChunk(chunk), zeroHashes }));
      entries.flushEvery({ bytes: SCAN_BLOCK_BYTES, offset: offset + length });
    }
    entries.flushEvery({ bytes: 0, offset: size });
    if (fstatSync(fd).size !== size) throw new DwcpIoError(`${input.path} changed size while it was scanned`);
    return { size, sha256: whole?.digest('hex') ?? '', chunkCount: entries.count };
  } finally {
    closeSync(fd);
  }
}

/** For blocks asked in increasing offset order: whether the block lies wholly in a hole between `extents`. */
function holeTest(extents: Extent[]): (offset: number, length: number) => boolean {
  let next = 0;
  return (offset, length) => {
    while (next < extents.length && extents[next]!.end <= offset) next++;
    return next >= extents.length || extents[next]!.start >= offset + length;
  };
}

/** The `into.length` bytes at `offset`: zeros without a read when they lie in a hole, else read into `into`. */
function blockAt(input: {
  fd: number;
  path: string;
  offset: number;
  inHole: boolean;
  zeros: Buffer;
  into: Buffer;
}): Buffer {
  if (input.inHole) return input.zeros.subarray(0, input.into.length);
  readFully({ fd: input.fd, into: input.into, position: input.offset, path: input.path });
  return input.into;
}

function readFully(input: { fd: number; into: Buffer; position: number; path: string }): void {
  let filled = 0;
  while (filled < input.into.length) {
    const n = readSync(input.fd, input.into, filled, input.into.length - filled, input.position + filled);
    if (n === 0) throw new DwcpIoError(`${input.path} ended before offset ${input.position + input.into.length}`);
    filled += n;
  }
}

/** The whole manifest of a file in one piece (the receiver's chunk index uses this for its base images). */
export function scanFileSync(input: { path: string; chunking: ChunkingParams }): Manifest {
  const parts: Buffer[] = [];
  const summary = scanFileParts({ ...input, onPart: (part) => parts.push(part.entries) });
  return { ...summary, entries: Buffer.concat(parts), chunking: input.chunking };
}

/**
 * Manifest entries that arrive in parts: one buffer that doubles when full, so a million-chunk manifest is not
 * re-concatenated for every part.
 */
export class ManifestBuilder {
  private buffer = Buffer.alloc(0);
  chunkCount = 0;

  /** The entries so far, as a view (valid until the next append). */
  get entries(): Buffer {
    return this.buffer.subarray(0, this.chunkCount * MANIFEST_ENTRY_BYTES);
  }

  /** Writes `entries` starting at chunk `first` (overwriting what was there), growing the count if needed. */
  put(first: number, entries: Buffer): void {
    if (entries.length % MANIFEST_ENTRY_BYTES !== 0) throw new DwcpProtocolError('manifest part is not whole entries');
    const end = first * MANIFEST_ENTRY_BYTES + entries.length;
    if (end > this.buffer.length) {
      const grown = Buffer.alloc(Math.max(end, this.buffer.length * 2, 64 * MANIFEST_ENTRY_BYTES));
      this.buffer.copy(grown, 0, 0, this.chunkCount * MANIFEST_ENTRY_BYTES);
      this.buffer = grown;
    }
    entries.copy(this.buffer, first * MANIFEST_ENTRY_BYTES);
    this.chunkCount = Math.max(this.chunkCount, end / MANIFEST_ENTRY_BYTES);
  }

  /** Forgets entries from `count` on (a new attempt's manifest turned out shorter). */
  truncate(count: number): void {
    this.chunkCount = Math.min(this.chunkCount, count);
  }
}
