import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import { hashChunk, localChunkHashes } from './chunk-hash';
import { chunkingParams } from './chunking';
import { COMPRESSION_OFF, chooseCompressionLevel, decodeChunk, encodeChunk } from './encoding';
import { DwcpChecksumError, DwcpIoError } from './errors';
import { ChunkEncoding } from './framing';
import { MANIFEST_ENTRY_BYTES, manifestEntry } from './manifest';
import { DwcpWorkerPool, hashFileInPool, measureCompression, sampleFileData } from './worker-pool';
import { fileVersion } from './file-version';
import { runWorkerTask, type VerifiedCopy } from './worker-tasks';

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

test('the level rule counts the hashing every byte costs: a CPU-driven fast link gets no compression', () => {
  // 400 MB/s of link with two workers at 400 MB/s of zstd: level 1 looks like a win when compression is the only CPU
  // cost, and is not once 300 MB/s of chunking + sha256 per worker is paid on the same cores.
  const fast = { bandwidthMbps: 3200, cpuMBpsAtLevel1: 400, workers: 2, ratioAtLevel1: 0.45 };
  assert.equal(chooseCompressionLevel(fast).level, 1);
  const withHashing = chooseCompressionLevel({ ...fast, hashMBps: 300 });
  assert.equal(withHashing.level, COMPRESSION_OFF);
  assert.ok(Math.abs(withHashing.expectedMBps - 400) < 1e-9, 'off delivers the link rate while hashing keeps up');
  // Hashing slower than the link caps the uncompressed rate at W * H.
  assert.ok(Math.abs(chooseCompressionLevel({ ...fast, hashMBps: 100 }).expectedMBps - 200) < 1e-9);
  // A 1 Gbit/s link still gains from compression with the same CPU.
  assert.ok(chooseCompressionLevel({ ...fast, bandwidthMbps: 1000, hashMBps: 300 }).level >= 1);
});

