/**
 * The image activities in MockActivityEnvironment, over real DWCP receivers on 127.0.0.1 with certificates from a
 * throwaway CA and real qemu-img: heartbeated progress, typed permanent failures, a cancelled activity that stops
 * the transfer and leaves no partial file, and a receiver's cancel that keeps its journal for the retries to resume.
 */
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { configSchema } from '../config/schema';
import {
  createCertificateAuthority,
  DwcpError,
  DwcpReceiver,
  DwcpWorkerPool,
  issueHostCertificate,
  readTlsMaterial,
  type TlsMaterial,
} from '../native/dwcp';
import { DiskImages } from '../native/libvirt';
import { waitUntil } from '../test/support/wait';
import { createImageActivities, parseEndpoint, type TransferHeartbeat } from './image-activities';

const MiB = 1024 * 1024;
const root = mkdtempSync(path.join(os.tmpdir(), 'image-activities-'));
const pool = new DwcpWorkerPool({ size: 2 });
const hosts: Record<string, { tls: TlsMaterial; receiver: DwcpReceiver; imageRoot: string }> = {};
const config = configSchema.parse({ dwcp: { mode: 'datacenter' } });

before(async () => {
  const caDir = path.join(root, 'pki', 'ca');
  await createCertificateAuthority({ dir: caDir });
  for (const hostId of ['src', 'dst']) {
    const certificate = await issueHostCertificate({ caDir, hostId, dir: path.join(root, 'pki'), ips: ['127.0.0.1'] });
    const tls = await readTlsMaterial({ certificate });
    const receiver = await DwcpReceiver.start({ tls, host: '127.0.0.1', port: 0, pool });
    hosts[hostId] = { tls, receiver, imageRoot: path.join(root, hostId) };
  }
});

after(async () => {
  for (const host of Object.values(hosts)) await host.receiver.close();
  await pool.close();
});

function activities(hostId: string, hostConfig = config, receiver = hosts[hostId]!.receiver) {
  const host = hosts[hostId]!;
  return createImageActivities({
    hostId,
    imageRoot: host.imageRoot,
    config: hostConfig,
    images: new DiskImages({ imageRoot: host.imageRoot }),
    receiver,
    tls: host.tls,
    pool,
  });
}

async function placeImage(hostId: string, imageId: string, data: Buffer, fileFormat = 'raw'): Promise<string> {
  const file = path.join(hosts[hostId]!.imageRoot, 'library', `${imageId}.${fileFormat}`);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, data);
  return createHash('sha256').update(data).digest('hex');
}

/** MockActivityEnvironment.run loses the activity's result type. */
function runIn<R>(env: MockActivityEnvironment, fn: () => Promise<R>): Promise<R> {
  return env.run<[], R, () => Promise<R>>(fn);
}

function failureType(err: unknown): string | undefined {
  return err instanceof ApplicationFailure ? `${err.type}${err.nonRetryable ? ' (permanent)' : ''}` : undefined;
}

test('inspectImage hashes the library file and refuses a missing file or a wrong format for good', async () => {
  const sha256 = await placeImage('src', 'inspect-me', randomBytes(3 * MiB));
  const env = new MockActivityEnvironment();
  const inspected = await runIn(env, () => activities('src').inspectImage({ imageId: 'inspect-me', format: 'raw' }));
  assert.deepEqual(inspected, {
    path: path.join(hosts.src!.imageRoot, 'library', 'inspect-me.raw'),
    sizeBytes: 3 * MiB,
    sha256,
  });
  const missing = await runIn(env, () => activities('src').inspectImage({ imageId: 'absent', format: 'raw' })).catch(
    (e: unknown) => e,
  );
  assert.equal(failureType(missing), 'ImageFileMissing (permanent)');
  await placeImage('src', 'not-qcow2', randomBytes(MiB), 'qcow2');
  const wrongFormat = await runIn(env, () =>
    activities('src').inspectImage({ imageId: 'not-qcow2', format: 'qcow2' }),
  ).catch((e: unknown) => e);
  assert.equal(failureType(wrongFormat), 'ImageFormatMismatch (permanent)');
});

