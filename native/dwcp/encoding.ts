/**
 * HDE: how a chunk is put on the wire (zero, raw, or zstd), and the rule that picks the zstd level from link speed
 * versus CPU speed. The worker pool that runs this work off the event loop is worker-pool.ts.
 */
import { crc32 } from 'node:zlib';
import { compress, decompress } from 'zstd-napi';
import { INCOMPRESSIBLE_RATIO, isZeroChunk, looksIncompressible } from './chunking';
import { DwcpChecksumError } from './errors';
import { ChunkEncoding } from './framing';

/** Level 0 means "do not compress" here; zstd itself would read 0 as its default level 3. */
export const COMPRESSION_OFF = 0;

export interface EncodedChunk {
  encoding: ChunkEncoding;
  payload: Buffer;
  rawLength: number;
  /** CRC-32 of the payload, the per-chunk wire checksum. */
  checksum: number;
}

/**
 * Picks the cheapest faithful representation: zero chunks carry no payload, incompressible chunks go raw (a sample
 * is tried first), and zstd output that saves less than 5% is thrown away in favour of raw.
 */
export function encodeChunk(input: {
  data: Buffer;
  level: number;
  /** False: no payload CRC (checksum 0), for chunks whose content the receiver verifies by hash. */
  checksum?: boolean;
}): EncodedChunk {
  const { data, level } = input;
  const crc = input.checksum === false ? () => 0 : crc32;
  const raw = (): EncodedChunk => ({
    encoding: ChunkEncoding.RAW,
    payload: data,
    rawLength: data.length,
    checksum: crc(data),
  });
  if (isZeroChunk(data)) {
    return { encoding: ChunkEncoding.ZERO, payload: Buffer.alloc(0), rawLength: data.length, checksum: 0 };
  }
  if (level === COMPRESSION_OFF || looksIncompressible({ data })) return raw();
  // The zstd frame checksum verifies the decompressed content again on the receiver, beyond the wire CRC.
  const packed = compress(data, { compressionLevel: level, checksumFlag: true });
  if (packed.length / data.length > INCOMPRESSIBLE_RATIO) return raw();
  return { encoding: ChunkEncoding.ZSTD, payload: packed, rawLength: data.length, checksum: crc(packed) };
}

/** Reverses encodeChunk; a payload that does not decode to rawLength bytes is a checksum failure. */
export function decodeChunk(input: { encoding: ChunkEncoding; payload: Buffer; rawLength: number }): Buffer {
  const { encoding, payload, rawLength } = input;
  let data: Buffer;
  switch (encoding) {
    case ChunkEncoding.ZERO:
      data = Buffer.alloc(rawLength);
      break;
    case ChunkEncoding.RAW:
      data = payload;
      break;
    case ChunkEncoding.ZSTD:
      try {
        data = decompress(payload);
      } catch (err) {
        throw new DwcpChecksumError('zstd payload does not decode', err);
      }
      break;
    default:
      throw new DwcpChecksumError(`encoding ${String(encoding)} carries no chunk data`);
  }
  if (data.length !== rawLength) throw new DwcpChecksumError(`chunk decoded to ${data.length}, not ${rawLength} bytes`);
  return data;
}

/**
 * Speed and size of zstd levels relative to level 1 (zstd 1.5 on the Silesia corpus, single thread). Levels above 12
 * are left out: on disk images they buy a few percent of ratio for 10-100x the CPU.
 */
export const ZSTD_LEVEL_PROFILE = [
  { level: 1, speed: 1.0, size: 1.0 },
  { level: 3, speed: 0.65, size: 0.92 },
  { level: 6, speed: 0.3, size: 0.87 },
  { level: 9, speed: 0.17, size: 0.85 },
  { level: 12, speed: 0.08, size: 0.83 },
] as const;

export interface CompressionChoice {
  level: number;
  /** Expected logical throughput in MB/s with this level: min(compression speed, link speed / ratio). */
  expectedMBps: number;
}

/**
 * The level rule. With link speed L (MB/s), level-1 compression speed C1 per worker, W workers and level-1 ratio r1
 * (compressed/raw), level l delivers min(W * C1 * speed(l), L / (r1 * size(l))) logical MB/s, and no compression
 * delivers L. Take the level with the best figure; a higher level must win by more than 5% to be worth its CPU.
 * So fast links with slow CPUs get no or light compression, and slow links get the strongest affordable level.
 *
 * When `hashMBps` is given (the per-worker speed of the work every byte costs whatever the level: chunking and
 * sha256), the workers' time per byte is that work plus compression, so level l's CPU figure becomes
 * W / (1 / (C1 * speed(l)) + 1 / H) and no compression is capped at W * H. Without this term a link that is itself
 * driven by the same CPUs (loopback, or a 10 Gbit/s NIC on two cores) looks like it gains from zstd when it loses.
 */
export function chooseCompressionLevel(input: {
  bandwidthMbps: number;
  cpuMBpsAtLevel1: number;
  workers: number;
  ratioAtLevel1?: number;
  maxLevel?: number;
  hashMBps?: number;
}): CompressionChoice {
  const link = input.bandwidthMbps / 8;
  const ratio = Math.min(1, Math.max(0.01, input.ratioAtLevel1 ?? 0.5));
  const maxLevel = input.maxLevel ?? 12;
  const hashSecondsPerMB = input.hashMBps === undefined || input.hashMBps <= 0 ? 0 : 1 / input.hashMBps;
  const cpuFor = (compressMBps: number | undefined): number => {
    const seconds = (compressMBps === undefined ? 0 : 1 / compressMBps) + hashSecondsPerMB;
    return seconds === 0 ? Number.POSITIVE_INFINITY : input.workers / seconds;
  };
  let best: CompressionChoice = { level: COMPRESSION_OFF, expectedMBps: Math.min(link, cpuFor(undefined)) };
  for (const profile of ZSTD_LEVEL_PROFILE) {
    if (profile.level > maxLevel) break;
    const cpu = cpuFor(input.cpuMBpsAtLevel1 * profile.speed);
    const expected = Math.min(cpu, link / (ratio * profile.size));
    if (expected > best.expectedMBps * 1.05) best = { level: profile.level, expectedMBps: expected };
  }
  return best;
}
