/**
 * The host agent's DWCP certificate. Production fleets issue certificates with `novacron certs` and copy each host
 * its own pair plus ca/ca.crt (never ca.key). On a development machine the agent issues its own from ca/ca.key, and
 * creates that CA when the directory has none, so `npm start` needs no set-up.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import {
  createCertificateAuthority,
  issueHostCertificate,
  readTlsMaterial,
  type HostCertificate,
  type TlsMaterial,
} from '../native/dwcp';

export class HostPkiError extends Error {
  override readonly name = 'HostPkiError';
}

export async function ensureHostTls(input: {
  pkiDir: string;
  hostId: string;
  /** The address peers dial; it becomes the certificate's IP or DNS name. */
  address: string;
}): Promise<{ tls: TlsMaterial; certificate: HostCertificate; issued: boolean }> {
  const caDir = path.join(input.pkiDir, 'ca');
  const certificate: HostCertificate = {
    certPath: path.join(input.pkiDir, `${input.hostId}.crt`),
    keyPath: path.join(input.pkiDir, `${input.hostId}.key`),
    caPath: path.join(caDir, 'ca.crt'),
  };
  let issued = false;
  if (!existsSync(certificate.certPath) || !existsSync(certificate.keyPath)) {
    if (!existsSync(path.join(caDir, 'ca.key'))) await createCaOnce(caDir);
    const names = isIP(input.address) ? { ips: [input.address] } : { dnsNames: [input.address] };
    await issueHostCertificate({ caDir, hostId: input.hostId, dir: input.pkiDir, ...names });
    issued = true;
  }
  if (!existsSync(certificate.caPath)) {
    throw new HostPkiError(`DWCP needs the fleet CA certificate at ${certificate.caPath} (see novacron certs)`);
  }
  return { tls: await readTlsMaterial({ certificate }), certificate, issued };
}

/**
 * Several local agents may start at once on one data directory; each builds a CA aside and renames it into place,
 * and the losers of that race use the winner's, so every agent trusts the same CA.
 */
async function createCaOnce(caDir: string): Promise<void> {
  await mkdir(path.dirname(caDir), { recursive: true, mode: 0o700 });
  const staging = `${caDir}.${randomBytes(6).toString('hex')}`;
  await createCertificateAuthority({ dir: staging, name: 'novacron-ca' });
  try {
    await rename(staging, caDir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
