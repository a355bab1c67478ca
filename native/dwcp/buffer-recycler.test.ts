import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { BufferRecycler } from './buffer-recycler';
import { chunkingParams, fixedChunking } from './chunking';
import type { DwcpReceiver } from './receiver';
import { sendFile } from './send-file';
import { sendStream } from './send-stream';
import {
  closeLoopbackReceiver,
  makeTestContent,
  noiseContent,
  sha256File,
  startLoopbackReceiver,
  writeTestFile,
  type TestPki,
} from './testing/fixtures';
import type { DwcpWorkerPool } from './worker-pool';

const KIB = 1024;

test('a buffer given back is served again for its exact length only, once', () => {
  const recycler = new BufferRecycler();
  const first = recycler.take(128 * KIB);
  first.fill(7);
  recycler.give(first);
  recycler.give(first);
  assert.equal(recycler.retainedBytes, 128 * KIB, 'a second give of the same buffer is ignored');
  assert.notEqual(recycler.take(256 * KIB), first);
  const again = recycler.take(128 * KIB);
  assert.equal(again, first);
  assert.notEqual(recycler.take(128 * KIB), first, 'taken once, it is not kept any more');
  assert.deepEqual(recycler.counts, { reused: 1, allocated: 3 });
});

test('views into larger memory, small buffers and moved buffers are left to the collector', () => {
  const recycler = new BufferRecycler();
  recycler.give(Buffer.allocUnsafeSlow(512 * KIB).subarray(0, 128 * KIB));
  recycler.give(Buffer.allocUnsafeSlow(512 * KIB).subarray(128 * KIB));
  recycler.give(Buffer.allocUnsafeSlow(4 * KIB));
  recycler.give(Buffer.alloc(0));
  assert.equal(recycler.retainedBytes, 0);
});

test('past its budget the recycler drops the lengths least recently taken first', () => {
  const recycler = new BufferRecycler({ maxBytes: 512 * KIB });
  const odd = [recycler.take(100 * KIB), recycler.take(100 * KIB)];
  const common = [recycler.take(128 * KIB), recycler.take(128 * KIB)];
  for (const b of [...odd, ...common]) recycler.give(b);
  assert.equal(recycler.retainedBytes, 456 * KIB);
  // 128 KiB was taken last, so the 100 KiB buffers make room for a third one.
  recycler.give(Buffer.allocUnsafeSlow(128 * KIB));
  assert.equal(recycler.retainedBytes, 484 * KIB);
  assert.equal(recycler.take(100 * KIB), odd[0], 'one 100 KiB buffer was enough room');
  recycler.give(Buffer.allocUnsafeSlow(1024 * KIB));
  assert.equal(recycler.retainedBytes, 384 * KIB, 'a buffer larger than the whole budget is not kept');
});

describeTransfers();

/** Real transfers over loopback TLS, sender and receiver sharing one pool and so one recycler, as in one agent. */
function describeTransfers(): void {
  let dir: string;
  let pki: TestPki;
  let pool: DwcpWorkerPool;
  let receiver: DwcpReceiver;
  before(async () => {
    ({ dir, pki, pool, receiver } = await startLoopbackReceiver({ prefix: 'dwcp-recycler-' }));
    await mkdir(path.join(dir, 'out'));
  });
  after(() => closeLoopbackReceiver({ dir, pki, pool, receiver }));
  const sender = (transferId: string) => ({
    host: '127.0.0.1',
    port: receiver.port,
    tls: pki.sender,
    pool,
    transferId,
  });

  test('a first copy in fixed extents refills the buffers it has written, and every byte arrives intact', async () => {
    const source = path.join(dir, 'first.img');
    const target = path.join(dir, 'out', 'first.img');
    const expected = await writeTestFile({ path: source, content: makeTestContent({ bytes: 8 * 1024 * KIB }) });
    const before = { ...pool.buffers.counts };
    const transferId = randomUUID();
    const received = receiver.expectFile({ transferId, targetPath: target });
    const sent = await sendFile({
      ...sender(transferId),
      sourcePath: source,
      chunking: chunkingParams({ avgBytes: 64 * KIB }),
      firstCopyChunking: fixedChunking({ bytes: 128 * KIB }),
      maxInFlightChunks: 4,
    });
    assert.equal((await received).sha256, expected);
    assert.equal(await sha256File({ path: target }), expected);
    const reused = pool.buffers.counts.reused - before.reused;
    const allocated = pool.buffers.counts.allocated - before.allocated;
    // Both ends take a buffer per data chunk (the read, the decoded payload); with 4 chunks in flight, most are reused.
    assert.ok(sent.chunks.data >= 20, `${sent.chunks.data} data chunks`);
    assert.ok(reused > allocated, `${reused} buffers reused, ${allocated} allocated for ${sent.chunks.data} chunks`);
  });

  test('a stream into a file sink reuses delivered chunks and the file holds exactly what was sent', async () => {
    const content = noiseContent({ bytes: 6 * 1024 * KIB + 777, seed: 11 });
    const target = path.join(dir, 'out', 'stream.bin');
    const sink = createWriteStream(target);
    const before = pool.buffers.counts.reused;
    const transferId = randomUUID();
    const received = receiver.expectStream({ transferId, sink, sinkCopiesWrites: true, maxReorderChunks: 8 });
    const source = Readable.from(
      (function* () {
        for (let i = 0; i < content.length; i += 50_000) yield content.subarray(i, i + 50_000);
      })(),
    );
    const sent = await sendStream({ ...sender(transferId), source, chunkBytes: 128 * KIB, maxInFlightChunks: 8 });
    const result = await received;
    const expected = createHash('sha256').update(content).digest('hex');
    assert.equal(result.sha256, expected);
    assert.equal(sent.sha256, expected);
    assert.equal(await sha256File({ path: target }), expected);
    assert.ok(pool.buffers.counts.reused - before > 10, 'the decoder refilled delivered chunks');
  });
}
