import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { access, mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { waitUntil } from '../../test/support/wait';
import { chunkingKey, chunkingParams, fixedChunking, withChunkHash } from './chunking';
import { localChunkHashes } from './chunk-hash';
import { dialTls, type Dialer } from './connection';
import type { DwcpWorkerPool } from './worker-pool';
import { DwcpAuthError, DwcpDiskFullError } from './errors';
import {
  closeLoopbackReceiver,
  noiseContent,
  sha256File,
  startLoopbackReceiver,
  writeTestFile,
  type TestPki,
} from './testing/fixtures';
import {
  journaledChunks,
  startReceiverProcess,
  waitForJournalSync,
  type ReceiverProcess,
} from './testing/receiver-child';
import { startTcpProxy, type TcpProxy } from './testing/tcp-proxy';
import { DwcpReceiver } from './receiver';
import { sendFile } from './send-file';

const exec = promisify(execFile);
let dir: string;
let pki: TestPki;
let pool: DwcpWorkerPool;
let receiver: DwcpReceiver;
const chunking = chunkingParams({ avgBytes: 16 * 1024 });

before(async () => {
  ({ dir, pki, pool, receiver } = await startLoopbackReceiver({ prefix: 'dwcp-faults-' }));
});

after(() => closeLoopbackReceiver({ dir, pki, pool, receiver }));

/** Sends a file to a receiver process, SIGKILLs it mid-transfer once its journal holds a fair share, restarts it. */
async function sendThroughReceiverKill(input: { name: string; wholeFileSha256?: boolean }) {
  const source = path.join(dir, `${input.name}-src.img`);
  const size = 8 * 1024 * 1024;
  const expected = await writeTestFile({ path: source, content: noiseContent({ bytes: size, seed: 61 }) });
  const target = path.join(dir, input.name, 'target.img');
  const transferId = randomUUID();

  const first = await startReceiverProcess({ pki, port: 0, transferId, targetPath: target });
  /** Chunks the journal on disk recorded when the receiver was killed: the ones a resume must not resend. */
  let journaledAtKill = 0;
  let restarted: Promise<{ done: Promise<string> }> | undefined;
  const sent = await sendFile({
    host: '127.0.0.1',
    port: first.port,
    tls: pki.sender,
    pool,
    transferId,
    sourcePath: source,
    chunking,
    streams: 2,
    ...(input.wholeFileSha256 !== undefined ? { wholeFileSha256: input.wholeFileSha256 } : {}),
    // Slow enough that the kill lands in the middle.
    maxBytesPerSecond: 6 * 1024 * 1024,
    reconnect: { timeoutMs: 30_000, initialDelayMs: 100, maxDelayMs: 500 },
    onProgress: (p) => {
      // Kill once the journal (fsync'd batches, which lag the ACKs by however slow the disk is) holds a fair share.
      if (restarted !== undefined || p.logicalBytes < size * 0.3) return;
      journaledAtKill = journaledChunks(`${target}.dwcp-journal`);
      if (journaledAtKill * chunking.avgBytes > size * 0.2) {
        // The new receiver binds the same port, so it starts once the killed one is gone, not after a guessed delay.
        const gone = new Promise((resolve) => first.child.once('exit', resolve));
        first.child.kill('SIGKILL');
        restarted = gone.then(() => startReceiverProcess({ pki, port: first.port, transferId, targetPath: target }));
      }
    },
  });
  assert.ok(restarted !== undefined, 'the receiver was killed during the transfer');
  const second = await restarted;
  return { sent, done: await second.done, expected, target, size, journaledAtKill };
}

test('a receiver killed mid-transfer is restarted and the transfer resumes where the journal left it', async () => {
  const { sent, done, expected, target, size, journaledAtKill } = await sendThroughReceiverKill({ name: 'resume' });
  assert.equal(done, expected);
  assert.equal(await sha256File({ path: target }), expected);
  assert.ok(sent.attempts >= 2, `${sent.attempts} attempts`);
  // The restarted receiver reported the journaled chunks, and they were not sent again.
  assert.ok(
    sent.chunks.resumed >= journaledAtKill && journaledAtKill > 0,
    `${sent.chunks.resumed} of ${sent.chunks.total} resumed, ${journaledAtKill} journaled at the kill`,
  );
  assert.ok(sent.wireBytes < size * 1.5, `wire ${sent.wireBytes} for ${size}`);
  // The partial file and the journal are gone (the chunk-index sidecar of the new target is meant to stay).
  const leftovers = (await readdir(path.dirname(target))).filter((f) => /\.dwcp-(partial|journal)/.test(f));
  assert.deepEqual(leftovers, []);
});

test('without the whole-file sha256, a resumed transfer is checked against its manifest and identified by it', async () => {
  const { sent, done, expected, target, journaledAtKill } = await sendThroughReceiverKill({
    name: 'resume-digest',
    wholeFileSha256: false,
  });
  assert.equal(sent.sha256, undefined);
  assert.match(sent.manifestDigest ?? '', /^[0-9a-f]{64}$/);
  assert.equal(done, `digest:${sent.manifestDigest}`);
  assert.equal(await sha256File({ path: target }), expected);
  assert.ok(sent.chunks.resumed >= journaledAtKill && journaledAtKill > 0, `${sent.chunks.resumed} resumed`);
});

test('a receiver killed with every chunk journaled, before END, is restarted: the send finishes without resending data, and a new send of it is answered from the cuts it used', async () => {
  const source = path.join(dir, 'before-end-src.img');
  const expected = await writeTestFile({ path: source, content: noiseContent({ bytes: 8 * 1024 * 1024, seed: 83 }) });
  const target = path.join(dir, 'before-end', 'target.img');
  const transferId = randomUUID();
  // Offered as the image library offers it. The attempt that finishes offers nothing (it describes the cuts it
  // scanned with), so a receiver that kept what an attempt offered would answer the new send with no cuts, and that
  // send, known by its manifest digest alone, would scan content-defined chunks and find other content.
  const firstCopyChunking = fixedChunking({ bytes: 256 * 1024 });
  const sender = {
    host: '127.0.0.1',
    tls: pki.sender,
    pool,
    transferId,
    sourcePath: source,
    chunking,
    firstCopyChunking,
    wholeFileSha256: false,
    reconnect: { timeoutMs: 30_000, initialDelayMs: 100, maxDelayMs: 500 },
  };

  const first = await startReceiverProcess({ pki, port: 0, transferId, targetPath: target });
  let journaledAtKill = 0;
  let restarted: Promise<ReceiverProcess> | undefined;
  const sent = await sendFile({
    ...sender,
    port: first.port,
    onProgress: (p) => {
      if (restarted !== undefined || p.chunksTotal === undefined || p.chunksDone < p.chunksTotal) return;
      // Every chunk is acknowledged, and END goes out only after this returns; the receiver journals in its own
      // process meanwhile, so the kill lands with all of it on disk and none of END read.
      journaledAtKill = waitForJournalSync({
        file: `${target}.dwcp-journal`,
        chunks: p.chunksTotal,
        timeoutMs: 10_000,
      });
      const gone = new Promise((resolve) => first.child.once('exit', resolve));
      first.child.kill('SIGKILL');
      restarted = gone.then(() =>
        startReceiverProcess({ pki, port: first.port, transferId, targetPath: target, keepServing: true }),
      );
    },
  });
  assert.ok(restarted !== undefined, 'the receiver was killed before END');
  const second = await restarted;
  try {
    assert.equal(await second.done, `digest:${sent.manifestDigest}`);
    assert.equal(await sha256File({ path: target }), expected);
    assert.equal(sent.chunking, chunkingKey(withChunkHash(firstCopyChunking, localChunkHashes[0]!)));
    assert.equal(journaledAtKill, sent.chunks.total);
    assert.ok(sent.attempts >= 2, `${sent.attempts} attempts`);
    assert.equal(sent.chunks.resumed, sent.chunks.total, 'the restarted receiver had every chunk');

    const again = await sendFile({ ...sender, port: second.port });
    assert.equal(again.manifestDigest, sent.manifestDigest);
    assert.equal(again.chunking, sent.chunking);
    assert.equal(again.attempts, 1);
    assert.equal(again.chunks.data, 0);
    assert.ok(again.wireBytes < 64 * 1024, `${again.wireBytes} bytes on the wire for a finished transfer`);
  } finally {
    second.child.kill('SIGKILL');
  }
});

/** A TCP proxy that flips one byte of the client→server byte stream (TLS ciphertext) once, after `after` bytes. */
function flippingProxy(input: { targetPort: number; after: number }): Promise<TcpProxy> {
  let seen = 0;
  let flipped = false;
  return startTcpProxy({
    targetPort: input.targetPort,
    pipe: (from, to, direction) => {
      if (direction === 'to-client') {
        from.pipe(to);
        return;
      }
      from.on('data', (data: Buffer) => {
        let out = data;
        if (!flipped && seen + data.length > input.after) {
          out = Buffer.from(data);
          out[input.after - seen]! ^= 0x10;
          flipped = true;
        }
        seen += data.length;
        to.write(out);
      });
    },
  });
}

test('a byte flipped inside TLS breaks only that connection; the sender reconnects and finishes', async () => {
  const source = path.join(dir, 'flip-src.img');
  const expected = await writeTestFile({ path: source, content: noiseContent({ bytes: 3 * 1024 * 1024, seed: 71 }) });
  const target = path.join(dir, 'out', 'flip.img');
  const transferId = randomUUID();
  const proxy = await flippingProxy({ targetPort: receiver.port, after: 1_000_000 });
  try {
    const received = receiver.expectFile({ transferId, targetPath: target });
    const sent = await sendFile({
      host: '127.0.0.1',
      port: proxy.port,
      tls: pki.sender,
      pool,
      transferId,
      sourcePath: source,
      chunking,
      streams: 1,
      reconnect: { initialDelayMs: 50 },
    });
    await received;
    assert.ok(sent.attempts >= 2, `${sent.attempts} attempts`);
    assert.equal(await sha256File({ path: target }), expected);
  } finally {
    await proxy.close();
  }
});

test('a sender whose certificate comes from another CA is refused', async () => {
  const source = path.join(dir, 'auth-src.img');
  await writeTestFile({ path: source, content: noiseContent({ bytes: 256 * 1024, seed: 81 }) });
  const transferId = randomUUID();
  const authFailures: Error[] = [];
  const guarded = await DwcpReceiver.start({
    tls: pki.receiver,
    host: '127.0.0.1',
    pool,
    onAuthFailure: (e) => authFailures.push(e),
  });
  try {
    const received = guarded.expectFile({ transferId, targetPath: path.join(dir, 'out', 'auth.img') });
    await assert.rejects(
      sendFile({
        host: '127.0.0.1',
        port: guarded.port,
        tls: pki.rogue,
        pool,
        transferId,
        sourcePath: source,
        chunking,
      }),
      DwcpAuthError,
    );
    await waitUntil('the receiver to report the failed handshake', () => authFailures.length >= 1);
    // The transfer is still waiting for the legitimate sender.
    const sent = await sendFile({
      host: '127.0.0.1',
      port: guarded.port,
      tls: pki.sender,
      pool,
      transferId,
      sourcePath: source,
      chunking,
    });
    assert.equal((await received).sha256, sent.sha256);
  } finally {
    await guarded.close();
  }
});

test('a receiver whose certificate comes from another CA is refused by the sender', async () => {
  const impostor = await DwcpReceiver.start({ tls: pki.rogue, host: '127.0.0.1', pool });
  try {
    const source = path.join(dir, 'auth-src2.img');
    await writeTestFile({ path: source, content: noiseContent({ bytes: 64 * 1024, seed: 82 }) });
    await assert.rejects(
      sendFile({
        host: '127.0.0.1',
        port: impostor.port,
        tls: pki.sender,
        pool,
        transferId: randomUUID(),
        sourcePath: source,
        chunking,
      }),
      DwcpAuthError,
    );
  } finally {
    await impostor.close();
  }
});

test('a transfer bound to another sender host refuses this one', async () => {
  const source = path.join(dir, 'bound-src.img');
  await writeTestFile({ path: source, content: noiseContent({ bytes: 64 * 1024, seed: 83 }) });
  const transferId = randomUUID();
  void receiver
    .expectFile({ transferId, targetPath: path.join(dir, 'out', 'bound.img'), peerHostId: 'some-other-host' })
    .catch(() => undefined);
  await assert.rejects(
    sendFile({
      host: '127.0.0.1',
      port: receiver.port,
      tls: pki.sender,
      pool,
      transferId,
      sourcePath: source,
      chunking,
    }),
    DwcpAuthError,
  );
});

// A real full file system, not a mocked ENOSPC: the test fails rather than skips without root, as npm test runs as
// root (the hypervisor tests need it too) and a skip would hide the disk-full path going untested.
async function mountTinyTmpfs(mountPoint: string): Promise<void> {
  await mkdir(mountPoint, { recursive: true });
  await exec('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mountPoint]).catch((err: unknown) => {
    throw new Error(`mounting a 2 MiB tmpfs at ${mountPoint} needs root: run npm test as root`, { cause: err });
  });
}

