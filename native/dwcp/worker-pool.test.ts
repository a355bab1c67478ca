import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chunkingParams } from './chunking';
import { DwcpCancelledError } from './errors';
import { SourceScan } from './source-scan';
import { DwcpWorkerPool } from './worker-pool';

const MiB = 1024 * 1024;
const chunking = chunkingParams({ avgBytes: 64 * 1024 });
let dir: string;
let file: string;
let size: number;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'dwcp-pool-'));
  file = path.join(dir, 'data.bin');
  // Data, not holes, so every 8 MiB part is read and cut: four parts.
  size = 32 * MiB;
  await writeFile(file, randomBytes(size));
});

after(() => rm(dir, { recursive: true, force: true }));

/** Descriptors of this process (worker threads share them) open on `target`. */
function descriptorsOn(target: string): number {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === target;
    } catch {
      return false;
    }
  }).length;
}

test('a scan given up through its signal stops before its next part, closes its file and frees its worker; a queued task leaves the queue unrun', async () => {
  const pool = new DwcpWorkerPool({ size: 1 });
  try {
    const running = new AbortController();
    const runningParts: unknown[] = [];
    const scan = pool.runWithParts({ kind: 'scanParts', path: file, chunking }, (part) => runningParts.push(part), {
      signal: running.signal,
    });
    const queued = new AbortController();
    const queuedParts: unknown[] = [];
    const waiting = pool.runWithParts({ kind: 'scanParts', path: file, chunking }, (part) => queuedParts.push(part), {
      signal: queued.signal,
    });
    const refused = Promise.all([
      assert.rejects(scan, DwcpCancelledError),
      assert.rejects(waiting, DwcpCancelledError),
    ]);
    // The first task is already on the pool's only worker (dispatch is synchronous); the second waits for it.
    running.abort();
    queued.abort();
    await refused;
    assert.deepEqual(queuedParts, []);
    assert.ok(runningParts.length < 4, `${runningParts.length} of 4 parts arrived after the cancel`);
    assert.equal(descriptorsOn(file), 0, 'the cancelled scan closed its file');

    // The same worker then runs a whole scan: a cancel names its task, so it does not stop the next one.
    const parts: unknown[] = [];
    const whole = await pool.runWithParts({ kind: 'scanParts', path: file, chunking }, (part) => parts.push(part), {
      signal: new AbortController().signal,
    });
    assert.equal(whole.size, size);
    assert.equal(parts.length, 4);
    // A cancel after the end changes nothing.
    const late = new AbortController();
    const done = await pool.runWithParts({ kind: 'scanParts', path: file, chunking }, () => undefined, {
      signal: late.signal,
    });
    late.abort();
    assert.equal(done.chunkCount, whole.chunkCount);
    await assert.rejects(
      pool.runWithParts({ kind: 'scanParts', path: file, chunking }, () => undefined, { signal: late.signal }),
      DwcpCancelledError,
      'an aborted signal stops a task before it starts',
    );
  } finally {
    await pool.close();
  }
});

test('a cancelled source scan fails whoever still waits for it with DwcpCancelledError', async () => {
  const pool = new DwcpWorkerPool({ size: 1 });
  try {
    const scan = new SourceScan({ pool, path: file, chunking, size, hashWholeFile: true });
    scan.cancel();
    await assert.rejects(scan.done(), DwcpCancelledError);
    await assert.rejects(scan.entriesFrom(0), DwcpCancelledError);
    // The worker is free again.
    assert.equal((await pool.run({ kind: 'hashFile', path: file })).sha256.length, 64);
  } finally {
    await pool.close();
  }
});
