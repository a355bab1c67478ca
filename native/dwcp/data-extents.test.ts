import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chunkingParams, fixedChunking } from './chunking';
import { dataExtents, dataExtentsImplementation } from './data-extents';
import { manifestEntry, scanFileSync } from './manifest';

let dir: string;
const MiB = 1024 * 1024;
/** Where the sparse test file holds data; everything else is a hole. */
const writes = [
  { at: MiB + 100, bytes: randomBytes(5000) },
  { at: 3 * MiB, bytes: randomBytes(70_000) },
];
const size = 6 * MiB + 1234;
let sparse: string;
let dense: string;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'dwcp-extents-'));
  sparse = path.join(dir, 'sparse.img');
  const file = await open(sparse, 'w');
  await file.truncate(size);
  for (const w of writes) await file.write(w.bytes, 0, w.bytes.length, w.at);
  await file.close();
  // The same content with every zero written out: no holes at all.
  const content = Buffer.alloc(size);
  for (const w of writes) w.bytes.copy(content, w.at);
  dense = path.join(dir, 'dense.img');
  await writeFile(dense, content);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('the native addon finds the data of a sparse file and leaves its holes out', (t) => {
  if (dataExtentsImplementation !== 'native') {
    t.skip('native/dwcp-native is not built here (npm install builds it when cargo is present)');
    return;
  }
  const extents = dataExtents(sparse);
  for (const w of writes) {
    assert.ok(
      extents.some((e) => e.start <= w.at && w.at + w.bytes.length <= e.end),
      `${JSON.stringify(extents)} covers the write at ${w.at}`,
    );
  }
  const dataBytes = extents.reduce((sum, e) => sum + e.end - e.start, 0);
  assert.ok(dataBytes < size / 4, `${dataBytes} of ${size} bytes counted as data`);
  assert.deepEqual(dataExtents(dense), [{ start: 0, end: size }]);
});

test('without the addon the whole file is one data extent', () => {
  assert.deepEqual(dataExtents(sparse, { fallback: true }), [{ start: 0, end: size }]);
});

test('a fixed-chunk scan that skips holes gives the manifest of reading every byte', () => {
  const chunking = fixedChunking({ bytes: 256 * 1024 });
  const skipping = scanFileSync({ path: sparse, chunking });
  const reading = scanFileSync({ path: dense, chunking });
  assert.equal(skipping.chunkCount, Math.ceil(size / (256 * 1024)));
  assert.equal(skipping.sha256, reading.sha256);
  assert.ok(skipping.entries.equals(reading.entries), 'same offsets, lengths, zero flags and hashes');
});

test('a content-defined scan that skips holes gives the manifest of reading every byte, zero blocks cut apart', () => {
  const chunking = chunkingParams({ avgBytes: 16 * 1024 });
  const skipping = scanFileSync({ path: sparse, chunking });
  const reading = scanFileSync({ path: dense, chunking });
  assert.equal(skipping.sha256, reading.sha256);
  assert.ok(skipping.entries.equals(reading.entries), 'same offsets, lengths, zero flags and hashes');
  const entries = Array.from({ length: skipping.chunkCount }, (_, index) =>
    manifestEntry({ manifest: skipping, index }),
  );
  const block = chunking.maxBytes;
  // Every aligned block of zeros is a zero chunk of its own; the data chunks cover both writes.
  for (let at = 0; at + block <= size; at += block) {
    const data = writes.some((w) => w.at < at + block && at < w.at + w.bytes.length);
    if (!data)
      assert.ok(
        entries.some((e) => e.offset === at && e.length === block && e.zero),
        `zero block at ${at}`,
      );
  }
  for (const w of writes) {
    const covering = entries.filter((e) => e.offset < w.at + w.bytes.length && w.at < e.offset + e.length);
    assert.ok(covering.length > 0 && covering.every((e) => !e.zero), `data chunks over the write at ${w.at}`);
  }
});
