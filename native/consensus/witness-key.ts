/**
 * A host's Ed25519 witness key: the private half stays in `<pkiDir>/witness/<hostId>.ed25519.pem` (PKCS#8, 0600),
 * and the public half is what the control plane records for the host and checks the host's votes against.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

export interface WitnessKey {
  hostId: string;
  /** The raw 32-byte Ed25519 public key, base64. */
  publicKey: string;
  /** Signs the bytes; returns the 64-byte Ed25519 signature, base64. */
  sign(body: Buffer): string;
}

export class WitnessKeyError extends Error {
  override readonly name = 'WitnessKeyError';
}

// The host id becomes a file name: a `/` or a leading dot would let it name a file outside the witness directory.
const HOST_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const ED25519_RAW_BYTES = 32;

export function witnessKeyPath(input: { pkiDir: string; hostId: string }): string {
  if (!HOST_ID_RE.test(input.hostId)) throw new WitnessKeyError(`host id ${JSON.stringify(input.hostId)} is not safe`);
  return path.join(input.pkiDir, 'witness', `${input.hostId}.ed25519.pem`);
}

/**
 * Loads the host's witness key, creating it on first use. The file is created exclusively (`wx`), so two agents
 * starting at once for one host end up with the same key: the loser of the race reads the winner's file.
 */
export async function loadOrCreateWitnessKey(input: { pkiDir: string; hostId: string }): Promise<WitnessKey> {
  const file = witnessKeyPath(input);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  let pem = await readKeyFile(file);
  if (pem === undefined) {
    const { privateKey } = generateKeyPairSync('ed25519');
    const created = privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
    try {
      await writeFile(file, created, { flag: 'wx', mode: 0o600 });
      pem = created;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      pem = await readKeyFile(file);
      if (pem === undefined) throw new WitnessKeyError(`${file} vanished while it was being created`, { cause: err });
    }
  }
  // A key another user can read can sign votes for this host: refuse it as ssh refuses such a key.
  const mode = (await stat(file)).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new WitnessKeyError(`${file} has mode ${mode.toString(8)}: a witness key must be readable by its owner only`);
  }
  return witnessKeyFromPem({ hostId: input.hostId, pem, source: file });
}

function witnessKeyFromPem(input: { hostId: string; pem: string; source: string }): WitnessKey {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(input.pem);
  } catch (err) {
    throw new WitnessKeyError(`${input.source} is not a private key: ${(err as Error).message}`, { cause: err });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new WitnessKeyError(`${input.source} holds a ${privateKey.asymmetricKeyType ?? 'unknown'} key, not Ed25519`);
  }
  const publicKey = rawPublicKey(createPublicKey(privateKey));
  return {
    hostId: input.hostId,
    publicKey,
    sign: (body) => sign(null, body, privateKey).toString('base64'),
  };
}

function rawPublicKey(key: KeyObject): string {
  const jwk = key.export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new WitnessKeyError('the Ed25519 public key has no x coordinate');
  return Buffer.from(jwk.x, 'base64url').toString('base64');
}

/** The public key a host registered (raw 32 bytes, base64) as a KeyObject, or undefined when it is not one. */
export function witnessPublicKey(raw: string): KeyObject | undefined {
  const bytes = Buffer.from(raw, 'base64');
  if (bytes.length !== ED25519_RAW_BYTES || bytes.toString('base64') !== raw) return undefined;
  try {
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: bytes.toString('base64url') }, format: 'jwk' });
  } catch {
    return undefined;
  }
}

async function readKeyFile(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}
