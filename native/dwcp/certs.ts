/**
 * A private CA and host certificates for DWCP's mutual TLS, made with the `openssl` CLI. Arguments are passed as an
 * argv array (no shell) and every name that reaches openssl is validated first, so a host id cannot smuggle in
 * extra subject fields or options.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface CertificateAuthority {
  certPath: string;
  keyPath: string;
}

export interface HostCertificate {
  certPath: string;
  keyPath: string;
  caPath: string;
}

/** PEM material for node:tls, as both sides of a DWCP connection need it. */
export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

const NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$/;
const DNS_RE =
  /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

async function openssl(args: string[]): Promise<void> {
  try {
    await run('openssl', args, { timeout: 60_000 });
  } catch (err) {
    const stderr = typeof err === 'object' && err !== null && 'stderr' in err ? String(err.stderr) : '';
    throw new Error(`openssl ${args[0] ?? ''} failed: ${stderr.trim() || String(err)}`, { cause: err });
  }
}

/** Creates ca.crt and ca.key (ECDSA P-256, 10 years) in `dir`. */
export async function createCertificateAuthority(input: { dir: string; name?: string }): Promise<CertificateAuthority> {
  const name = input.name ?? 'novacron-dwcp-ca';
  if (!NAME_RE.test(name)) throw new Error(`invalid CA name: ${name}`);
  await mkdir(input.dir, { recursive: true, mode: 0o700 });
  const certPath = path.join(input.dir, 'ca.crt');
  const keyPath = path.join(input.dir, 'ca.key');
  await openssl([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    keyPath,
    '-out',
    certPath,
    '-days',
    '3650',
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE,pathlen:0',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  await chmod(keyPath, 0o600);
  return { certPath, keyPath };
}

/**
 * Issues `<hostId>.crt`/`.key` signed by the CA in `caDir`, valid for both server and client auth (every host
 * agent both sends and receives). The subject alternative names are what TLS checks the peer's address against.
 */
export async function issueHostCertificate(input: {
  caDir: string;
  hostId: string;
  dir: string;
  ips?: string[];
  dnsNames?: string[];
  days?: number;
}): Promise<HostCertificate> {
  const { hostId } = input;
  if (!NAME_RE.test(hostId)) throw new Error(`invalid host id: ${hostId}`);
  const ips = input.ips ?? [];
  const dnsNames = input.dnsNames ?? [];
  for (const ip of ips) if (isIP(ip) === 0) throw new Error(`invalid IP address: ${ip}`);
  for (const dns of dnsNames) if (!DNS_RE.test(dns)) throw new Error(`invalid DNS name: ${dns}`);
  if (ips.length + dnsNames.length === 0) throw new Error('a host certificate needs at least one IP or DNS name');
  const days = input.days ?? 825;
  if (!Number.isInteger(days) || days < 1 || days > 3650) throw new Error(`invalid validity: ${days} days`);

  await mkdir(input.dir, { recursive: true, mode: 0o700 });
  const caCert = path.join(input.caDir, 'ca.crt');
  const caKey = path.join(input.caDir, 'ca.key');
  const keyPath = path.join(input.dir, `${hostId}.key`);
  const certPath = path.join(input.dir, `${hostId}.crt`);
  const csrPath = path.join(input.dir, `${hostId}.csr`);
  const extPath = path.join(input.dir, `${hostId}.ext`);
  const san = [...dnsNames.map((d) => `DNS:${d}`), ...ips.map((ip) => `IP:${ip}`)].join(',');
  await writeFile(
    extPath,
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth,clientAuth',
      `subjectAltName=${san}`,
      '',
    ].join('\n'),
  );
  try {
    await openssl([
      'req',
      '-new',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      keyPath,
      '-out',
      csrPath,
      '-subj',
      `/CN=${hostId}`,
    ]);
    await chmod(keyPath, 0o600);
    // A random serial instead of -CAcreateserial: no shared serial file to race on when hosts enrol concurrently.
    await openssl([
      'x509',
      '-req',
      '-in',
      csrPath,
      '-CA',
      caCert,
      '-CAkey',
      caKey,
      '-set_serial',
      `0x${randomBytes(16).toString('hex')}`,
      '-days',
      String(days),
      '-sha256',
      '-extfile',
      extPath,
      '-out',
      certPath,
    ]);
  } finally {
    await rm(csrPath, { force: true });
    await rm(extPath, { force: true });
  }
  return { certPath, keyPath, caPath: caCert };
}

export async function readTlsMaterial(input: { certificate: HostCertificate }): Promise<TlsMaterial> {
  const [ca, cert, key] = await Promise.all([
    readFile(input.certificate.caPath),
    readFile(input.certificate.certPath),
    readFile(input.certificate.keyPath),
  ]);
  return { ca, cert, key };
}
