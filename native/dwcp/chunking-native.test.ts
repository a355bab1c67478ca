import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import {
  ContentChunker,
  blockChunkLengths,
  chunkLengths,
  chunkingImplementation,
  chunkingParams,
  fixedChunking,
  nextChunkLength,
  type ChunkingParams,
} from './chunking';
import { dwcpNative } from './native-addon';
import { noiseContent } from './testing/fixtures';

/**
 * The addon must cut exactly where the TypeScript does: cut points define the content addresses hosts share. Every
 * case runs the TypeScript path against the nextChunkLength loop always, and the addon against it when it is built.
 */
const SKIP_NATIVE = 'native/dwcp-native is not built here (npm install builds it when cargo is present)';

const avg16k = chunkingParams({ avgBytes: 16 * 1024 });
/** The extremes chunkingParams accepts, and fixed extents at both ends of their range. */
const EXTREMES: { name: string; params: ChunkingParams }[] = [
  { name: 'avg 16 KiB', params: avg16k },
  {
    name: 'smallest (64/256/257, normalization 0)',
    params: chunkingParams({ avgBytes: 256, minBytes: 64, maxBytes: 257, normalization: 0 }),
  },
  {
    name: 'min just under avg, max 4 MiB, normalization 4',
    params: chunkingParams({ avgBytes: 256, minBytes: 255, maxBytes: 4 * 1024 * 1024, normalization: 4 }),
  },
  {
    name: 'largest avg (2 MiB, min 64, normalization 4)',
    params: chunkingParams({ avgBytes: 2 * 1024 * 1024, minBytes: 64, maxBytes: 4 * 1024 * 1024, normalization: 4 }),
  },
  {
    name: 'avg 2 MiB squeezed (min avg-1, max avg+1)',
    params: chunkingParams({
      avgBytes: 2 * 1024 * 1024,
      minBytes: 2 * 1024 * 1024 - 1,
      maxBytes: 2 * 1024 * 1024 + 1,
      normalization: 0,
    }),
  },
  { name: 'fixed 4 KiB', params: fixedChunking({ bytes: 4096 }) },
  { name: 'fixed 4 MiB', params: fixedChunking({ bytes: 4 * 1024 * 1024 }) },
];

/** The definition: nextChunkLength from `start` until it answers 0 or the data ends. */
function referenceLengths(data: Uint8Array, params: ChunkingParams, final: boolean, start = 0): number[] {
  const lengths: number[] = [];
  for (let at = start; ;) {
    const length = nextChunkLength({ data, start: at, end: data.length, params, final });
    if (length === 0) return lengths;
    lengths.push(length);
    at += length;
  }
}

/** Random data with zero runs of awkward lengths around the chunk sizes, and single bytes inside them. */
function mixedContent(params: ChunkingParams, seed: number): Buffer {
  const { minBytes, avgBytes, maxBytes } = params;
  const parts: Buffer[] = [];
  const zeroRuns = [
    1,
    31,
    32,
    33,
    minBytes - 1,
    minBytes,
    minBytes + 1,
    avgBytes,
    maxBytes - 1,
    maxBytes,
    maxBytes + 1,
  ];
  zeroRuns.forEach((run, i) => {
    parts.push(noiseContent({ bytes: 1 + ((i * 7919) % (2 * avgBytes)), seed: seed + i }), Buffer.alloc(run));
  });
  const dotted = Buffer.alloc(3 * maxBytes);
  dotted[maxBytes + 17] = 1;
  parts.push(dotted, Buffer.alloc(2 * maxBytes + 5));
  return Buffer.concat(parts);
}

function sizesAround(params: ChunkingParams): number[] {
  const { minBytes, avgBytes, maxBytes } = params;
  return [0, 1, 63, 64, 65, minBytes - 1, minBytes, minBytes + 1, avgBytes, maxBytes, maxBytes + 1, 2 * maxBytes + 1];
}

