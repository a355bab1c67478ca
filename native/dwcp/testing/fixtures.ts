/**
 * Test fixtures for DWCP: a throwaway PKI (fleet CA plus a rogue CA) and deterministic test content that mixes
 * compressible text, incompressible noise and zero runs, like a real disk image; and the receiver on loopback that
 * the transfer tests share.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  createCertificateAuthority,
  issueHostCertificate,
  readTlsMaterial,
  type HostCertificate,
  type TlsMaterial,
} from '../certs';
import { DwcpReceiver } from '../receiver';
import { DwcpWorkerPool } from '../worker-pool';

export interface TestPki {
  receiver: TlsMaterial;
  sender: TlsMaterial;
  /** A certificate from a CA the fleet does not trust, with the same names as the real ones. */
  rogue: TlsMaterial;
  /** The receiver's files, for a receiver in another process. */
  receiverFiles: HostCertificate;
}

export async function createTestPki(input: { dir: string }): Promise<TestPki> {
  const caDir = path.join(input.dir, 'ca');
  const rogueCaDir = path.join(input.dir, 'rogue-ca');
  await createCertificateAuthority({ dir: caDir });
  await createCertificateAuthority({ dir: rogueCaDir, name: 'rogue-ca' });
  const names = { ips: ['127.0.0.1'], dnsNames: ['localhost'] };
  const [receiver, sender, rogue] = await Promise.all([
    issueHostCertificate({ caDir, hostId: 'receiver-host', dir: path.join(input.dir, 'hosts'), ...names }),
    issueHostCertificate({ caDir, hostId: 'sender-host', dir: path.join(input.dir, 'hosts'), ...names }),
    issueHostCertificate({ caDir: rogueCaDir, hostId: 'sender-host', dir: path.join(input.dir, 'rogue'), ...names }),
  ]);
  return {
    receiver: await readTlsMaterial({ certificate: receiver }),
    sender: await readTlsMaterial({ certificate: sender }),
    rogue: await readTlsMaterial({ certificate: rogue }),
    receiverFiles: receiver,
  };
}

/** xorshift32: reproducible noise, so a failing test sees the same bytes on every run. */
function noise(seed: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** About `bytes` of content in 256 KiB regions cycling through text, noise and zeros. */
export function makeTestContent(input: { bytes: number; seed?: number }): Buffer {
  const region = 256 * 1024;
  const parts: Buffer[] = [];
  const seed = input.seed ?? 1;
  for (let at = 0, i = 0; at < input.bytes; at += region, i++) {
    const length = Math.min(region, input.bytes - at);
    if (i % 3 === 0) {
      const line = `line ${seed}:${i} of some compressible text\n`;
      parts.push(Buffer.from(line.repeat(Math.ceil(length / line.length))).subarray(0, length));
    } else if (i % 3 === 1) parts.push(noise(seed * 7919 + i, length));
    else parts.push(Buffer.alloc(length));
  }
  return Buffer.concat(parts);
}

export function noiseContent(input: { bytes: number; seed: number }): Buffer {
  return noise(input.seed, input.bytes);
}

export async function writeTestFile(input: { path: string; content: Buffer }): Promise<string> {
  await writeFile(input.path, input.content);
  return createHash('sha256').update(input.content).digest('hex');
}

export async function sha256File(input: { path: string }): Promise<string> {
  return createHash('sha256')
    .update(await readFile(input.path))
    .digest('hex');
}

export interface LoopbackReceiver {
  /** A scratch directory of its own, removed by closeLoopbackReceiver. */
  dir: string;
  pki: TestPki;
  pool: DwcpWorkerPool;
  receiver: DwcpReceiver;
}

/** What each loopback test file starts before its tests: a scratch dir, a test PKI, two workers and a receiver. */
export async function startLoopbackReceiver(input: { prefix: string }): Promise<LoopbackReceiver> {
  const dir = await mkdtemp(path.join(tmpdir(), input.prefix));
  const pki = await createTestPki({ dir: path.join(dir, 'pki') });
  const pool = new DwcpWorkerPool({ size: 2 });
  const receiver = await DwcpReceiver.start({ tls: pki.receiver, host: '127.0.0.1', pool });
  return { dir, pki, pool, receiver };
}

export async function closeLoopbackReceiver(input: LoopbackReceiver): Promise<void> {
  await input.receiver.close();
  await input.pool.close();
  await rm(input.dir, { recursive: true, force: true });
}
