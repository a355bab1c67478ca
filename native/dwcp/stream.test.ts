import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import { tamperingDialer, type TamperingDialer } from './testing/tampering-dialer';
import { DwcpChecksumError, DwcpIoError } from './errors';
import type { DwcpReceiver } from './receiver';
import { sendStream, sendStreamChannels } from './send-stream';
import {
  closeLoopbackReceiver,
  makeTestContent,
  noiseContent,
  startLoopbackReceiver,
  type TestPki,
} from './testing/fixtures';
import type { DwcpWorkerPool } from './worker-pool';

let dir: string;
let pki: TestPki;
let pool: DwcpWorkerPool;
let receiver: DwcpReceiver;

before(async () => {
  ({ dir, pki, pool, receiver } = await startLoopbackReceiver({ prefix: 'dwcp-stream-' }));
});

after(() => closeLoopbackReceiver({ dir, pki, pool, receiver }));

function sender(transferId: string) {
  return { host: '127.0.0.1', port: receiver.port, tls: pki.sender, pool, transferId };
}

/** A sink that keeps what it gets and lets a source wait until some of it arrived, within a generous bound. */
function collectingSink() {
  const pieces: Buffer[] = [];
  let bytes = 0;
  let waiters: { bytes: number; resolve: () => void }[] = [];
  const writable = new Writable({
    write(chunk: Buffer, _enc, done) {
      pieces.push(chunk);
      bytes += chunk.length;
      waiters = waiters.filter((w) => (bytes >= w.bytes ? (w.resolve(), false) : true));
      done();
    },
  });
  const reached = (want: number): Promise<void> =>
    new Promise((resolve, reject) => {
      if (bytes >= want) return resolve();
      const timer = setTimeout(() => reject(new Error(`the sink has ${bytes} of ${want} bytes after 10 s`)), 10_000);
      waiters.push({ bytes: want, resolve: () => (clearTimeout(timer), resolve()) });
    });
  return { writable, reached, content: () => Buffer.concat(pieces) };
}

/** Flips the first byte of the first write of `length` bytes (a chunk payload) on any connection. */
function corruptingDialer(length: number): TamperingDialer {
  let done = false;
  return tamperingDialer((write) => {
    if (done || write.length !== length) return undefined;
    done = true;
    return 0;
  });
}

test('a paused source has its partial chunk delivered before it writes more', async () => {
  const first = noiseContent({ bytes: 1000, seed: 3 });
  const second = noiseContent({ bytes: 5000, seed: 4 });
  const sink = collectingSink();
  const transferId = randomUUID();
  const received = receiver.expectStream({ transferId, sink: sink.writable });
  // Like QEMU waiting for the destination: nothing more is written until the first bytes have arrived.
  async function* source(): AsyncGenerator<Buffer> {
    yield first;
    await sink.reached(first.length);
    yield second;
  }
  const sent = await sendStream({ ...sender(transferId), source: source(), chunkBytes: 64 * 1024, idleFlushMs: 5 });
  await received;
  assert.deepEqual(sink.content(), Buffer.concat([first, second]));
  assert.equal(sent.chunks.total, 2, 'two chunks shorter than chunkBytes');
});

test('a chunk NACKed while the source is silent is resent without waiting for the source', async () => {
  const first = noiseContent({ bytes: 3000, seed: 5 });
  const second = noiseContent({ bytes: 3000, seed: 6 });
  const sink = collectingSink();
  const transferId = randomUUID();
  const received = receiver.expectStream({ transferId, sink: sink.writable });
  const corruption = corruptingDialer(first.length);
  async function* source(): AsyncGenerator<Buffer> {
    yield first;
    await sink.reached(first.length);
    yield second;
  }
  const sent = await sendStream({
    ...sender(transferId),
    source: source(),
    chunkBytes: 64 * 1024,
    idleFlushMs: 5,
    streams: 1,
    dial: corruption.dial,
  });
  await received;
  assert.equal(corruption.flipped(), 1);
  assert.equal(sent.chunks.resent, 1);
  assert.deepEqual(sink.content(), Buffer.concat([first, second]));
});

test('several channels each arrive intact and in order', async () => {
  const contents = [0, 1, 2].map((i) => makeTestContent({ bytes: 1024 * 1024 + 777 * i, seed: 20 + i }));
  const sinks = contents.map(() => collectingSink());
  const channels = contents.map((content) => ({
    transferId: randomUUID(),
    source: (function* () {
      for (let at = 0; at < content.length; at += 10_000) yield content.subarray(at, at + 10_000);
    })(),
  }));
  const received = channels.map((c, i) =>
    receiver.expectStream({ transferId: c.transferId, sink: sinks[i]!.writable }),
  );
  const results = await sendStreamChannels({
    host: '127.0.0.1',
    port: receiver.port,
    tls: pki.sender,
    pool,
    channels: channels.map((c) => ({ transferId: c.transferId, source: toAsync(c.source) })),
    chunkBytes: 64 * 1024,
    streams: 6,
    maxInFlightChunks: 12,
  });
  const done = await Promise.all(received);
  for (const [i, content] of contents.entries()) {
    assert.deepEqual(sinks[i]!.content(), content, `channel ${i}`);
    assert.equal(done[i]!.sha256, results[i]!.sha256);
  }
});

test('a failing source fails the send instead of ending the stream early', async () => {
  const transferId = randomUUID();
  const received = receiver.expectStream({ transferId, sink: collectingSink().writable });
  async function* source(): AsyncGenerator<Buffer> {
    yield noiseContent({ bytes: 100_000, seed: 7 });
    throw new Error('QEMU went away');
  }
  await assert.rejects(
    sendStream({ ...sender(transferId), source: source(), chunkBytes: 64 * 1024 }),
    (err: unknown) => err instanceof DwcpIoError && /QEMU went away/.test(err.message),
  );
  receiver.cancel(transferId);
  await assert.rejects(received);
});

test('a stream sent without its whole sha256 arrives when the receiver expects it so, and is refused otherwise', async () => {
  const content = makeTestContent({ bytes: 300_000, seed: 9 });
  const sink = collectingSink();
  const transferId = randomUUID();
  const received = receiver.expectStream({ transferId, sink: sink.writable, wholeStreamSha256: false });
  const sent = await sendStream({
    ...sender(transferId),
    source: toAsync([content]),
    chunkBytes: 64 * 1024,
    wholeStreamSha256: false,
  });
  const result = await received;
  assert.deepEqual(sink.content(), content);
  assert.equal(sent.sha256, undefined);
  assert.equal(result.sha256, undefined);

  const mismatched = randomUUID();
  const refused = receiver.expectStream({ transferId: mismatched, sink: collectingSink().writable });
  await assert.rejects(
    sendStream({ ...sender(mismatched), source: toAsync([content]), wholeStreamSha256: false }),
    DwcpChecksumError,
  );
  await assert.rejects(refused, DwcpChecksumError);
});

async function* toAsync(pieces: Iterable<Buffer>): AsyncGenerator<Buffer> {
  yield* pieces;
}
