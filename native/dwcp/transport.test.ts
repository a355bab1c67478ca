import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { access, mkdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { ChunkIndex, sidecarPath } from './chunk-index';
import { localChunkHashes } from './chunk-hash';
import { chunkingKey, chunkingParams, fixedChunking, withChunkHash } from './chunking';
import { tamperingDialer, type TamperingDialer } from './testing/tampering-dialer';
import { DwcpWorkerPool } from './worker-pool';
import { DwcpCancelledError } from './errors';
import { QUIET_BEFORE_TRUST_MS } from './file-version';
import { manifestEntry } from './manifest';
import {
  closeLoopbackReceiver,
  makeTestContent,
  noiseContent,
  sha256File,
  startLoopbackReceiver,
  writeTestFile,
  type TestPki,
} from './testing/fixtures';
import { DwcpReceiver } from './receiver';
import { sendFile } from './send-file';
import { sendStream } from './send-stream';
import type { TransferProgress } from './transfer-types';

const execFileAsync = promisify(execFile);
let dir: string;
let pki: TestPki;
let pool: DwcpWorkerPool;
let receiver: DwcpReceiver;
const chunking = chunkingParams({ avgBytes: 16 * 1024 });
/** The chunking as both ends of these tests agree on it: their default hashes (chunk-hash.test.ts covers the rest). */
const agreed = withChunkHash(chunking, localChunkHashes[0]!);

before(async () => {
  ({ dir, pki, pool, receiver } = await startLoopbackReceiver({ prefix: 'dwcp-transport-' }));
});

after(() => closeLoopbackReceiver({ dir, pki, pool, receiver }));

function sender(extra: { transferId: string }) {
  return { host: '127.0.0.1', port: receiver.port, tls: pki.sender, pool, ...extra };
}

test('a file crosses three streams intact, with zero regions left as holes', async () => {
  const source = path.join(dir, 'mixed.img');
  const target = path.join(dir, 'out', 'mixed.img');
  const expected = await writeTestFile({ path: source, content: makeTestContent({ bytes: 6 * 1024 * 1024 }) });
  const transferId = randomUUID();
  const progress: TransferProgress[] = [];
  const received = receiver.expectFile({ transferId, targetPath: target });
  const sent = await sendFile({
    ...sender({ transferId }),
    sourcePath: source,
    streams: 3,
    chunking,
    onProgress: (p) => progress.push(p),
  });
  const result = await received;

  assert.equal(await sha256File({ path: target }), expected);
  assert.equal(sent.sha256, expected);
  assert.equal(result.sha256, expected);
  assert.equal(sent.logicalBytes, 6 * 1024 * 1024);
  assert.ok(sent.chunks.zero > 0, 'zero chunks were recognised');
  assert.equal(sent.chunks.data + sent.chunks.zero, sent.chunks.total);
  // A third of the content is compressible text and a third zeros: well under the logical size crosses the wire.
  assert.ok(sent.wireBytes < sent.logicalBytes * 0.5, `wire ${sent.wireBytes} of ${sent.logicalBytes}`);
  const info = await stat(target);
  assert.ok(info.blocks * 512 < info.size * 0.8, `target is sparse: ${info.blocks * 512} bytes allocated`);
  assert.ok(progress.length > 0 && progress.at(-1)!.chunksDone === sent.chunks.total);
  // Sidecars are opt-in: a default receiver leaves nothing beside the target.
  await assert.rejects(access(sidecarPath(target, agreed)));
});

test('a first copy with nothing to deduplicate against is cut in the fixed extents offered; a later version is not', async () => {
  const firstCopyChunking = fixedChunking({ bytes: 64 * 1024 });
  const source = path.join(dir, 'first-copy.img');
  const target = path.join(dir, 'out', 'first-copy.img');
  const content = makeTestContent({ bytes: 6 * 1024 * 1024 + 5000 });
  const expected = await writeTestFile({ path: source, content });
  const first = randomUUID();
  const received = receiver.expectFile({ transferId: first, targetPath: target });
  const sent = await sendFile({ ...sender({ transferId: first }), sourcePath: source, chunking, firstCopyChunking });
  assert.equal((await received).sha256, expected);
  assert.equal(await sha256File({ path: target }), expected);
  assert.equal(sent.chunking, chunkingKey(withChunkHash(firstCopyChunking, localChunkHashes[0]!)));
  assert.equal(sent.chunks.total, Math.ceil(content.length / (64 * 1024)));
  assert.ok(sent.chunks.zero > 0, 'zero extents were recognised');
  const info = await stat(target);
  assert.ok(info.blocks * 512 < info.size * 0.8, `target is sparse: ${info.blocks * 512} bytes allocated`);

  // The target now exists: the receiver has a base and keeps content-defined chunks, so the edit costs little.
  const v2 = Buffer.from(content);
  v2.write('patched', 1_000_000);
  const source2 = path.join(dir, 'first-copy-v2.img');
  const expected2 = await writeTestFile({ path: source2, content: v2 });
  const second = randomUUID();
  const received2 = receiver.expectFile({ transferId: second, targetPath: target });
  const sent2 = await sendFile({ ...sender({ transferId: second }), sourcePath: source2, chunking, firstCopyChunking });
  assert.equal((await received2).sha256, expected2);
  assert.equal(sent2.chunking, chunkingKey(agreed));
  assert.ok(sent2.chunks.data <= 2, `${sent2.chunks.data} chunks sent as data`);
});

test('a finished first copy sent again is recognised: the receiver names the extents it took as well as its hash', async () => {
  const source = path.join(dir, 'finished-first.img');
  await writeTestFile({ path: source, content: makeTestContent({ bytes: 2 * 1024 * 1024, seed: 9 }) });
  const transferId = randomUUID();
  // Without a whole-file sha256 the transfer is known by its manifest digest, which depends on how it was cut.
  const send = () =>
    sendFile({
      ...sender({ transferId }),
      sourcePath: source,
      chunking,
      firstCopyChunking: fixedChunking({ bytes: 64 * 1024 }),
      wholeFileSha256: false,
    });
  const received = receiver.expectFile({ transferId, targetPath: path.join(dir, 'out', 'finished-first.img') });
  const first = await send();
  await received;
  // As after a lost END reply: the target now exists, but the receiver answers from what it finished.
  const again = await send();
  assert.equal(again.manifestDigest, first.manifestDigest);
  assert.equal(again.chunking, first.chunking);
});

test('a new version reuses the chunks of a base image, so only the changes cross the wire', async () => {
  const v1 = noiseContent({ bytes: 4 * 1024 * 1024, seed: 11 });
  const v2 = Buffer.concat([
    v1.subarray(0, 1_000_000),
    noiseContent({ bytes: 3000, seed: 12 }),
    v1.subarray(1_000_000),
  ]);
  v2.write('patched', 3_000_000);
  const base = path.join(dir, 'base-v1.img');
  const source = path.join(dir, 'v2.img');
  await writeTestFile({ path: base, content: v1 });
  const expected = await writeTestFile({ path: source, content: v2 });
  const transferId = randomUUID();
  const received = receiver.expectFile({ transferId, targetPath: path.join(dir, 'out', 'v2.img'), baseImages: [base] });
  const sent = await sendFile({ ...sender({ transferId }), sourcePath: source, chunking, compressionLevel: 3 });
  await received;

  assert.equal(await sha256File({ path: path.join(dir, 'out', 'v2.img') }), expected);
  assert.ok(sent.chunks.refs > sent.chunks.total * 0.9, `${sent.chunks.refs} of ${sent.chunks.total} reused`);
  assert.ok(sent.wireBytes < v2.length * 0.05, `wire ${sent.wireBytes} for ${v2.length} bytes`);
});

test('a base image rewritten under the index (same size and mtime) costs sends, never wrong content', async () => {
  const v1 = noiseContent({ bytes: 2 * 1024 * 1024, seed: 41 });
  const base = path.join(dir, 'lying-base.img');
  await writeTestFile({ path: base, content: v1 });
  const indexed = randomUUID();
  const first = receiver.expectFile({
    transferId: indexed,
    targetPath: path.join(dir, 'out', 'lying-1.img'),
    baseImages: [base],
  });
  const sentFirst = await sendFile({ ...sender({ transferId: indexed }), sourcePath: base, chunking });
  await first;
  assert.equal(sentFirst.chunks.refs, sentFirst.chunks.total, 'every chunk was copied from the base');

  // The base changes behind the receiver's back (its size and mtime say it did not), and the copy that the first
  // transfer delivered, which the index also knows, is removed.
  await rm(path.join(dir, 'out', 'lying-1.img'));
  const { mtime } = await stat(base);
  await writeTestFile({ path: base, content: noiseContent({ bytes: v1.length, seed: 42 }) });
  await utimes(base, mtime, mtime);
  const transferId = randomUUID();
  const target = path.join(dir, 'out', 'lying-2.img');
  const received = receiver.expectFile({ transferId, targetPath: target, baseImages: [base] });
  const source = path.join(dir, 'lying-source.img');
  const expected = await writeTestFile({ path: source, content: v1 });
  const sent = await sendFile({ ...sender({ transferId }), sourcePath: source, chunking });
  const result = await received;
  assert.equal(await sha256File({ path: target }), expected);
  assert.equal(sent.chunks.refs, 0, 'no chunk of the rewritten base matched');
  assert.equal(sent.chunks.data, sent.chunks.total);
  assert.deepEqual(result.chunks, sent.chunks);
});

test('a quiet base rewritten after this receiver hashed it (mtime set back) is hashed again, never copied blind', async () => {
  const v1 = noiseContent({ bytes: 2 * 1024 * 1024, seed: 43 });
  const base = path.join(dir, 'quiet-base.img');
  await writeTestFile({ path: base, content: v1 });
  await sleep(QUIET_BEFORE_TRUST_MS + 100);
  // A receiver of its own, so that only the base is in its index.
  const own = await DwcpReceiver.start({ tls: pki.receiver, host: '127.0.0.1', pool });
  try {
    await own.chunkIndex.addFile({ path: base, chunking: agreed });
    const scanned = await pool.run({ kind: 'scan', path: base, chunking: agreed });
    const first = { digest: manifestEntry({ manifest: scanned, index: 0 }).hash, hash: localChunkHashes[0]! };
    assert.ok(own.chunkIndex.lookup(first)?.hashedVersion, 'the index vouches for the quiet base it hashed');

    // Rewritten in place with its mtime set back to the nanosecond (utimes takes no nanoseconds; touch does), so that
    // size, inode and mtime all say it is unchanged: only its ctime tells.
    const { mtimeNs } = await stat(base, { bigint: true });
    await writeTestFile({ path: base, content: noiseContent({ bytes: v1.length, seed: 44 }) });
    const seconds = `${mtimeNs / 1_000_000_000n}.${String(mtimeNs % 1_000_000_000n).padStart(9, '0')}`;
    await execFileAsync('touch', ['-m', '-d', `@${seconds}`, base]);
    assert.equal((await stat(base, { bigint: true })).mtimeNs, mtimeNs, 'the mtime was set back exactly');
    const transferId = randomUUID();
    const target = path.join(dir, 'out', 'quiet-2.img');
    const received = own.expectFile({ transferId, targetPath: target, baseImages: [base] });
    const source = path.join(dir, 'quiet-source.img');
    const expected = await writeTestFile({ path: source, content: v1 });
    const sent = await sendFile({ ...sender({ transferId }), port: own.port, sourcePath: source, chunking });
    await received;
    assert.equal(await sha256File({ path: target }), expected);
    assert.equal(sent.chunks.refs, 0, 'no chunk of the rewritten base was copied');
    assert.equal(sent.chunks.data, sent.chunks.total);
  } finally {
    await own.close();
  }
});

test('sending over an existing older target transfers only the delta', async () => {
  const target = path.join(dir, 'in-place', 'target.img');
  const v1 = noiseContent({ bytes: 2 * 1024 * 1024, seed: 21 });
  await mkdir(path.dirname(target));
  await writeTestFile({ path: target, content: v1 });
  const v2 = Buffer.concat([v1.subarray(0, 500_000), v1.subarray(520_000)]);
  const source = path.join(dir, 'in-place-v2.img');
  const expected = await writeTestFile({ path: source, content: v2 });
  const transferId = randomUUID();
  const received = receiver.expectFile({ transferId, targetPath: target });
  const sent = await sendFile({ ...sender({ transferId }), sourcePath: source, chunking });
  await received;
  assert.equal(await sha256File({ path: target }), expected);
  assert.ok(sent.chunks.data <= 3, `${sent.chunks.data} chunks sent as data`);
});

test('a received target keeps a chunk-index sidecar: a restarted receiver indexes it without a scan', async () => {
  const target = path.join(dir, 'out', 'sidecar.img');
  const v1 = noiseContent({ bytes: 2 * 1024 * 1024, seed: 31 });
  const source1 = path.join(dir, 'sidecar-v1.img');
  await writeTestFile({ path: source1, content: v1 });
  const first = randomUUID();
  const keeping = await DwcpReceiver.start({ tls: pki.receiver, host: '127.0.0.1', pool, indexSidecars: true });
  try {
    const received = keeping.expectFile({ transferId: first, targetPath: target });
    await sendFile({ ...sender({ transferId: first }), port: keeping.port, sourcePath: source1, chunking });
    await received;
  } finally {
    await keeping.close();
  }
  await access(sidecarPath(target, agreed));

  // A new receiver has an empty index; a pool that refuses every task proves the sidecar, not a scan, filled it.
  const refusing = new DwcpWorkerPool({ size: 1 });
  await refusing.close();
  const fresh = new ChunkIndex({ pool: refusing, sidecars: true });
  // A sidecar offered as a base image (a listed directory) is skipped, not scanned.
  assert.equal(await fresh.addFile({ path: sidecarPath(target, agreed), chunking: agreed }), 0);
  assert.ok((await fresh.addFile({ path: target, chunking: agreed })) > 0);
  const v2 = Buffer.concat([v1.subarray(0, 700_000), noiseContent({ bytes: 5000, seed: 32 }), v1.subarray(700_000)]);
  const source2 = path.join(dir, 'sidecar-v2.img');
  const expected = await writeTestFile({ path: source2, content: v2 });
  const restarted = await DwcpReceiver.start({ tls: pki.receiver, host: '127.0.0.1', pool, indexSidecars: true });
  try {
    const second = randomUUID();
    const done = restarted.expectFile({ transferId: second, targetPath: target });
    const sent = await sendFile({
      ...sender({ transferId: second }),
      port: restarted.port,
      sourcePath: source2,
      chunking,
    });
    await done;
    assert.equal(await sha256File({ path: target }), expected);
    assert.ok(sent.chunks.refs > sent.chunks.total * 0.8, `${sent.chunks.refs} of ${sent.chunks.total} reused`);
  } finally {
    await restarted.close();
  }

  // A sidecar that no longer matches its file (here: stamped before the file changed) is ignored.
  await writeFile(target, Buffer.concat([v2, Buffer.from('tail')]));
  const stale = new ChunkIndex({ pool: refusing, sidecars: true });
  await assert.rejects(stale.addFile({ path: target, chunking: agreed }), /closed/);
});

test('an ordered stream is reassembled in order across streams with a small reorder window', async () => {
  const content = makeTestContent({ bytes: 3 * 1024 * 1024 + 12345, seed: 5 });
  const pieces: Buffer[] = [];
  const sink = new Writable({
    highWaterMark: 64 * 1024,
    write(chunk: Buffer, _enc, done) {
      pieces.push(chunk);
      // A slow consumer, so the sink's backpressure reaches the sender.
      setTimeout(done, 1);
    },
  });
  const transferId = randomUUID();
  const received = receiver.expectStream({ transferId, sink, maxReorderChunks: 8 });
  const source = Readable.from(
    (function* () {
      for (let i = 0; i < content.length; i += 10_000) yield content.subarray(i, i + 10_000);
    })(),
  );
  const sent = await sendStream({
    ...sender({ transferId }),
    source,
    streams: 3,
    chunkBytes: 64 * 1024,
    maxInFlightChunks: 8,
  });
  const result = await received;
  assert.deepEqual(Buffer.concat(pieces), content);
  assert.equal(result.sha256, sent.sha256);
  assert.ok(sent.chunks.zero > 0);
  assert.equal(sent.logicalBytes, content.length);
});

/** Flips a byte in the middle of the Nth large write (a chunk payload) on one stream. */
function corruptingDialer(input: { nth: number; streamIndex: number }): TamperingDialer {
  let large = 0;
  return tamperingDialer((write, streamIndex) =>
    streamIndex === input.streamIndex && write.length >= 4096 && ++large === input.nth
      ? Math.floor(write.length / 2)
      : undefined,
  );
}

test('a chunk corrupted on the wire is NACKed and resent', async () => {
  const source = path.join(dir, 'corrupt-src.img');
  const expected = await writeTestFile({ path: source, content: noiseContent({ bytes: 2 * 1024 * 1024, seed: 31 }) });
  const transferId = randomUUID();
  const target = path.join(dir, 'out', 'corrupt.img');
  const received = receiver.expectFile({ transferId, targetPath: target });
  const corruption = corruptingDialer({ nth: 5, streamIndex: 1 });
  const sent = await sendFile({
    ...sender({ transferId }),
    sourcePath: source,
    chunking,
    streams: 2,
    dial: corruption.dial,
  });
  const result = await received;
  assert.equal(corruption.flipped(), 1);
  assert.equal(sent.chunks.resent, 1);
  assert.equal(result.chunks.resent, 1);
  assert.equal(sent.attempts, 1, 'a payload error costs one chunk, not the connection');
  assert.equal(await sha256File({ path: target }), expected);
});

test('a stream chunk corrupted on the wire is NACKed and resent in order', async () => {
  const content = noiseContent({ bytes: 1024 * 1024, seed: 41 });
  const pieces: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      pieces.push(chunk);
      done();
    },
  });
  const transferId = randomUUID();
  const received = receiver.expectStream({ transferId, sink });
  const corruption = corruptingDialer({ nth: 3, streamIndex: 0 });
  const sent = await sendStream({
    ...sender({ transferId }),
    source: Readable.from([content]),
    chunkBytes: 32 * 1024,
    dial: corruption.dial,
  });
  await received;
  assert.equal(sent.chunks.resent, 1);
  assert.deepEqual(Buffer.concat(pieces), content);
});

test('cancelling a transfer stops the sender with DwcpCancelledError', async () => {
  const source = path.join(dir, 'cancel.img');
  await writeTestFile({ path: source, content: noiseContent({ bytes: 4 * 1024 * 1024, seed: 51 }) });
  const transferId = randomUUID();
  void receiver.expectFile({ transferId, targetPath: path.join(dir, 'out', 'cancel.img') }).catch(() => undefined);
  const controller = new AbortController();
  const sending = sendFile({
    ...sender({ transferId }),
    sourcePath: source,
    chunking,
    maxBytesPerSecond: 1024 * 1024,
    signal: controller.signal,
    onProgress: (p) => {
      if (p.logicalBytes > 256 * 1024) controller.abort();
    },
  });
  await assert.rejects(sending, DwcpCancelledError);
});
