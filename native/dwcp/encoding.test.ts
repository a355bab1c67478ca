import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import { chunkingParams } from './chunking';
import {
  COMPRESSION_OFF,
  DwcpWorkerPool,
  chooseCompressionLevel,
  decodeChunk,
  encodeChunk,
  measureCompression,
} from './encoding';
import { DwcpChecksumError, DwcpIoError } from './errors';
import { ChunkEncoding } from './framing';
import { manifestEntry } from './manifest';

const text = Buffer.from('a fairly compressible line of text, repeated\n'.repeat(1500));

test('zero chunks carry no payload', () => {
  const encoded = encodeChunk({ data: Buffer.alloc(65536), level: 3 });
  assert.equal(encoded.encoding, ChunkEncoding.ZERO);
  assert.equal(encoded.payload.length, 0);
  assert.deepEqual(decodeChunk(encoded), Buffer.alloc(65536));
});

test('incompressible chunks go raw, compressible ones through zstd', () => {
  const noise = randomBytes(65536);
  const raw = encodeChunk({ data: noise, level: 3 });
  assert.equal(raw.encoding, ChunkEncoding.RAW);
  assert.equal(raw.checksum, crc32(noise));
  const packed = encodeChunk({ data: text, level: 3 });
  assert.equal(packed.encoding, ChunkEncoding.ZSTD);
  assert.ok(packed.payload.length < text.length / 10);
  assert.deepEqual(decodeChunk(packed), text);
});

test('level 0 turns compression off', () => {
  assert.equal(encodeChunk({ data: text, level: COMPRESSION_OFF }).encoding, ChunkEncoding.RAW);
});

test('a damaged zstd payload is a checksum error, not garbage', () => {
  const packed = encodeChunk({ data: text, level: 3 });
  const damaged = Buffer.from(packed.payload);
  damaged[damaged.length - 6]! ^= 0xff;
  assert.throws(() => decodeChunk({ ...packed, payload: damaged }), DwcpChecksumError);
});

test('the level rule: off when the link outruns the CPU, strong when the link is slow', () => {
  assert.equal(chooseCompressionLevel({ bandwidthMbps: 25_000, cpuMBpsAtLevel1: 400, workers: 2 }).level, 0);
  assert.equal(chooseCompressionLevel({ bandwidthMbps: 5_000, cpuMBpsAtLevel1: 500, workers: 4 }).level, 1);
  // Past level 6 the ratio gains are under the 5% a stronger level must earn.
  assert.equal(chooseCompressionLevel({ bandwidthMbps: 100, cpuMBpsAtLevel1: 400, workers: 2 }).level, 6);
  assert.equal(chooseCompressionLevel({ bandwidthMbps: 100, cpuMBpsAtLevel1: 400, workers: 2, maxLevel: 3 }).level, 3);
  // A slow CPU on a slow link: anything above level 1 would make the CPU the bottleneck.
  assert.equal(chooseCompressionLevel({ bandwidthMbps: 100, cpuMBpsAtLevel1: 20, workers: 1 }).level, 1);
  const mid = chooseCompressionLevel({ bandwidthMbps: 1000, cpuMBpsAtLevel1: 300, workers: 2 });
  assert.ok(mid.level >= 1 && mid.level <= 6, `level ${mid.level}`);
  assert.ok(mid.expectedMBps > 125, 'compression must beat the bare link to be chosen');
});

test('the worker pool scans, encodes, verifies and hashes off the main thread', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'dwcp-encoding-'));
  const pool = new DwcpWorkerPool({ size: 2 });
  try {
    const file = path.join(dir, 'data.bin');
    const content = Buffer.concat([text, randomBytes(200_000), Buffer.alloc(300_000), text]);
    await writeFile(file, content);
    const manifest = await pool.run({ kind: 'scan', path: file, chunking: chunkingParams({ avgBytes: 16 * 1024 }) });
    assert.equal(manifest.size, content.length);
    const results = await Promise.all(
      Array.from({ length: manifest.chunkCount }, async (_, index) => {
        const entry = manifestEntry({ manifest, index });
        const encoded = await pool.run({
          kind: 'encodeFile',
          path: file,
          offset: entry.offset,
          length: entry.length,
          level: 3,
        });
        const decoded = await pool.run({ kind: 'decode', ...encoded, expectedHash: Buffer.from(entry.hash) });
        assert.ok(decoded.data !== undefined, `chunk ${index} verifies`);
        return { entry, encoded, decoded: decoded.data };
      }),
    );
    assert.deepEqual(Buffer.concat(results.map((r) => r.decoded)), content);
    assert.ok(results.some((r) => r.encoded.encoding === ChunkEncoding.ZERO) && results.some((r) => r.entry.zero));
    // Buffers handed to the pool move to the worker, so the wrong-hash check encodes its chunk afresh.
    const again = await pool.run({ kind: 'encode', data: Buffer.from(text), level: 3 });
    const wrong = await pool.run({ kind: 'decode', ...again, expectedHash: Buffer.alloc(32) });
    assert.equal(wrong.data, undefined);
    const { sha256 } = await pool.run({ kind: 'hashFile', path: file });
    assert.equal(sha256, manifest.sha256);
    const speed = await measureCompression({ pool, sample: text, durationMs: 50 });
    assert.ok(speed.mbps > 1 && speed.ratio < 0.2);
    await assert.rejects(pool.run({ kind: 'hashFile', path: path.join(dir, 'missing') }), DwcpIoError);
  } finally {
    await pool.close();
    await rm(dir, { recursive: true, force: true });
  }
});
