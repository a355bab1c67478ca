/**
 * qcow2 overlays with real qemu-img (as the image activities' tests use it): an overlay names its base and the
 * base's format, reads the base's bytes, is at least the base's size, repeats harmlessly, and refuses a file of
 * another kind at its path. Paths outside the image root and the extra roots are refused before qemu-img runs.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { DiskImageError, DiskImages } from './disk-images';
import { DomainSpecError } from './domain-xml';

const MiB = 1024 * 1024;
const scratch = mkdtempSync(path.join(os.tmpdir(), 'disk-images-'));
const imageRoot = path.join(scratch, 'images');
const poolRoot = path.join(scratch, 'pools', 'shared');
const images = new DiskImages({ imageRoot, otherRoots: [poolRoot] });

function rawBase(file: string, sizeBytes: number, marker: string): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const data = Buffer.alloc(sizeBytes);
  data.write(marker, 0, 'utf8');
  writeFileSync(file, data);
}

test('an overlay in a pool records its base and format and reads the base through it', async () => {
  const base = path.join(poolRoot, 'bases', 'guest.raw');
  rawBase(base, 2 * MiB, 'NOVACRON-BASE');
  const overlay = path.join(poolRoot, 'vms', 'vm-1', 'root.qcow2');
  const first = await images.createOverlay({ path: overlay, backingPath: base, backingFormat: 'raw' });
  assert.equal(first.created, true);
  assert.equal(first.info.format, 'qcow2');
  assert.equal(first.info.backingFile, base);
  assert.equal(first.info.backingFormat, 'raw');
  assert.equal(first.info.virtualSizeBytes, 2 * MiB);
  // A fresh overlay holds metadata only; the data is the base's.
  assert.ok(first.info.actualSizeBytes < 2 * MiB, `overlay allocates ${first.info.actualSizeBytes} bytes`);
  const flat = path.join(scratch, 'flattened.raw');
  execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', overlay, flat]);
  assert.equal(readFileSync(flat).subarray(0, 13).toString('utf8'), 'NOVACRON-BASE');

  const again = await images.createOverlay({ path: overlay, backingPath: base, backingFormat: 'raw' });
  assert.equal(again.created, false);
  assert.equal(again.info.backingFile, base);
});

test('an overlay is the larger of the asked size and the base, in whole sectors', async () => {
  const base = path.join(imageRoot, 'library', 'odd.raw');
  rawBase(base, MiB + 100, 'ODD');
  const bigger = await images.createOverlay({
    path: path.join(imageRoot, 'vm-2', 'root.qcow2'),
    backingPath: base,
    backingFormat: 'raw',
    sizeBytes: 8 * MiB,
  });
  assert.equal(bigger.info.virtualSizeBytes, 8 * MiB);
  const smaller = await images.createOverlay({
    path: path.join(imageRoot, 'vm-3', 'root.qcow2'),
    backingPath: base,
    backingFormat: 'raw',
    sizeBytes: 512,
  });
  assert.equal(smaller.info.virtualSizeBytes, MiB + 512);
});

test('another file at the overlay path, a missing base or a base of another format is refused', async () => {
  const base = path.join(imageRoot, 'library', 'guest.raw');
  rawBase(base, MiB, 'G');
  const plain = path.join(imageRoot, 'vm-4', 'root.qcow2');
  await images.create({ path: plain, format: 'qcow2', sizeBytes: MiB });
  await assert.rejects(
    images.createOverlay({ path: plain, backingPath: base, backingFormat: 'raw' }),
    (err: unknown) => err instanceof DiskImageError && err.code === 'conflict' && /no backing file/.test(err.message),
  );
  await assert.rejects(
    images.createOverlay({
      path: path.join(imageRoot, 'vm-5', 'root.qcow2'),
      backingPath: path.join(imageRoot, 'library', 'missing.raw'),
      backingFormat: 'raw',
    }),
    /backing image .*missing\.raw does not exist/,
  );
  await assert.rejects(
    images.createOverlay({
      path: path.join(imageRoot, 'vm-5', 'root.qcow2'),
      backingPath: base,
      backingFormat: 'qcow2',
    }),
    (err: unknown) => err instanceof DiskImageError && err.code === 'conflict' && /is raw, not qcow2/.test(err.message),
  );
});

test('paths outside the image root and the extra roots are refused, for the overlay and for its base', async () => {
  const base = path.join(imageRoot, 'library', 'guest.raw');
  await assert.rejects(
    images.createOverlay({
      path: path.join(scratch, 'elsewhere', 'root.qcow2'),
      backingPath: base,
      backingFormat: 'raw',
    }),
    DomainSpecError,
  );
  await assert.rejects(
    images.createOverlay({
      path: path.join(imageRoot, 'vm-6', 'root.qcow2'),
      backingPath: '/etc/passwd',
      backingFormat: 'raw',
    }),
    DomainSpecError,
  );
  await assert.rejects(images.info({ path: path.join(scratch, 'pools', 'other', 'x.raw') }), DomainSpecError);
});
