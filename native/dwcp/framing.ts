/**
 * DWCP wire framing. Every frame is a fixed 52-byte big-endian header followed by a payload:
 *
 * | offset | size | field |
 * | --- | --- | --- |
 * | 0 | 4 | magic `DWCP` |
 * | 4 | 1 | version |
 * | 5 | 1 | frame type |
 * | 6 | 1 | encoding of the payload |
 * | 7 | 1 | flags (FrameFlag) |
 * | 8 | 16 | transfer id (UUID bytes) |
 * | 24 | 4 | chunk index |
 * | 28 | 8 | offset of the chunk in the logical content |
 * | 36 | 4 | raw (decoded) length |
 * | 40 | 4 | encoded length = payload length |
 * | 44 | 4 | CRC-32 of the payload |
 * | 48 | 4 | CRC-32 of header bytes 0..47 |
 *
 * The header has its own CRC because a corrupted length would silently desynchronise the stream; a bad header
 * closes the connection (the transfer resumes), while a bad payload only costs a NACK and a resend of one chunk.
 */
import { crc32 } from 'node:zlib';
import { z } from 'zod';
import { DwcpProtocolError } from './errors';

export const FRAME_MAGIC = 0x44574350;
/** 2: the receiver copies the chunks it has itself and says so in its NEED; version 1's CHUNK_REF (type 3) is gone. */
export const FRAME_VERSION = 2;
export const FRAME_HEADER_BYTES = 52;
/** Chunks are at most a few MiB; anything far larger is a corrupted or hostile header. */
export const DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024;

