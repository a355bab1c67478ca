import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { z } from 'zod';
import { DwcpProtocolError } from './errors';
import {
  ChunkEncoding,
  FRAME_HEADER_BYTES,
  FrameDecoder,
  FrameFlag,
  FrameType,
  crcOmitted,
  encodeFrame,
  jsonPayload,
  parseJsonPayload,
} from './framing';

const transferId = randomUUID();

function frameBytes(...parts: (readonly [Buffer, Buffer])[]): Buffer {
  return Buffer.concat(parts.flatMap((p) => [...p]));
}

test('a frame round-trips every header field', () => {
  const payload = randomBytes(1000);
  const decoder = new FrameDecoder();
  const [frame] = decoder.push(
    frameBytes(
      encodeFrame({
        type: FrameType.CHUNK,
        transferId,
        encoding: ChunkEncoding.ZSTD,
        flags: 0x81,
        chunkIndex: 123456,
        offset: 2 ** 40 + 7,
        rawLength: 4096,
        payload,
      }),
    ),
  );
  assert.ok(frame);
  assert.equal(frame.type, FrameType.CHUNK);
  assert.equal(frame.encoding, ChunkEncoding.ZSTD);
  assert.equal(frame.flags, 0x81);
  assert.equal(frame.transferId, transferId);
  assert.equal(frame.chunkIndex, 123456);
  assert.equal(frame.offset, 2 ** 40 + 7);
  assert.equal(frame.rawLength, 4096);
  assert.deepEqual(frame.payload, payload);
  assert.equal(frame.checksumOk, true);
  assert.equal(decoder.bufferedBytes, 0);
});

test('the decoder reassembles frames split at every possible byte boundary', () => {
  const frames = [
    encodeFrame({ type: FrameType.HELLO, transferId, payload: jsonPayload({ hello: 1 }) }),
    encodeFrame({ type: FrameType.ZERO, transferId, chunkIndex: 1, rawLength: 65536 }),
    encodeFrame({ type: FrameType.CHUNK, transferId, chunkIndex: 2, payload: randomBytes(300) }),
  ];
  const wire = frameBytes(...frames);
  const whole = new FrameDecoder().push(wire);
  assert.deepEqual(
    whole.map((f) => [f.type, f.chunkIndex, f.payload.length, f.checksumOk]),
    [
      [FrameType.HELLO, 0, frames[0]![1].length, true],
      [FrameType.ZERO, 1, 0, true],
      [FrameType.CHUNK, 2, 300, true],
    ],
  );
  // Every split point, including the ones that end a push exactly at, or one byte short of, a header or a frame
  // end: those are where an off-by-one in the decoder's buffer handling shows.
  for (let split = 1; split < wire.length; split++) {
    const decoder = new FrameDecoder();
    const out = [...decoder.push(wire.subarray(0, split)), ...decoder.push(wire.subarray(split))];
    assert.deepEqual(out, whole, `split at byte ${split} of ${wire.length}`);
    assert.equal(decoder.bufferedBytes, 0, `split at byte ${split}`);
  }
});

test('the decoder handles one byte at a time', () => {
  const wire = frameBytes(
    encodeFrame({ type: FrameType.ACK, transferId, chunkIndex: 9 }),
    encodeFrame({ type: FrameType.CHUNK, transferId, chunkIndex: 10, payload: randomBytes(64) }),
  );
  const decoder = new FrameDecoder();
  const out = [];
  for (const byte of wire) out.push(...decoder.push(Buffer.from([byte])));
  assert.deepEqual(
    out.map((f) => f.chunkIndex),
    [9, 10],
  );
});

test('a flipped payload byte is reported as a checksum failure without losing frame sync', () => {
  const wire = frameBytes(
    encodeFrame({ type: FrameType.CHUNK, transferId, chunkIndex: 1, payload: randomBytes(500) }),
    encodeFrame({ type: FrameType.CHUNK, transferId, chunkIndex: 2, payload: randomBytes(500) }),
  );
  wire[FRAME_HEADER_BYTES + 100]! ^= 0x40;
  const frames = new FrameDecoder().push(wire);
  assert.deepEqual(
    frames.map((f) => [f.chunkIndex, f.checksumOk]),
    [
      [1, false],
      [2, true],
    ],
  );
});

test('a corrupted header is a protocol error', () => {
  const wire = frameBytes(encodeFrame({ type: FrameType.CHUNK, transferId, payload: randomBytes(10) }));
  wire[40]! ^= 1;
  assert.throws(() => new FrameDecoder().push(wire), DwcpProtocolError);
  const badMagic = frameBytes(encodeFrame({ type: FrameType.CHUNK, transferId }));
  badMagic[0] = 0;
  assert.throws(() => new FrameDecoder().push(badMagic), /magic/);
});

test('an oversized payload is refused before it is buffered', () => {
  const [header] = encodeFrame({ type: FrameType.CHUNK, transferId, payload: Buffer.alloc(2048) });
  assert.throws(() => new FrameDecoder({ maxPayloadBytes: 1024 }).push(header), /too large/);
});

test('transfer ids must be UUIDs', () => {
  assert.throws(() => encodeFrame({ type: FrameType.HELLO, transferId: 'not-a-uuid' }), DwcpProtocolError);
});

test('JSON bodies are validated against their schema', () => {
  const schema = z.object({ n: z.number() });
  const [frame] = new FrameDecoder().push(
    frameBytes(encodeFrame({ type: FrameType.HELLO, transferId, payload: jsonPayload({ n: 'x' }) })),
  );
  assert.throws(() => parseJsonPayload({ frame: frame!, schema }), DwcpProtocolError);
  const [good] = new FrameDecoder().push(
    frameBytes(encodeFrame({ type: FrameType.HELLO, transferId, payload: jsonPayload({ n: 3 }) })),
  );
  assert.deepEqual(parseJsonPayload({ frame: good!, schema }), { n: 3 });
});

test('a frame sent without its payload CRC says so, and a damaged payload then passes the frame layer', () => {
  const payload = randomBytes(4096);
  const [header, body] = encodeFrame({
    type: FrameType.CHUNK,
    transferId,
    payload,
    flags: FrameFlag.PAYLOAD_CRC_OMITTED,
  });
  assert.equal(header.readUInt32BE(44), 0);
  const damaged = Buffer.from(body);
  damaged[100]! ^= 0xff;
  const [frame] = new FrameDecoder().push(Buffer.concat([header, damaged]));
  assert.ok(frame !== undefined && crcOmitted(frame));
  // The frame layer cannot tell: only a receiver that checks the content some other way may accept such frames.
  assert.equal(frame.checksumOk, true);
  const [checked] = new FrameDecoder().push(frameBytes(encodeFrame({ type: FrameType.CHUNK, transferId, payload })));
  assert.ok(checked !== undefined && !crcOmitted(checked));
});
