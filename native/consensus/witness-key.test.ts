import assert from 'node:assert/strict';
import { createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { loadOrCreateWitnessKey, witnessKeyPath, witnessPublicKey, WitnessKeyError } from './witness-key';

let pkiDir: string;

before(async () => {
  pkiDir = await mkdtemp(path.join(tmpdir(), 'novacron-witness-key-'));
});

after(async () => {
  await rm(pkiDir, { recursive: true, force: true });
});

test('the key is created once, owner-only, under <pkiDir>/witness, and the same key is loaded after', async () => {
  const first = await loadOrCreateWitnessKey({ pkiDir, hostId: 'host-1' });
  const file = path.join(pkiDir, 'witness', 'host-1.ed25519.pem');
  assert.equal(witnessKeyPath({ pkiDir, hostId: 'host-1' }), file);
  assert.equal((await stat(file)).mode & 0o777, 0o600);
  assert.match(await readFile(file, 'utf8'), /^-----BEGIN PRIVATE KEY-----/);
  assert.equal(Buffer.from(first.publicKey, 'base64').length, 32);

  const again = await loadOrCreateWitnessKey({ pkiDir, hostId: 'host-1' });
  assert.equal(again.publicKey, first.publicKey);
  const other = await loadOrCreateWitnessKey({ pkiDir, hostId: 'host-2' });
  assert.notEqual(other.publicKey, first.publicKey);
});

test('a signature verifies against the raw public key and against nothing else', async () => {
  const key = await loadOrCreateWitnessKey({ pkiDir, hostId: 'host-3' });
  const body = Buffer.from('a vote');
  const signature = Buffer.from(key.sign(body), 'base64');
  assert.equal(signature.length, 64);
  const publicKey = witnessPublicKey(key.publicKey);
  assert.ok(publicKey);
  assert.equal(verify(null, body, publicKey, signature), true);
  assert.equal(verify(null, Buffer.from('another vote'), publicKey, signature), false);
  // The raw form is the key file's public half: the last 32 bytes of its SPKI encoding.
  const pem = await readFile(witnessKeyPath({ pkiDir, hostId: 'host-3' }), 'utf8');
  const spki = createPublicKey(pem).export({ format: 'der', type: 'spki' });
  assert.equal(spki.subarray(-32).toString('base64'), key.publicKey);
});

test('agents racing to create one host key end with one key', async () => {
  const keys = await Promise.all(
    Array.from({ length: 5 }, () => loadOrCreateWitnessKey({ pkiDir, hostId: 'host-race' })),
  );
  assert.equal(new Set(keys.map((k) => k.publicKey)).size, 1);
});

test('a public key that is not 32 raw bytes in canonical base64 is not a key', () => {
  assert.equal(witnessPublicKey(''), undefined);
  assert.equal(witnessPublicKey(Buffer.alloc(31).toString('base64')), undefined);
  assert.equal(witnessPublicKey('not base64 at all!'), undefined);
});

test('a host id that could leave the witness directory is refused', async () => {
  for (const hostId of ['../host-1', 'a/b', '.hidden', '']) {
    await assert.rejects(loadOrCreateWitnessKey({ pkiDir, hostId }), WitnessKeyError, hostId);
  }
});

test('a key file others can read, or one that is not Ed25519, is refused', async () => {
  await loadOrCreateWitnessKey({ pkiDir, hostId: 'host-open' });
  const open = witnessKeyPath({ pkiDir, hostId: 'host-open' });
  await chmod(open, 0o644);
  await assert.rejects(loadOrCreateWitnessKey({ pkiDir, hostId: 'host-open' }), /mode 644/);

  const garbage = witnessKeyPath({ pkiDir, hostId: 'host-garbage' });
  await writeFile(garbage, 'not a key', { mode: 0o600 });
  await assert.rejects(loadOrCreateWitnessKey({ pkiDir, hostId: 'host-garbage' }), /not a private key/);

  const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const ecFile = witnessKeyPath({ pkiDir, hostId: 'host-ec' });
  await writeFile(ecFile, ec.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  await assert.rejects(loadOrCreateWitnessKey({ pkiDir, hostId: 'host-ec' }), /holds a ec key, not Ed25519/);
});
