/**
 * Content-defined chunking (FastCDC with normalized chunking) and the per-chunk content checks that decide how a
 * chunk is sent. Boundaries depend only on the last 32 bytes before a cut, so an insertion or deletion moves the
 * boundaries near the edit and leaves the rest of the chunk stream (and its hashes) unchanged: that is what lets a
 * v2 image reuse the receiver's v1 chunks.
 */
import { createHash } from 'node:crypto';
import { compress } from 'zstd-napi';
import type { ChunkHash } from './chunk-hash';
import { dwcpNative, type DwcpNativeAddon, type NativeCutInput } from './native-addon';

export interface ChunkingParams {
  minBytes: number;
  avgBytes: number;
  maxBytes: number;
  /** FastCDC normalization level: how much harder a cut is before avgBytes and easier after it. */
  normalization: number;
  /**
   * Fixed extents of maxBytes (min = avg = max) instead of content-defined cuts: for a copy that has nothing to
   * deduplicate against, where finding shift-resistant boundaries is CPU spent for nothing.
   */
  fixed?: boolean;
  /**
   * The hash that names each chunk (chunk-hash.ts); absent means sha256, what every release before BLAKE3 used, so
   * their chunking keys, sidecars and manifest digests stay valid.
   */
  hash?: ChunkHash;
}

export const MAX_CHUNK_BYTES = 4 * 1024 * 1024;

/** Builds validated chunking parameters; min and max default to avg/4 and avg*4 as in FastCDC. */
export function chunkingParams(input: {
  avgBytes: number;
  minBytes?: number;
  maxBytes?: number;
  normalization?: number;
  fixed?: boolean;
  hash?: ChunkHash;
}): ChunkingParams {
  if (input.fixed) return withChunkHash(fixedChunking({ bytes: input.avgBytes }), input.hash ?? 'sha256');
  const avgBytes = input.avgBytes;
  const minBytes = input.minBytes ?? Math.max(64, Math.floor(avgBytes / 4));
  const maxBytes = input.maxBytes ?? avgBytes * 4;
  const normalization = input.normalization ?? 2;
  if (!Number.isInteger(avgBytes) || avgBytes < 256 || (avgBytes & (avgBytes - 1)) !== 0) {
    throw new RangeError(`avgBytes must be a power of two >= 256, got ${avgBytes}`);
  }
  if (!(minBytes >= 64 && minBytes < avgBytes && avgBytes < maxBytes && maxBytes <= MAX_CHUNK_BYTES)) {
    throw new RangeError(`chunk sizes must satisfy 64 <= min < avg < max <= ${MAX_CHUNK_BYTES}`);
  }
  if (!Number.isInteger(normalization) || normalization < 0 || normalization > 4) {
    throw new RangeError('normalization must be an integer in 0..4');
  }
  return withChunkHash({ minBytes, avgBytes, maxBytes, normalization }, input.hash ?? 'sha256');
}

/** The same cuts, named by `hash`; sha256 is left implicit (see ChunkingParams.hash). */
export function withChunkHash(params: ChunkingParams, hash: ChunkHash): ChunkingParams {
  const { hash: _previous, ...cuts } = params;
  return hash === 'sha256' ? cuts : { ...cuts, hash };
}

/** The hash that names a chunking's chunks (sha256 before any chunking is known). */
export function chunkHashOf(params: Pick<ChunkingParams, 'hash'> | undefined): ChunkHash {
  return params?.hash ?? 'sha256';
}

/** Fixed extents of `bytes` (a multiple of 4 KiB, the page and file-system block size, up to MAX_CHUNK_BYTES). */
export function fixedChunking(input: { bytes: number }): ChunkingParams {
  const { bytes } = input;
  if (!Number.isInteger(bytes) || bytes <= 0 || bytes % 4096 !== 0 || bytes > MAX_CHUNK_BYTES) {
    throw new RangeError(`fixed chunks must be a multiple of 4096 bytes up to ${MAX_CHUNK_BYTES}, got ${bytes}`);
  }
  return { minBytes: bytes, avgBytes: bytes, maxBytes: bytes, normalization: 0, fixed: true };
}

/** A stable key for "same chunking": two sides only share chunk hashes when they cut alike and hash alike. */
export function chunkingKey(params: ChunkingParams): string {
  const cuts = params.fixed
    ? `fixed/${params.maxBytes}`
    : `${params.minBytes}/${params.avgBytes}/${params.maxBytes}/${params.normalization}`;
  const hash = chunkHashOf(params);
  return hash === 'sha256' ? cuts : `${cuts}/${hash}`;
}

/**
 * The gear table must be identical on every host forever (it defines where chunks are cut), so it is derived from a
 * fixed string rather than from a random generator whose sequence could change between Node versions.
 */
