import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { hashChunk, localChunkHashes, pickChunkHash } from './chunk-hash';
import { ChunkIndex } from './chunk-index';
import { chunkHashOf, chunkingKey, chunkingParams, fixedChunking, withChunkHash } from './chunking';
import { manifestEntry } from './manifest';
import { DwcpReceiver } from './receiver';
import { sendFile } from './send-file';
import {
  closeLoopbackReceiver,
  noiseContent,
  sha256File,
  startLoopbackReceiver,
  writeTestFile,
  type LoopbackReceiver,
} from './testing/fixtures';

const withBlake3 = localChunkHashes.includes('blake3');
const needsBlake3 = { skip: withBlake3 ? false : 'dwcp-native is not built, so this process has no BLAKE3' };
const chunking = chunkingParams({ avgBytes: 16 * 1024 });

test('chunk hashes match their published test vectors', () => {
  const abc = Buffer.from('abc');
  assert.equal(
    hashChunk(abc, 'sha256').toString('hex'),
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
  );
  if (withBlake3) {
    assert.equal(
      hashChunk(abc, 'blake3').toString('hex'),
      '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85',
    );
  } else {
    assert.throws(() => hashChunk(abc, 'blake3'), /dwcp-native/);
  }
});

test('the receiver picks the first offered hash it can check, and sha256 from a sender that offers none', () => {
  assert.equal(pickChunkHash({ offered: ['blake3', 'sha256'], supported: ['blake3', 'sha256'] }), 'blake3');
  assert.equal(pickChunkHash({ offered: ['sha256', 'blake3'], supported: ['blake3', 'sha256'] }), 'sha256');
  assert.equal(pickChunkHash({ offered: ['blake3', 'sha256'], supported: ['sha256'] }), 'sha256');
  assert.equal(pickChunkHash({ offered: ['blake3'], supported: ['sha256'] }), 'sha256');
  assert.equal(pickChunkHash({ offered: undefined, supported: ['blake3', 'sha256'] }), 'sha256');
});

test('a chunking key names BLAKE3 and leaves sha256 implicit, so keys from before BLAKE3 still match', () => {
  assert.equal(chunkingKey(chunking), '4096/16384/65536/2');
  assert.equal(chunkingKey(withChunkHash(chunking, 'blake3')), '4096/16384/65536/2/blake3');
  assert.equal(chunkingKey(withChunkHash(fixedChunking({ bytes: 65536 }), 'blake3')), 'fixed/65536/blake3');
  assert.deepEqual(withChunkHash(withChunkHash(chunking, 'blake3'), 'sha256'), chunking);
  assert.equal(chunkHashOf(chunking), 'sha256');
  assert.equal(chunkHashOf(chunkingParams({ avgBytes: 16 * 1024, hash: 'blake3' })), 'blake3');
});

let loopback: LoopbackReceiver;

before(async () => {
  loopback = await startLoopbackReceiver({ prefix: 'dwcp-chunk-hash-' });
});

after(() => closeLoopbackReceiver(loopback));

function sender(input: { transferId: string; port?: number }) {
  const { pki, pool, receiver } = loopback;
  return { host: '127.0.0.1', port: input.port ?? receiver.port, tls: pki.sender, pool, transferId: input.transferId };
}

/** v1 written as the target's previous version, and v2 (v1 with a small insertion) as the source. */
async function deltaPair(input: {
  name: string;
  seed: number;
}): Promise<{ target: string; source: string; v2: string }> {
  const target = path.join(loopback.dir, input.name, 'target.img');
  await mkdir(path.dirname(target), { recursive: true });
  const v1 = noiseContent({ bytes: 2 * 1024 * 1024, seed: input.seed });
  await writeTestFile({ path: target, content: v1 });
  const v2 = Buffer.concat([
    v1.subarray(0, 900_000),
    noiseContent({ bytes: 3000, seed: input.seed + 1 }),
    v1.subarray(900_000),
  ]);
  const source = path.join(loopback.dir, input.name, 'source.img');
  return { target, source, v2: await writeTestFile({ path: source, content: v2 }) };
}

test(
  'two hosts with dwcp-native name chunks by BLAKE3, and a delta still reuses the previous version',
  needsBlake3,
  async () => {
    const { target, source, v2 } = await deltaPair({ name: 'both-blake3', seed: 61 });
    const transferId = randomUUID();
    const received = loopback.receiver.expectFile({ transferId, targetPath: target });
    const sent = await sendFile({ ...sender({ transferId }), sourcePath: source, chunking });
    await received;
    assert.equal(await sha256File({ path: target }), v2);
    assert.equal(sent.chunking, chunkingKey(withChunkHash(chunking, 'blake3')));
    assert.ok(sent.chunks.refs > sent.chunks.total * 0.8, `${sent.chunks.refs} of ${sent.chunks.total} reused`);
  },
);