for (const hash of localChunkHashes) {
  test(`the worker pool scans, encodes, verifies and hashes off the main thread (${hash} chunk hashes)`, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'dwcp-encoding-'));
    const pool = new DwcpWorkerPool({ size: 2 });
    try {
      const file = path.join(dir, 'data.bin');
      const content = Buffer.concat([text, randomBytes(200_000), Buffer.alloc(300_000), text]);
      await writeFile(file, content);
      const chunking = chunkingParams({ avgBytes: 16 * 1024, hash });
      const manifest = await pool.run({ kind: 'scan', path: file, chunking });
      assert.equal(manifest.size, content.length);
      const firstEntry = manifestEntry({ manifest, index: 0 });
      const firstChunk = content.subarray(0, firstEntry.length);
      assert.deepEqual(firstEntry.hash, hashChunk(firstChunk, hash), `entries carry the ${hash} of their chunk`);
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
          const expected = { digest: Buffer.from(entry.hash), hash };
          const decoded = await pool.run({ kind: 'decode', ...encoded, expected });
          assert.ok(decoded.data !== undefined, `chunk ${index} verifies`);
          return { entry, encoded, decoded: decoded.data };
        }),
      );
      assert.deepEqual(Buffer.concat(results.map((r) => r.decoded)), content);
      assert.ok(results.some((r) => r.encoded.encoding === ChunkEncoding.ZERO) && results.some((r) => r.entry.zero));
      // Buffers handed to the pool move to the worker, so the wrong-hash check encodes its chunk afresh.
      const again = await pool.run({ kind: 'encode', data: Buffer.from(text), level: 3 });
      const wrong = await pool.run({ kind: 'decode', ...again, expected: { digest: Buffer.alloc(32), hash } });
      assert.equal(wrong.data, undefined);
      const { sha256 } = await pool.run({ kind: 'hashFile', path: file });
      assert.equal(sha256, manifest.sha256);
      // Checking a file against its manifest, chunk by chunk: a flipped byte in a data chunk and a byte where a
      // zero chunk should be are both found.
      const entries = () => Buffer.from(manifest.entries);
      const checked = await pool.run({ kind: 'checkManifest', path: file, entries: entries(), hash });
      assert.equal(checked.firstMismatch, undefined);
      const flipped = path.join(dir, 'flipped.bin');
      const zeroAt = results.find((r) => r.entry.zero)!.entry;
      for (const [at, index] of [
        [results[1]!.entry.offset + 7, 1],
        [zeroAt.offset + 3, zeroAt.index],
      ] as const) {
        const damaged = Buffer.from(content);
        damaged[at]! ^= 0x01;
        await writeFile(flipped, damaged);
        const check = await pool.run({ kind: 'checkManifest', path: flipped, entries: entries(), hash });
        assert.equal(check.firstMismatch, index);
      }
      // Verified writes: a chunk lands only when it matches its hash, and only in a file that exists.
      const copy = path.join(dir, 'copy.bin');
      await writeFile(copy, Buffer.alloc(content.length));
      const copies: VerifiedCopy[] = [];
      for (const { entry } of results) {
        const digest = Buffer.from(entry.hash);
        const source = { path: file, offset: entry.offset, length: entry.length };
        if (entry.index % 2 === 0) {
          // The first encoding's payload moved to a worker with the decode above; encode afresh.
          const encoded = await pool.run({ kind: 'encodeFile', ...source, level: 3 });
          const target = { path: copy, offset: entry.offset };
          const written = await pool.run({ kind: 'decodeInto', ...encoded, expected: { digest, hash }, target });
          assert.equal(written.written, true);
        } else {
          copies.push({ ...source, expectedHash: digest, targetOffset: entry.offset });
          const read = await pool.run({ kind: 'readVerified', ...source, expected: { digest, hash } });
          assert.ok(read.data !== undefined && read.data.length === entry.length);
        }
      }
      const batch = await pool.run({ kind: 'copyVerified', copies, targetPath: copy, hash });
      assert.deepEqual([...batch.written], Array<number>(copies.length).fill(1));
      assert.deepEqual(await readFile(copy), content);
      // A source that shifted, is gone, or ends early is a miss for that copy alone; the others still land.
      const first = results[0]!.entry;
      const second = results[1]!.entry;
      const wanted = { length: first.length, expectedHash: Buffer.from(first.hash), targetOffset: first.offset };
      await writeFile(copy, Buffer.alloc(content.length));
      const mixed = await pool.run({
        kind: 'copyVerified',
        targetPath: copy,
        hash,
        copies: [
          { ...wanted, path: file, offset: first.offset + 1 },
          { ...wanted, path: path.join(dir, 'no-such-base.bin'), offset: first.offset },
          { ...wanted, path: file, offset: content.length - 1 },
          {
            path: file,
            offset: second.offset,
            length: second.length,
            expectedHash: Buffer.from(second.hash),
            targetOffset: second.offset,
          },
        ],
      });
      assert.deepEqual([...mixed.written], [0, 0, 0, 1]);
      const landed = await readFile(copy);
      assert.ok(
        landed.subarray(0, first.length).equals(Buffer.alloc(first.length)),
        'a mismatching chunk is not written',
      );
      assert.ok(
        landed
          .subarray(second.offset, second.offset + second.length)
          .equals(content.subarray(second.offset, second.offset + second.length)),
      );
      await assert.rejects(
        pool.run({
          kind: 'copyVerified',
          targetPath: path.join(dir, 'gone.bin'),
          hash,
          copies: [{ ...wanted, path: file, offset: first.offset }],
        }),
        DwcpIoError,
      );
      const indexed = await pool.run({ kind: 'index', path: file, chunking });
      assert.deepEqual(indexed.entries, manifest.entries);
      const speed = await measureCompression({ pool, sample: text, durationMs: 50 });
      assert.ok(speed.mbps > 1 && speed.ratio < 0.2 && speed.hashMBps > 1);
      // The streamed scan hands out parts in order; together they are the one-shot manifest.
      const parts: { first: number; entries: Buffer }[] = [];
      const big = path.join(dir, 'big.bin');
      const bigContent = Buffer.concat([randomBytes(9 * 1024 * 1024), Buffer.alloc(4 * 1024 * 1024), text]);
      await writeFile(big, bigContent);
      const bigChunking = chunkingParams({ avgBytes: 64 * 1024, hash });
      const summary = await pool.runWithParts({ kind: 'scanParts', path: big, chunking: bigChunking }, (part) =>
        parts.push(part),
      );
      const oneShot = await pool.run({ kind: 'scan', path: big, chunking: bigChunking });
      assert.ok(parts.length >= 2, `${parts.length} parts`);
      let next = 0;
      for (const part of parts) {
        assert.equal(part.first, next);
        next += part.entries.length / MANIFEST_ENTRY_BYTES;
      }
      assert.equal(summary.chunkCount, next);
      assert.deepEqual(Buffer.concat(parts.map((p) => p.entries)), oneShot.entries);
      assert.equal(summary.sha256, createHash('sha256').update(bigContent).digest('hex'));
      await assert.rejects(pool.run({ kind: 'hashFile', path: path.join(dir, 'missing') }), DwcpIoError);
    } finally {
      await pool.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
}