const GEAR = (() => {
  const table = new Int32Array(256);
  for (let i = 0; i < 256; i += 8) {
    const digest = createHash('sha256')
      .update(`novacron-dwcp-gear-${i / 8}`)
      .digest();
    for (let j = 0; j < 8; j++) table[i + j] = digest.readInt32BE(j * 4);
  }
  return table;
})();

/**
 * Masks take the top bits: with a left-shifting gear hash the high bits mix the most recent 32 bytes, the low
 * bits only the last few.
 */
function topBitsMask(bits: number): number {
  return bits <= 0 ? 0 : (~0 << (32 - Math.min(bits, 31))) | 0;
}

interface Masks {
  small: number;
  large: number;
  /** Where the cut falls inside a run of zeros (0 when a zero run is cut only at maxBytes). */
  zeroCut: number;
}

const masksCache = new Map<string, Masks>();

function masksFor(params: ChunkingParams): Masks {
  const key = chunkingKey(params);
  const cached = masksCache.get(key);
  if (cached !== undefined) return cached;
  const bits = Math.round(Math.log2(params.avgBytes));
  const small = topBitsMask(bits + params.normalization);
  const large = topBitsMask(bits - params.normalization);
  const masks = {
    small,
    large,
    zeroCut: findCut(new Uint8Array(params.maxBytes), 0, params.maxBytes, params, small, large),
  };
  masksCache.set(key, masks);
  return masks;
}

/**
 * The addon's block cutter (native/dwcp-native), given this module's gear table first so that the table keeps one
 * definition. Undefined without the addon, or with one built before it could cut chunks.
 */
const nativeCutChunks = ((): DwcpNativeAddon['cutChunks'] | undefined => {
  if (dwcpNative?.cutChunks === undefined || dwcpNative.setGearTable === undefined) return undefined;
  dwcpNative.setGearTable(GEAR);
  return dwcpNative.cutChunks;
})();

/** Which implementation cuts blocks (blockChunkLengths): the benchmark and the tests record it. */
export const chunkingImplementation: 'native' | 'typescript' = nativeCutChunks !== undefined ? 'native' : 'typescript';

const nativeInputCache = new Map<string, Omit<NativeCutInput, 'final'>>();

/** What the addon needs of a chunking, with the masks and the zero-run cut this module derives. */
function nativeInputFor(params: ChunkingParams): Omit<NativeCutInput, 'final'> {
  const key = chunkingKey(params);
  const cached = nativeInputCache.get(key);
  if (cached !== undefined) return cached;
  const { minBytes, avgBytes, maxBytes } = params;
  const fixed = params.fixed === true;
  // Fixed extents use no masks; masksFor would hash a maxBytes run of zeros to find a cut it never uses.
  const masks = fixed ? { small: 0, large: 0, zeroCut: 0 } : masksFor(params);
  const input = {
    minBytes,
    avgBytes,
    maxBytes,
    fixed,
    smallMask: masks.small,
    largeMask: masks.large,
    zeroCut: masks.zeroCut,
  };
  nativeInputCache.set(key, input);
  return input;
}

function findCut(
  data: Uint8Array,
  start: number,
  limit: number,
  params: ChunkingParams,
  small: number,
  large: number,
): number {
  // The hottest loop of a send (every byte of data passes through it): positions are absolute and the table is a
  // local, which V8 runs about a quarter faster than the indexed-from-start form with fallbacks.
  const gear = GEAR;
  const normal = start + Math.min(limit, params.avgBytes);
  const end = start + limit;
  let hash = 0;
  let p = start + params.minBytes;
  for (; p < normal; p++) {
    hash = ((hash << 1) + gear[data[p]!]!) | 0;
    if ((hash & small) === 0) return p - start + 1;
  }
  for (; p < end; p++) {
    hash = ((hash << 1) + gear[data[p]!]!) | 0;
    if ((hash & large) === 0) return p - start + 1;
  }
  return 0;
}

/**
 * Length of the next chunk in data[start, end). When the data runs out before a cut point and `final` is false the
 * answer is 0: more input is needed before this chunk can be cut.
 */
