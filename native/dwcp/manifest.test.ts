import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DwcpProtocolError } from './errors';
import { MANIFEST_ENTRY_BYTES, ManifestBuilder, manifestEntry } from './manifest';

function entries(first: number, count: number): Buffer {
  const out = Buffer.alloc(count * MANIFEST_ENTRY_BYTES);
  for (let i = 0; i < count; i++) {
    out.writeBigUInt64BE(BigInt((first + i) * 100), i * MANIFEST_ENTRY_BYTES);
    out.writeUInt32BE(100, i * MANIFEST_ENTRY_BYTES + 8);
    out.fill(first + i, i * MANIFEST_ENTRY_BYTES + 13, (i + 1) * MANIFEST_ENTRY_BYTES);
  }
  return out;
}

test('a manifest built from parts equals the concatenated parts, across growth', () => {
  const builder = new ManifestBuilder();
  const parts = [entries(0, 3), entries(3, 100), entries(103, 1)];
  let first = 0;
  for (const part of parts) {
    builder.put(first, part);
    first += part.length / MANIFEST_ENTRY_BYTES;
  }
  assert.equal(builder.chunkCount, 104);
  assert.deepEqual(builder.entries, Buffer.concat(parts));
  assert.equal(manifestEntry({ manifest: builder, index: 103 }).offset, 10_300);
});

test('a part written again overwrites in place, and truncate forgets the tail', () => {
  const builder = new ManifestBuilder();
  builder.put(0, entries(0, 10));
  const changed = entries(4, 2);
  changed[13] = 0xee;
  builder.put(4, changed);
  assert.equal(builder.chunkCount, 10);
  assert.equal(manifestEntry({ manifest: builder, index: 4 }).hash[0], 0xee);
  assert.equal(manifestEntry({ manifest: builder, index: 6 }).hash[0], 6);
  builder.truncate(5);
  assert.equal(builder.chunkCount, 5);
  assert.throws(() => manifestEntry({ manifest: builder, index: 5 }), DwcpProtocolError);
  assert.throws(() => builder.put(5, Buffer.alloc(MANIFEST_ENTRY_BYTES + 1)), DwcpProtocolError);
});