test('transferImage and receiveImage move an image with heartbeated progress and the same sha256', async () => {
  const data = Buffer.concat([randomBytes(6 * MiB), Buffer.alloc(10 * MiB)]);
  const sha256 = await placeImage('src', 'moved', data);
  const transferId = '0d4c7a52-7c0e-4e43-9d8a-1f2a3b4c5d6e';
  const sendBeats: TransferHeartbeat[] = [];
  const sender = new MockActivityEnvironment();
  sender.on('heartbeat', (d: TransferHeartbeat) => sendBeats.push(d));
  const receiver = new MockActivityEnvironment();
  const [received, sent] = await Promise.all([
    runIn(receiver, () =>
      activities('dst').receiveImage({
        imageId: 'moved',
        format: 'raw' as const,
        sha256,
        transferId,
        sourceHostId: 'src',
      }),
    ),
    runIn(sender, () =>
      activities('src').transferImage({
        imageId: 'moved',
        format: 'raw' as const,
        sha256,
        transferId,
        targetHostId: 'dst',
        endpoint: `127.0.0.1:${hosts.dst!.receiver.port}`,
        probe: { rttMs: 0.2, bandwidthMbps: 20_000 },
      }),
    ),
  ]);
  const copy = await readFile(received.path);
  assert.equal(createHash('sha256').update(copy).digest('hex'), sha256);
  assert.equal(sent.mode, 'datacenter', 'dwcp.mode in config overrides the probe');
  assert.equal(sent.logicalBytes, 16 * MiB);
  assert.ok(sent.chunks.zero > 0, 'the zero half is not sent');
  assert.equal(sendBeats[0]!.phase, 'calibrating');
  const sending = sendBeats.filter((b) => b.phase === 'sending');
  assert.ok(sending.length >= 2, `heartbeats: ${JSON.stringify(sendBeats)}`);
  assert.ok(
    sending.every((b, i) => i === 0 || b.logicalBytes >= sending[i - 1]!.logicalBytes),
    'progress only grows',
  );
  assert.deepEqual([sending.at(-1)!.logicalBytes, sending.at(-1)!.totalBytes], [16 * MiB, 16 * MiB]);

  const again = await runIn(new MockActivityEnvironment(), () =>
    activities('dst').receiveImage({
      imageId: 'moved',
      format: 'raw' as const,
      sha256,
      transferId: '5e6f7a8b-0000-4000-8000-000000000001',
      sourceHostId: 'src',
    }),
  );
  assert.equal(again.alreadyPresent, true, 'a verified copy is not received twice');
});

test('content that no longer matches the image fails both sides for good and keeps no copy', async () => {
  await placeImage('src', 'changed', randomBytes(MiB));
  const image = { imageId: 'changed', format: 'raw' as const, sha256: 'f'.repeat(64) };
  const transferId = '7a7a7a7a-1111-4222-8333-444455556666';
  const [receiveErr, sendErr] = await Promise.all([
    runIn(new MockActivityEnvironment(), () =>
      activities('dst').receiveImage({ ...image, transferId, sourceHostId: 'src' }),
    ).catch((e: unknown) => e),
    runIn(new MockActivityEnvironment(), () =>
      activities('src').transferImage({
        ...image,
        transferId,
        targetHostId: 'dst',
        endpoint: `127.0.0.1:${hosts.dst!.receiver.port}`,
        probe: { rttMs: 0.2, bandwidthMbps: 20_000 },
      }),
    ).catch((e: unknown) => e),
  ]);
  assert.equal(failureType(receiveErr), 'ImageContentMismatch (permanent)');
  assert.equal(failureType(sendErr), 'ImageContentMismatch (permanent)');
  assert.equal(existsSync(path.join(hosts.dst!.imageRoot, 'library', 'changed.raw')), false);
});

/** The host's receiver, seen through a proxy that notes when a transfer is registered with it. */
function watchedReceiver(hostId: string): { receiver: DwcpReceiver; registered: () => boolean } {
  let registered = false;
  const receiver = new Proxy(hosts[hostId]!.receiver, {
    get(inner, property) {
      if (property === 'expectFile') {
        return (input: Parameters<DwcpReceiver['expectFile']>[0]) => {
          const result = inner.expectFile(input);
          registered = true;
          return result;
        };
      }
      const value: unknown = Reflect.get(inner, property, inner);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(inner) : value;
    },
  });
  return { receiver, registered: () => registered };
}

test('cancelling receiveImage stops the transfer and leaves no partial file or journal', async () => {
  const env = new MockActivityEnvironment();
  const watched = watchedReceiver('dst');
  const running = runIn(env, () =>
    activities('dst', config, watched.receiver).receiveImage({
      imageId: 'never',
      format: 'raw' as const,
      sha256: 'e'.repeat(64),
      transferId: '9b9b9b9b-1111-4222-8333-444455556666',
      sourceHostId: 'src',
    }),
  );
  // Cancelled once the transfer is registered, the state this test is about, rather than after a guessed delay.
  await waitUntil('receiveImage to register the transfer', watched.registered);
  env.cancel();
  const err = await running.catch((e: unknown) => e);
  assert.ok(err instanceof CancelledFailure, `expected CancelledFailure, got ${String(err)}`);
  const library = path.join(hosts.dst!.imageRoot, 'library');
  const leftovers = existsSync(library) ? (await readdir(library)).filter((f) => f.startsWith('never')) : [];
  assert.deepEqual(leftovers, []);
  assert.equal(hosts.dst!.receiver.cancel('9b9b9b9b-1111-4222-8333-444455556666'), false, 'no longer expected');
});