/** Both finals and a few start offsets of one input: TypeScript always, the addon when built. */
function compare(t: TestContext, data: Uint8Array, params: ChunkingParams, label: string, native: boolean): void {
  for (const final of [true, false]) {
    for (const start of [0, 1, Math.floor(data.length / 3)]) {
      if (start > data.length) continue;
      const expected = referenceLengths(data, params, final, start);
      const input = { data, start, end: data.length, params, final };
      const got = native ? blockChunkLengths(input) : blockChunkLengths({ ...input, fallback: true });
      assert.deepEqual(Array.from(got), expected, `${label}, start ${start}, final ${final}`);
    }
  }
  t.diagnostic(`${label}: ${data.length} bytes`);
}

function nativeOrSkip(t: TestContext): boolean {
  if (chunkingImplementation === 'native') return true;
  t.skip(SKIP_NATIVE);
  return false;
}

for (const native of [false, true]) {
  const who = native ? 'the addon' : 'the TypeScript block cutter';

  test(`${who} cuts random data like nextChunkLength, for every chunking`, (t) => {
    if (native && !nativeOrSkip(t)) return;
    for (const { name, params } of EXTREMES) {
      const bytes = Math.max(1 << 20, 3 * params.maxBytes + 12345);
      compare(t, noiseContent({ bytes, seed: 11 }), params, name, native);
    }
  });

  test(`${who} cuts long zero runs like nextChunkLength, for every chunking`, (t) => {
    if (native && !nativeOrSkip(t)) return;
    for (const [i, { name, params }] of EXTREMES.entries()) {
      compare(t, mixedContent(params, 20 + i * 100), params, name, native);
      compare(t, Buffer.alloc(3 * params.maxBytes + 7), params, `${name}, all zeros`, native);
    }
  });

  test(`${who} cuts tiny inputs and the boundary sizes like nextChunkLength`, (t) => {
    if (native && !nativeOrSkip(t)) return;
    for (const { name, params } of EXTREMES) {
      for (const size of sizesAround(params)) {
        compare(t, noiseContent({ bytes: size, seed: size + 3 }), params, `${name}, ${size} random bytes`, native);
        compare(t, Buffer.alloc(size), params, `${name}, ${size} zeros`, native);
      }
    }
  });

  test(`${who} cuts a view into a larger buffer by the view's bytes only`, (t) => {
    if (native && !nativeOrSkip(t)) return;
    const backing = noiseContent({ bytes: 1 << 20, seed: 31 });
    const view = backing.subarray(4097, backing.length - 999);
    compare(t, view, avg16k, 'subarray', native);
  });

  test(`${who} streams through ContentChunker with odd block sizes as the one-shot TypeScript cuts`, (t) => {
    if (native && !nativeOrSkip(t)) return;
    for (const { name, params } of EXTREMES) {
      const data = mixedContent(params, 40);
      const expected = chunkLengths({ data, params, fallback: true });
      for (const block of [1, 4093, 65537, (1 << 20) + 3, params.maxBytes + 1]) {
        // Each push copies and re-cuts the uncut tail, so many pushes per chunk are quadratic in maxBytes: small
        // blocks only where chunks are small.
        if (params.maxBytes > 4096 && block * 32 < params.maxBytes) continue;
        const chunker = new ContentChunker({ params, fallback: !native });
        const got: number[] = [];
        for (let i = 0; i < data.length; i += block) {
          for (const chunk of chunker.push(data.subarray(i, i + block))) got.push(chunk.length);
        }
        for (const chunk of chunker.finish()) got.push(chunk.length);
        assert.deepEqual(got, expected, `${name}, blocks of ${block}`);
      }
    }
  });
}

test('the addon refuses a second, different gear table', (t) => {
  if (!nativeOrSkip(t)) return;
  assert.throws(() => dwcpNative?.setGearTable?.(new Int32Array(256)), /different gear table/);
});