export function nextChunkLength(input: {
  data: Uint8Array;
  start: number;
  end: number;
  params: ChunkingParams;
  final: boolean;
}): number {
  const { data, start, params } = input;
  const available = input.end - start;
  if (available <= 0) return 0;
  if (params.fixed) return available >= params.maxBytes ? params.maxBytes : input.final ? available : 0;
  if (available <= params.minBytes) return input.final ? available : 0;
  const masks = masksFor(params);
  const limit = Math.min(available, params.maxBytes);
  // Free space in disk images is long zero runs; the gear hash over zeros always cuts at the same place, so a
  // memcmp finds that cut without hashing every byte. The result is identical to the loop below.
  const zeroCut = masks.zeroCut === 0 ? params.maxBytes : masks.zeroCut;
  if (zeroCut <= limit && data[start] === 0 && isZeroChunk(data.subarray(start, start + zeroCut))) return zeroCut;
  const cut = findCut(data, start, limit, params, masks.small, masks.large);
  if (cut > 0) return cut;
  if (limit === params.maxBytes) return limit;
  return input.final ? available : 0;
}

/**
 * The lengths of the chunks nextChunkLength cuts from data[start, end), one after another, until it answers 0 (more
 * data is needed, which `final` rules out) or the data ends. The addon cuts a whole read block in one call (a call
 * per chunk would cost more than cutting a small chunk); `fallback` forces the nextChunkLength loop, which defines
 * the cuts and runs whenever the addon is absent.
 */
export function blockChunkLengths(input: {
  data: Uint8Array;
  start: number;
  end: number;
  params: ChunkingParams;
  final: boolean;
  fallback?: boolean;
}): Uint32Array {
  const { data, end, params, final } = input;
  if (input.start >= end) return new Uint32Array(0);
  if (nativeCutChunks !== undefined && input.fallback !== true) {
    return nativeCutChunks(data.subarray(input.start, end), { ...nativeInputFor(params), final });
  }
  const lengths: number[] = [];
  for (let start = input.start; ;) {
    const length = nextChunkLength({ data, start, end, params, final });
    if (length === 0) break;
    lengths.push(length);
    start += length;
  }
  return Uint32Array.from(lengths);
}

/** Chunk lengths for a whole buffer; `fallback` as for blockChunkLengths. */
export function chunkLengths(input: { data: Uint8Array; params: ChunkingParams; fallback?: boolean }): number[] {
  const { data, params, fallback } = input;
  return Array.from(blockChunkLengths({ data, start: 0, end: data.length, params, final: true, fallback }));
}

/**
 * Streaming chunker: push blocks as they are read, get back the chunks that are complete. The tail that has no cut
 * point yet is kept until more data or `finish()` arrives.
 */
export class ContentChunker {
  private carry: Buffer = Buffer.alloc(0);
  private readonly params: ChunkingParams;
  private readonly fallback: boolean;

  /** `fallback` as for blockChunkLengths. */
  constructor(input: { params: ChunkingParams; fallback?: boolean }) {
    this.params = input.params;
    this.fallback = input.fallback ?? false;
  }

  push(block: Buffer): Buffer[] {
    return this.cut(this.carry.length === 0 ? block : Buffer.concat([this.carry, block]), false);
  }

  finish(): Buffer[] {
    return this.cut(this.carry, true);
  }

  private cut(data: Buffer, final: boolean): Buffer[] {
    const chunks: Buffer[] = [];
    let start = 0;
    const { params, fallback } = this;
    for (const length of blockChunkLengths({ data, start: 0, end: data.length, params, final, fallback })) {
      chunks.push(data.subarray(start, start + length));
      start += length;
    }
    // Copy the tail so the big block it came from can be garbage collected.
    this.carry = Buffer.from(data.subarray(start));
    return chunks;
  }
}

let zeroBlock = Buffer.alloc(64 * 1024);

/** True when every byte is zero; uses memcmp against a shared zero block rather than a JS loop. */
export function isZeroChunk(data: Uint8Array): boolean {
  if (data.length > zeroBlock.length) zeroBlock = Buffer.alloc(data.length);
  return Buffer.compare(data, zeroBlock.subarray(0, data.length)) === 0;
}

/** Above this compressed/raw ratio zstd is not worth its CPU or its frame overhead: the chunk goes raw. */
export const INCOMPRESSIBLE_RATIO = 0.95;
const SAMPLE_BYTES = 4096;

/**
 * Compresses a small sample from the middle of the chunk at level 1; already-compressed data (packages, media,
 * encrypted disks) is recognised for the price of 4 KiB of zstd instead of the whole chunk.
 */
export function looksIncompressible(input: { data: Uint8Array; sampleBytes?: number }): boolean {
  const sampleBytes = input.sampleBytes ?? SAMPLE_BYTES;
  const { data } = input;
  if (data.length === 0) return false;
  const from = data.length <= sampleBytes ? 0 : Math.floor((data.length - sampleBytes) / 2);
  const sample = data.subarray(from, Math.min(data.length, from + sampleBytes));
  return compress(sample, { compressionLevel: 1 }).length / sample.length > INCOMPRESSIBLE_RATIO;
}