// Bounded: without the fix the activity waits for a sender forever.
test(
  'a cancel that arrives before receiveImage registers its transfer still ends it, and nothing is registered',
  { timeout: 60_000 },
  async () => {
    const env = new MockActivityEnvironment();
    const watched = watchedReceiver('dst');
    // Cancelled before the activity runs: the abort event has fired before receiveImage could listen for it, as it
    // does when the cancel lands while the library directory is being created.
    env.cancel();
    const err = await runIn(env, () =>
      activities('dst', config, watched.receiver).receiveImage({
        imageId: 'early',
        format: 'raw' as const,
        sha256: 'f'.repeat(64),
        transferId: '7c7c7c7c-1111-4222-8333-444455556666',
        sourceHostId: 'src',
      }),
    ).catch((e: unknown) => e);
    assert.ok(err instanceof CancelledFailure, `expected CancelledFailure, got ${String(err)}`);
    assert.equal(watched.registered(), false, 'the transfer was never registered');
  },
);

test('a receiver that cancels keeps its journal: both activities fail retryably, and their retries resume', async () => {
  const size = 16 * MiB;
  const image = {
    imageId: 'resumed',
    format: 'raw' as const,
    sha256: await placeImage('src', 'resumed', randomBytes(size)),
  };
  const transferId = '3c3c3c3c-1111-4222-8333-444455556666';
  const transfer = { ...image, transferId, targetHostId: 'dst', endpoint: `127.0.0.1:${hosts.dst!.receiver.port}` };
  const probe = { rttMs: 0.2, bandwidthMbps: 20_000 };
  // 80 Mbit/s: the 16 MiB take over a second to send, so the cancel at a quarter lands mid-transfer.
  const throttled = configSchema.parse({ dwcp: { mode: 'datacenter', transport: { rateLimitMbps: 80 } } });
  const receiving = new MockActivityEnvironment();
  receiving.on('heartbeat', (beat: TransferHeartbeat) => {
    // What an agent's receiver does as it shuts down (close() cancels every transfer), for this one transfer.
    if (beat.logicalBytes >= size / 4) hosts.dst!.receiver.cancel(transferId);
  });
  const [receiveErr, sendErr] = await Promise.all([
    runIn(receiving, () => activities('dst').receiveImage({ ...image, transferId, sourceHostId: 'src' })).catch(
      (e: unknown) => e,
    ),
    runIn(new MockActivityEnvironment(), () =>
      activities('src', throttled).transferImage({ ...transfer, probe }),
    ).catch((e: unknown) => e),
  ]);
  assert.equal(failureType(receiveErr), 'DwcpCancelled');
  assert.equal(failureType(sendErr), 'DwcpCancelled', 'the sender stops, and a retry of it may still succeed');
  // The CANCELLED the sender read from the wire says the same as the activities: a retry can succeed.
  const cancelled = DwcpError.fromCode({ code: 'CANCELLED', message: 'cancelled by the receiver' });
  assert.equal(cancelled.retryable, !(sendErr as ApplicationFailure).nonRetryable, 'DwcpCancelledError.retryable');
  const library = path.join(hosts.dst!.imageRoot, 'library');
  assert.deepEqual(
    (await readdir(library)).filter((f) => f.startsWith('resumed.')).sort(),
    ['resumed.raw.dwcp-journal', 'resumed.raw.dwcp-partial'],
    'the partial file and its journal stay for the retry',
  );

  // The retries, as Temporal would run them: the same transfer id on both sides.
  const [received, sent] = await Promise.all([
    runIn(new MockActivityEnvironment(), () =>
      activities('dst').receiveImage({ ...image, transferId, sourceHostId: 'src' }),
    ),
    runIn(new MockActivityEnvironment(), () => activities('src').transferImage({ ...transfer, probe })),
  ]);
  assert.equal(
    createHash('sha256')
      .update(await readFile(received.path))
      .digest('hex'),
    image.sha256,
  );
  assert.equal(sent.logicalBytes, size);
  assert.ok(sent.chunks.resumed > 0, `the retry resumed from the journal: ${JSON.stringify(sent.chunks)}`);
  assert.ok(sent.wireBytes < size, `only what the first attempt had not delivered crossed again: ${sent.wireBytes}`);
});

test('endpoints parse as host:port, IPv6 in brackets, and anything else is refused for good', () => {
  assert.deepEqual(parseEndpoint('10.0.0.5:7480'), { host: '10.0.0.5', port: 7480 });
  assert.deepEqual(parseEndpoint('[fd00::5]:7480'), { host: 'fd00::5', port: 7480 });
  assert.deepEqual(parseEndpoint('hv-1.example:9'), { host: 'hv-1.example', port: 9 });
  for (const bad of ['10.0.0.5', '10.0.0.5:0', '10.0.0.5:70000', ':7480', 'fd00::5:7480']) {
    assert.throws(
      () => parseEndpoint(bad),
      (e: unknown) => failureType(e) === 'InvalidEndpoint (permanent)',
      bad,
    );
  }
});
