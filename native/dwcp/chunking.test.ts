import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import {
  ContentChunker,
  chunkLengths,
  chunkingKey,
  chunkingParams,
  fixedChunking,
  isZeroChunk,
  looksIncompressible,
  nextChunkLength,
  type ChunkingParams,
} from './chunking';
import { noiseContent } from './testing/fixtures';

const params = chunkingParams({ avgBytes: 16 * 1024 });

function chunkHashes(data: Buffer, p: ChunkingParams = params): string[] {
  const out: string[] = [];
  let at = 0;
  for (const length of chunkLengths({ data, params: p })) {
    out.push(
      createHash('sha256')
        .update(data.subarray(at, at + length))
        .digest('hex'),
    );
    at += length;
  }
  return out;
}

function shared(a: string[], b: string[]): number {
  const set = new Set(a);
  return b.filter((h) => set.has(h)).length;
}

test('chunk sizes respect min and max and average near the target', () => {
  const data = noiseContent({ bytes: 4 * 1024 * 1024, seed: 101 });
  const lengths = chunkLengths({ data, params });
  assert.equal(
    lengths.reduce((a, b) => a + b, 0),
    data.length,
  );
  for (const length of lengths.slice(0, -1)) {
    assert.ok(length >= params.minBytes && length <= params.maxBytes, `chunk of ${length} bytes`);
  }
  const mean = data.length / lengths.length;
  assert.ok(mean > params.avgBytes * 0.7 && mean < params.avgBytes * 1.6, `mean ${mean}`);
});

test('an insertion in the middle changes only the chunks near it', () => {
  const base = noiseContent({ bytes: 4 * 1024 * 1024, seed: 102 });
  const middle = base.length / 2;
  const edited = Buffer.concat([
    base.subarray(0, middle),
    noiseContent({ bytes: 100, seed: 103 }),
    base.subarray(middle),
  ]);
  const before = chunkHashes(base);
  const after = chunkHashes(edited);
  const changed = after.length - shared(before, after);
  assert.ok(changed <= 3, `${changed} of ${after.length} chunks changed`);
  // The unchanged chunks are exactly the ones away from the edit: the prefix and the suffix of the chunk list.
  let prefix = 0;
  while (before[prefix] === after[prefix]) prefix++;
  let suffix = 0;
  while (before[before.length - 1 - suffix] === after[after.length - 1 - suffix]) suffix++;
  assert.ok(prefix + suffix >= after.length - 3, `prefix ${prefix} suffix ${suffix} of ${after.length}`);
});

test('a deletion in the middle changes only the chunks near it', () => {
  const base = noiseContent({ bytes: 4 * 1024 * 1024, seed: 104 });
  const at = 1_234_567;
  const edited = Buffer.concat([base.subarray(0, at), base.subarray(at + 5000)]);
  const before = chunkHashes(base);
  const after = chunkHashes(edited);
  assert.ok(after.length - shared(before, after) <= 4, `${after.length - shared(before, after)} chunks changed`);
});

test('many scattered small edits keep most chunks', () => {
  const base = noiseContent({ bytes: 8 * 1024 * 1024, seed: 105 });
  const edited = Buffer.from(base);
  for (let i = 0; i < 10; i++) edited.writeUInt32BE(0xdeadbeef, Math.floor((i + 0.5) * (base.length / 10)));
  const before = chunkHashes(base);
  const after = chunkHashes(edited);
  assert.ok(shared(before, after) / after.length > 0.9);
});

test('fixed-size chunking would lose everything after an insertion, CDC does not', () => {
  const base = noiseContent({ bytes: 2 * 1024 * 1024, seed: 106 });
  const edited = Buffer.concat([Buffer.from([1]), base]);
  const fixed = (d: Buffer) => {
    const out: string[] = [];
    for (let i = 0; i < d.length; i += 16384)
      out.push(
        createHash('sha256')
          .update(d.subarray(i, i + 16384))
          .digest('hex'),
      );
    return out;
  };
  assert.equal(shared(fixed(base), fixed(edited)), 0);
  assert.ok(shared(chunkHashes(base), chunkHashes(edited)) >= chunkHashes(base).length - 2);
});

test('the streaming chunker cuts exactly like the one-shot chunker, whatever the block size', () => {
  const data = noiseContent({ bytes: 3 * 1024 * 1024 + 17, seed: 107 });
  const expected = chunkLengths({ data, params });
  for (const block of [1000, 65536, 1 << 20]) {
    const chunker = new ContentChunker({ params });
    const got: number[] = [];
    for (let i = 0; i < data.length; i += block) {
      got.push(...chunker.push(data.subarray(i, i + block)).map((c) => c.length));
    }
    got.push(...chunker.finish().map((c) => c.length));
    assert.deepEqual(got, expected, `block ${block}`);
  }
});

test('a chunk without a cut point waits for more data unless the input is final', () => {
  const data = noiseContent({ bytes: params.minBytes + 10, seed: 108 });
  assert.equal(nextChunkLength({ data, start: 0, end: data.length, params, final: false }), 0);
  assert.equal(nextChunkLength({ data, start: 0, end: data.length, params, final: true }), data.length);
});

test('zero chunks are detected', () => {
  assert.equal(isZeroChunk(Buffer.alloc(200_000)), true);
  const almost = Buffer.alloc(200_000);
  almost[199_999] = 1;
  assert.equal(isZeroChunk(almost), false);
  // Runs of zeros are cut at max size, so a sparse region becomes whole zero chunks.
  const lengths = chunkLengths({ data: Buffer.alloc(1 << 20), params });
  assert.ok(lengths.every((l) => l === params.maxBytes));
});

test('random data is incompressible, text and zeros-with-noise are not', () => {
  assert.equal(looksIncompressible({ data: noiseContent({ bytes: 65536, seed: 109 }) }), true);
  const text = Buffer.from('the quick brown fox jumps over the lazy dog '.repeat(2000));
  assert.equal(looksIncompressible({ data: text }), false);
  const sparse = Buffer.alloc(65536);
  for (let i = 0; i < sparse.length; i += 97) sparse[i] = i & 0xff;
  assert.equal(looksIncompressible({ data: sparse }), false);
});

test('invalid parameters are rejected', () => {
  assert.throws(() => chunkingParams({ avgBytes: 1000 }), RangeError);
  assert.throws(() => chunkingParams({ avgBytes: 65536, maxBytes: 64 * 1024 * 1024 }), RangeError);
});

test('fixed chunking cuts equal extents whatever the content, and needs more data before a short tail', () => {
  const fixed = fixedChunking({ bytes: 8192 });
  const data = noiseContent({ bytes: 3 * 8192 + 100, seed: 5 });
  assert.deepEqual(chunkLengths({ data, params: fixed }), [8192, 8192, 8192, 100]);
  assert.equal(nextChunkLength({ data, start: 3 * 8192, end: data.length, params: fixed, final: false }), 0);
  assert.equal(chunkingKey(fixed), 'fixed/8192');
  assert.notEqual(chunkingKey(fixed), chunkingKey(chunkingParams({ avgBytes: 8192 })));
  // What a receiver rebuilds from the HELLO's description is the same chunking.
  assert.equal(chunkingKey(chunkingParams({ ...fixed })), 'fixed/8192');
  assert.throws(() => fixedChunking({ bytes: 5000 }), RangeError);
  assert.throws(() => fixedChunking({ bytes: 8 * 1024 * 1024 }), RangeError);
});