test(
  'a receiver without BLAKE3 gets sha256: the sender scans again in it and the delta still works',
  needsBlake3,
  async () => {
    const { target, source, v2 } = await deltaPair({ name: 'receiver-sha256', seed: 71 });
    const plain = await DwcpReceiver.start({
      tls: loopback.pki.receiver,
      host: '127.0.0.1',
      pool: loopback.pool,
      chunkHashes: ['sha256'],
    });
    try {
      const transferId = randomUUID();
      const received = plain.expectFile({ transferId, targetPath: target });
      // No first-copy offer: the sender starts its scan in BLAKE3 before it hears from the receiver.
      const sent = await sendFile({ ...sender({ transferId, port: plain.port }), sourcePath: source, chunking });
      await received;
      assert.equal(await sha256File({ path: target }), v2);
      assert.equal(sent.chunking, chunkingKey(chunking));
      assert.ok(sent.chunks.refs > sent.chunks.total * 0.8, `${sent.chunks.refs} of ${sent.chunks.total} reused`);
    } finally {
      await plain.close();
    }
  },
);

test('a sender without BLAKE3 offers sha256 only, and a receiver that has it agrees', async () => {
  const target = path.join(loopback.dir, 'sender-sha256', 'target.img');
  const source = path.join(loopback.dir, 'sender-sha256.img');
  const expected = await writeTestFile({ path: source, content: noiseContent({ bytes: 1024 * 1024, seed: 81 }) });
  const transferId = randomUUID();
  const received = loopback.receiver.expectFile({ transferId, targetPath: target });
  const firstCopyChunking = fixedChunking({ bytes: 65536 });
  const sent = await sendFile({
    ...sender({ transferId }),
    sourcePath: source,
    chunking,
    firstCopyChunking,
    chunkHashes: ['sha256'],
  });
  assert.equal((await received).sha256, expected);
  assert.equal(sent.chunking, 'fixed/65536');
});

test(
  'one chunk index serves both hashes: a base indexed in sha256 and in BLAKE3 dedups either transfer',
  needsBlake3,
  async () => {
    const base = path.join(loopback.dir, 'both-hashes', 'base.img');
    await mkdir(path.dirname(base), { recursive: true });
    const v1 = noiseContent({ bytes: 2 * 1024 * 1024, seed: 91 });
    await writeTestFile({ path: base, content: v1 });
    const source = path.join(loopback.dir, 'both-hashes', 'v2.img');
    const v2 = Buffer.concat([v1.subarray(0, 300_000), noiseContent({ bytes: 2000, seed: 92 }), v1.subarray(300_000)]);
    const expected = await writeTestFile({ path: source, content: v2 });
    for (const chunkHashes of [['sha256'], ['blake3', 'sha256']] as const) {
      const transferId = randomUUID();
      const target = path.join(loopback.dir, 'both-hashes', `out-${chunkHashes[0]}.img`);
      const received = loopback.receiver.expectFile({ transferId, targetPath: target, baseImages: [base] });
      const sent = await sendFile({ ...sender({ transferId }), sourcePath: source, chunking, chunkHashes });
      assert.equal((await received).sha256, expected);
      assert.equal(sent.chunking, chunkingKey(withChunkHash(chunking, chunkHashes[0])));
      assert.ok(sent.chunks.refs > sent.chunks.total * 0.8, `${chunkHashes[0]}: ${sent.chunks.refs} reused`);
    }
  },
);

test('the index keys a location by hash and digest: a digest looked up under the other hash misses', async () => {
  const base = path.join(loopback.dir, 'keyed.img');
  await writeTestFile({ path: base, content: noiseContent({ bytes: 256 * 1024, seed: 95 }) });
  const index = new ChunkIndex({ pool: loopback.pool });
  await index.addFile({ path: base, chunking });
  const scanned = await loopback.pool.run({ kind: 'scan', path: base, chunking });
  const digest = manifestEntry({ manifest: scanned, index: 0 }).hash;
  assert.ok(index.lookup({ digest, hash: 'sha256' }) !== undefined);
  assert.equal(index.lookup({ digest, hash: 'blake3' }), undefined);
});

test(
  'a finished transfer sent again is recognised in the hash it finished in, even by a sender that prefers another',
  needsBlake3,
  async () => {
    const target = path.join(loopback.dir, 'finished', 'target.img');
    const source = path.join(loopback.dir, 'finished.img');
    await writeTestFile({ path: source, content: noiseContent({ bytes: 1024 * 1024, seed: 101 }) });
    const transferId = randomUUID();
    // Without a whole-file sha256, what the receiver verified is the manifest digest, which depends on the hash.
    const send = (chunkHashes: readonly ('sha256' | 'blake3')[]) =>
      sendFile({ ...sender({ transferId }), sourcePath: source, chunking, chunkHashes, wholeFileSha256: false });
    const received = loopback.receiver.expectFile({ transferId, targetPath: target });
    const first = await send(['blake3', 'sha256']);
    await received;
    // As after a lost END reply: the same transfer again, from a sender whose scan starts in sha256.
    const again = await send(['sha256', 'blake3']);
    assert.equal(again.manifestDigest, first.manifestDigest);
    assert.equal(again.chunking, chunkingKey(withChunkHash(chunking, 'blake3')));
    assert.equal(again.chunks.data, 0, 'nothing was sent again');
  },
);