test('a receiver on a full file system reports DISK_FULL and the sender stops', async (t) => {
  const mountPoint = path.join(dir, 'tiny');
  await mountTinyTmpfs(mountPoint);
  try {
    const source = path.join(dir, 'big-src.img');
    await writeTestFile({ path: source, content: noiseContent({ bytes: 4 * 1024 * 1024, seed: 91 }) });

    await t.test('refused up front when the free space is known to be short', async () => {
      const transferId = randomUUID();
      const received = receiver.expectFile({ transferId, targetPath: path.join(mountPoint, 'a.img') });
      await assert.rejects(
        sendFile({
          host: '127.0.0.1',
          port: receiver.port,
          tls: pki.sender,
          pool,
          transferId,
          sourcePath: source,
          chunking,
        }),
        (err: unknown) => err instanceof DwcpDiskFullError && /bytes free/.test(err.message),
      );
      await assert.rejects(received, DwcpDiskFullError);
    });

    await t.test('stopped when a write hits ENOSPC', async () => {
      const transferId = randomUUID();
      const received = receiver.expectFile({
        transferId,
        targetPath: path.join(mountPoint, 'b.img'),
        checkFreeSpace: false,
      });
      let dials = 0;
      const countingDial: Dialer = (options) => {
        dials++;
        return dialTls(options);
      };
      await assert.rejects(
        sendFile({
          host: '127.0.0.1',
          port: receiver.port,
          tls: pki.sender,
          pool,
          transferId,
          sourcePath: source,
          chunking,
          streams: 2,
          dial: countingDial,
          // A sender that wrongly retried would give up soon (and fail the type check) instead of after a minute.
          reconnect: { timeoutMs: 5_000 },
        }),
        (err: unknown) => err instanceof DwcpDiskFullError && /ENOSPC/.test(err.message),
      );
      await assert.rejects(received, DwcpDiskFullError);
      // Counted, not timed: one attempt opens one connection per stream, and a reconnect would open more.
      assert.ok(dials >= 1 && dials <= 2, `${dials} connections: the sender reconnected after DISK_FULL`);
      // The journal survives, so the transfer can resume once space is freed.
      await access(path.join(mountPoint, 'b.img.dwcp-journal'));
    });
  } finally {
    await exec('umount', [mountPoint]);
  }
});