test('the calibration sample takes data blocks and skips zero ones; a file of zeros has none', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'dwcp-sample-'));
  try {
    const MiB = 1024 * 1024;
    const first = randomBytes(MiB);
    const third = randomBytes(MiB);
    const image = Buffer.alloc(48 * MiB);
    first.copy(image, 0);
    third.copy(image, 32 * MiB);
    const file = path.join(dir, 'image.raw');
    await writeFile(file, image);
    // Blocks are read at 0, 16 and 32 MiB; the one at 16 MiB is all zeros.
    assert.deepEqual(await sampleFileData(file), Buffer.concat([first, third]));
    const zeros = path.join(dir, 'zeros.raw');
    await writeFile(zeros, Buffer.alloc(4 * MiB));
    assert.equal(await sampleFileData(zeros), undefined);

    const pool = new DwcpWorkerPool({ size: 1 });
    try {
      assert.equal(await hashFileInPool({ pool, path: file }), createHash('sha256').update(image).digest('hex'));
    } finally {
      await pool.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a copy from a source still at the version this process hashed it in skips the hash; any other version is hashed', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'dwcp-vouched-'));
  try {
    const source = path.join(dir, 'base.img');
    const target = path.join(dir, 'target.img');
    const content = randomBytes(3 * 65536);
    await writeFile(source, content);
    await writeFile(target, Buffer.alloc(content.length));
    const version = fileVersion(await stat(source));
    // Every expected hash is wrong, so a copy lands only where the version vouched for the content.
    const copy = (i: number, hashedVersion?: VerifiedCopy['hashedVersion']): VerifiedCopy => ({
      path: source,
      offset: i * 65536,
      length: 65536,
      expectedHash: Buffer.alloc(32),
      targetOffset: i * 65536,
      ...(hashedVersion && { hashedVersion }),
    });
    const copies = [
      copy(0, version),
      copy(1),
      // As after utimes set mtime back: ctime still moved. And a file replaced by another inode.
      copy(2, { ...version, ctimeMs: version.ctimeMs - 1 }),
      copy(2, { ...version, ino: version.ino + 1 }),
    ];
    const task = { kind: 'copyVerified', copies, targetPath: target, hash: 'sha256' } as const;
    const { written } = runWorkerTask(task) as { written: Uint8Array };
    assert.deepEqual([...written], [1, 0, 0, 0]);
    const landed = await readFile(target);
    assert.ok(landed.subarray(0, 65536).equals(content.subarray(0, 65536)), 'the vouched copy holds the source');
    assert.ok(landed.subarray(65536).equals(Buffer.alloc(2 * 65536)), 'nothing else was written');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
