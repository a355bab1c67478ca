/**
 * ensureImageBase in MockActivityEnvironment over real files and the DWCP worker pool's hashing: the local pool's
 * base is the host's replica; a shared pool's base is copied once from a replica, verified, and never replaced;
 * two hosts of a pool making it at once end with one base.
 */
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { DwcpWorkerPool } from '../native/dwcp';
import { createImageBaseActivities, type EnsureImageBaseResult } from './image-base-activities';

const root = mkdtempSync(path.join(os.tmpdir(), 'image-base-'));
const shared = path.join(root, 'pools', 'shared');
const pool = new DwcpWorkerPool({ size: 1 });

after(async () => pool.close());

function host(hostId: string) {
  const imageRoot = path.join(root, hostId);
  return {
    imageRoot,
    acts: createImageBaseActivities({ hostId, imageRoot, storagePools: { shared }, pool }),
  };
}

async function placeReplica(imageRoot: string, imageId: string, data: Buffer) {
  const file = path.join(imageRoot, 'library', `${imageId}.raw`);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, data);
  return {
    imageId,
    format: 'raw' as const,
    sha256: createHash('sha256').update(data).digest('hex'),
    sizeBytes: data.length,
  };
}

function run(fn: () => Promise<EnsureImageBaseResult>): Promise<EnsureImageBaseResult> {
  return new MockActivityEnvironment().run<[], EnsureImageBaseResult, typeof fn>(fn);
}

const failureType = (err: unknown) =>
  err instanceof ApplicationFailure && err.nonRetryable ? err.type : `not a permanent failure: ${String(err)}`;

test('the local pool uses the host replica, and asks for one when the host has none', async () => {
  const a = host('local-a');
  const image = { imageId: 'guest', format: 'raw' as const, sha256: 'f'.repeat(64), sizeBytes: 4096 };
  assert.deepEqual(await run(() => a.acts.ensureImageBase({ ...image, storagePool: 'local' })), {
    state: 'needs-replica',
  });
  const placed = await placeReplica(a.imageRoot, 'guest', randomBytes(4096));
  assert.deepEqual(await run(() => a.acts.ensureImageBase({ ...placed, storagePool: 'local' })), {
    state: 'ready',
    path: path.join(a.imageRoot, 'library', 'guest.raw'),
    format: 'raw',
    copied: false,
  });
});

test('a shared pool gets one verified, read-only base, copied from the first host with a replica', async () => {
  const a = host('shared-a');
  const b = host('shared-b');
  const data = randomBytes(3 * 1024 * 1024);
  const image = await placeReplica(a.imageRoot, 'web', data);
  await placeReplica(b.imageRoot, 'web', data);
  const input = { ...image, storagePool: 'shared' };
  const [first, second] = await Promise.all([
    run(() => a.acts.ensureImageBase(input)),
    run(() => b.acts.ensureImageBase(input)),
  ]);
  const base = path.join(shared, 'bases', 'web.raw');
  for (const result of [first, second])
    assert.deepEqual(
      { ...result, copied: undefined },
      { state: 'ready', path: base, format: 'raw', copied: undefined },
    );
  assert.ok([first, second].filter((r) => r.state === 'ready' && r.copied).length >= 1);
  assert.deepEqual(await readFile(base), data);
  assert.equal((await stat(base)).mode & 0o777, 0o444);
  assert.deepEqual(
    (await readdir(path.dirname(base))).filter((name) => name.includes('web')),
    ['web.raw'],
    'no staging copies are left behind',
  );
  // A third host of the pool, with no replica at all, finds the base.
  const c = host('shared-c');
  assert.deepEqual(await run(() => c.acts.ensureImageBase(input)), {
    state: 'ready',
    path: base,
    format: 'raw',
    copied: false,
  });
});

test('a shared pool base is made only from a replica that matches the image, and never replaced', async () => {
  const a = host('mismatch-a');
  const image = await placeReplica(a.imageRoot, 'db', randomBytes(8192));
  const wrongHash = { ...image, sha256: '0'.repeat(64), storagePool: 'shared' };
  await assert.rejects(
    run(() => a.acts.ensureImageBase(wrongHash)),
    (err) => failureType(err) === 'ImageContentMismatch',
  );
  assert.ok(!existsSync(path.join(shared, 'bases', 'db.raw')));
  assert.deepEqual(
    (await readdir(path.join(shared, 'bases'))).filter((name) => name.includes('db')),
    [],
  );

  await writeFile(path.join(shared, 'bases', 'db.raw'), 'someone else put this here');
  await assert.rejects(
    run(() => a.acts.ensureImageBase({ ...image, storagePool: 'shared' })),
    (err) => failureType(err) === 'ImageBaseConflict',
  );
  assert.equal(await readFile(path.join(shared, 'bases', 'db.raw'), 'utf8'), 'someone else put this here');
});

test('a pool the host does not mount fails for good', async () => {
  const a = host('unmounted-a');
  await assert.rejects(
    run(() =>
      a.acts.ensureImageBase({
        imageId: 'x',
        format: 'raw',
        sha256: 'f'.repeat(64),
        sizeBytes: 1,
        storagePool: 'nfs-9',
      }),
    ),
    (err) => failureType(err) === 'StoragePoolNotMounted',
  );
});