export const FrameType = {
  HELLO: 1,
  CHUNK: 2,
  /** A run of zero bytes: no payload, the receiver leaves a hole or emits zeros. */
  ZERO: 4,
  ACK: 5,
  NACK: 6,
  END: 7,
  ERROR: 8,
  /** Part of the chunk manifest (offsets, lengths, hashes), starting at `chunkIndex`. */
  MANIFEST: 9,
  /** The receiver's answer to the manifest: the state of every chunk. */
  NEED: 10,
  PING: 11,
  PONG: 12,
  /** Filler for the throughput probe. */
  PROBE: 13,
  /** Closes the manifest: chunk count, whole-content sha256 and manifest digest (JSON). */
  MANIFEST_END: 14,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const ChunkEncoding = {
  RAW: 0,
  ZSTD: 1,
  ZERO: 2,
} as const;
export type ChunkEncoding = (typeof ChunkEncoding)[keyof typeof ChunkEncoding];

export const FrameFlag = {
  /**
   * The payload CRC was not computed (the field is 0): a file chunk, whose content the receiver checks against the
   * manifest's sha256 anyway, inside TLS, whose AEAD already guards the bytes in transit. A CRC of every chunk
   * cost both ends a pass over the data. Receivers honour it only where content is verified otherwise.
   */
  PAYLOAD_CRC_OMITTED: 0x01,
} as const;

const FRAME_TYPES = new Set<number>(Object.values(FrameType));
const ENCODINGS = new Set<number>(Object.values(ChunkEncoding));

export interface Frame {
  type: FrameType;
  encoding: ChunkEncoding;
  flags: number;
  transferId: string;
  chunkIndex: number;
  offset: number;
  rawLength: number;
  payload: Buffer;
  /**
   * False when the payload CRC does not match: the frame boundaries are still sound, the content is not. True
   * without a check when the sender omitted the CRC (FrameFlag.PAYLOAD_CRC_OMITTED; see `crcOmitted`).
   */
  checksumOk: boolean;
}

/** The sender left the payload CRC out: only a receiver that verifies the content otherwise may accept the frame. */
export function crcOmitted(frame: Pick<Frame, 'flags'>): boolean {
  return (frame.flags & FrameFlag.PAYLOAD_CRC_OMITTED) !== 0;
}

export interface EncodeFrameInput {
  type: FrameType;
  transferId: string;
  encoding?: ChunkEncoding;
  flags?: number;
  chunkIndex?: number;
  offset?: number;
  rawLength?: number;
  payload?: Buffer;
  /** A precomputed payload CRC (workers compute it next to compression). */
  checksum?: number;
}

const EMPTY = Buffer.alloc(0);
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function isTransferId(value: string): boolean {
  return UUID_RE.test(value);
}

function transferIdToBytes(transferId: string, target: Buffer, at: number): void {
  if (!isTransferId(transferId)) throw new DwcpProtocolError(`transfer id must be a lowercase UUID: ${transferId}`);
  target.write(transferId.replaceAll('-', ''), at, 16, 'hex');
}

function transferIdFromBytes(source: Buffer, at: number): string {
  const hex = source.toString('hex', at, at + 16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Encodes a frame as [header, payload] so large payloads are written without being copied into one buffer.
 */
export function encodeFrame(input: EncodeFrameInput): readonly [Buffer, Buffer] {
  const payload = input.payload ?? EMPTY;
  const offset = input.offset ?? 0;
  if (!Number.isSafeInteger(offset) || offset < 0) throw new DwcpProtocolError(`bad frame offset ${offset}`);
  const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  header.writeUInt32BE(FRAME_MAGIC, 0);
  header.writeUInt8(FRAME_VERSION, 4);
  header.writeUInt8(input.type, 5);
  header.writeUInt8(input.encoding ?? ChunkEncoding.RAW, 6);
  header.writeUInt8(input.flags ?? 0, 7);
  transferIdToBytes(input.transferId, header, 8);
  header.writeUInt32BE(input.chunkIndex ?? 0, 24);
  header.writeBigUInt64BE(BigInt(offset), 28);
  header.writeUInt32BE(input.rawLength ?? payload.length, 36);
  header.writeUInt32BE(payload.length, 40);
  const omitted = ((input.flags ?? 0) & FrameFlag.PAYLOAD_CRC_OMITTED) !== 0;
  header.writeUInt32BE(omitted ? 0 : (input.checksum ?? crc32(payload)), 44);
  header.writeUInt32BE(crc32(header.subarray(0, 48)), 48);
  return [header, payload];
}

/**
 * Incremental frame parser: feed it whatever the socket delivers (partial headers, several frames at once) and it
 * returns the complete frames. Payloads are copied into buffers that own their memory, so they can be transferred
 * to worker threads without detaching a shared pool.
 */
export class FrameDecoder {
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  private header: Omit<Frame, 'payload' | 'checksumOk'> | undefined;
  private payloadLength = 0;
  private payloadChecksum = 0;
  private readonly maxPayloadBytes: number;

  constructor(input: { maxPayloadBytes?: number } = {}) {
    this.maxPayloadBytes = input.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
  }

  /** Bytes received but not yet returned as frames. */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }

  push(data: Buffer): Frame[] {
    if (data.length > 0) {
      this.pending.push(data);
      this.pendingBytes += data.length;
    }
    const frames: Frame[] = [];
    for (;;) {
      if (this.header === undefined) {
        if (this.pendingBytes < FRAME_HEADER_BYTES) return frames;
        this.parseHeader(this.take(FRAME_HEADER_BYTES, false));
      }
      if (this.pendingBytes < this.payloadLength) return frames;
      const payload = this.payloadLength === 0 ? EMPTY : this.take(this.payloadLength, true);
      const header = this.header;
      this.header = undefined;
      if (header === undefined) return frames;
      const checksumOk = crcOmitted(header) || crc32(payload) === this.payloadChecksum;
      frames.push({ ...header, payload, checksumOk });
    }
  }

  private parseHeader(bytes: Buffer): void {
    if (bytes.readUInt32BE(0) !== FRAME_MAGIC) throw new DwcpProtocolError('bad frame magic');
    if (crc32(bytes.subarray(0, 48)) !== bytes.readUInt32BE(48))
      throw new DwcpProtocolError('frame header CRC mismatch');
    const version = bytes.readUInt8(4);
    if (version !== FRAME_VERSION) throw new DwcpProtocolError(`unsupported frame version ${version}`);
    const type = bytes.readUInt8(5);
    const encoding = bytes.readUInt8(6);
    if (!FRAME_TYPES.has(type)) throw new DwcpProtocolError(`unknown frame type ${type}`);
    if (!ENCODINGS.has(encoding)) throw new DwcpProtocolError(`unknown chunk encoding ${encoding}`);
    const offset = bytes.readBigUInt64BE(28);
    if (offset > BigInt(Number.MAX_SAFE_INTEGER)) throw new DwcpProtocolError('frame offset out of range');
    const length = bytes.readUInt32BE(40);
    if (length > this.maxPayloadBytes) throw new DwcpProtocolError(`frame payload of ${length} bytes is too large`);
    this.payloadLength = length;
    this.payloadChecksum = bytes.readUInt32BE(44);
    this.header = {
      type: type as FrameType,
      encoding: encoding as ChunkEncoding,
      flags: bytes.readUInt8(7),
      transferId: transferIdFromBytes(bytes, 8),
      chunkIndex: bytes.readUInt32BE(24),
      offset: Number(offset),
      rawLength: bytes.readUInt32BE(36),
    };
  }

  /** Removes `n` bytes from the front of the pending list; `own` forces a fresh, unpooled buffer. */
  private take(n: number, own: boolean): Buffer {
    const first = this.pending[0];
    if (!own && first !== undefined && first.length >= n) {
      const out = first.subarray(0, n);
      this.consume(n);
      return out;
    }
    const out = Buffer.allocUnsafeSlow(n);
    let filled = 0;
    while (filled < n) {
      const head = this.pending[0];
      if (head === undefined) throw new DwcpProtocolError('frame decoder underflow');
      const count = Math.min(head.length, n - filled);
      head.copy(out, filled, 0, count);
      filled += count;
      this.consume(count);
    }
    return out;
  }

  private consume(n: number): void {
    let left = n;
    while (left > 0) {
      const head = this.pending[0];
      if (head === undefined) return;
      if (head.length <= left) {
        this.pending.shift();
        left -= head.length;
      } else {
        this.pending[0] = head.subarray(left);
        left = 0;
      }
    }
    this.pendingBytes -= n;
  }
}

/** Control frames carry small JSON bodies; zod keeps a malformed body from reaching the state machines. */
export function jsonPayload(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

export function parseJsonPayload<T>(input: { frame: Frame; schema: z.ZodType<T> }): T {
  let value: unknown;
  try {
    value = JSON.parse(input.frame.payload.toString('utf8'));
  } catch (err) {
    throw new DwcpProtocolError(`frame type ${input.frame.type} carries invalid JSON`, err);
  }
  const parsed = input.schema.safeParse(value);
  if (!parsed.success) {
    throw new DwcpProtocolError(`frame type ${input.frame.type} has an invalid body: ${parsed.error.message}`);
  }
  return parsed.data;
}

export const ErrorBodySchema = z.object({ code: z.string(), message: z.string() });
export type ErrorBody = z.infer<typeof ErrorBodySchema>;
