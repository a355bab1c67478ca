/**
 * The real machine behind the prerequisite checks, and the context each entry point checks against: `npm start`
 * and `novacron doctor` use the config's ports and data dir, `npm test` its scratch directory.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { NovacronConfig } from '../config/schema';
import { findExecutable } from '../native/libvirt/hypervisor-binaries';
import { builtTemporalBinary, requiredGoVersion, temporalBinaryPath } from '../native/temporal/build';
import { stackPorts, type GoToolchain, type PrerequisiteContext, type PrerequisiteProbes } from './prerequisites';

const ROOT = path.resolve(__dirname, '..');
const MiB = 1024 * 1024;
// Where Debian, Fedora and Alpine keep the bundle Go reads; any one will do.
const CA_BUNDLES = ['/etc/ssl/certs/ca-certificates.crt', '/etc/pki/tls/certs/ca-bundle.crt', '/etc/ssl/cert.pem'];

function goToolchain(): GoToolchain | undefined {
  // Outside any module, so the answer is the installed Go's, not the toolchain a go.mod nearby would switch to.
  const probe = spawnSync(process.env.GO || 'go', ['env', 'GOVERSION', 'GOTOOLCHAIN'], {
    cwd: os.tmpdir(),
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (probe.status !== 0) return undefined;
  const [version = '', toolchain = ''] = probe.stdout.split('\n').map((line) => line.trim());
  return { version, toolchain };
}

function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** Free space where the directory is or will be: its nearest existing ancestor. */
async function freeDiskMib(dir: string): Promise<number> {
  let existing = path.resolve(dir);
  while (!existsSync(existing) && path.dirname(existing) !== existing) existing = path.dirname(existing);
  const stats = await statfs(existing);
  return Math.floor((stats.bavail * stats.bsize) / MiB);
}

export function systemProbes(): PrerequisiteProbes {
  return {
    nodeVersion: process.versions.node,
    isRoot: process.getuid?.() === 0,
    findExecutable,
    goToolchain,
    temporalBinary: () => {
      const built = builtTemporalBinary();
      return built ? { path: built, built: true } : { path: temporalBinaryPath(), built: false };
    },
    hasCaCertificates: () => CA_BUNDLES.some((file) => existsSync(file)),
    portFree,
    freeDiskMib,
  };
}

function nodeRange(): string {
  const manifest = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { engines?: { node?: string } };
  const range = manifest.engines?.node;
  if (!range) throw new Error('package.json has no engines.node');
  return range;
}

/** What `npm start` and `novacron doctor` need: the config's ports free and room under its data dir. */
export function stackContext(config: NovacronConfig): PrerequisiteContext {
  return {
    nodeRange: nodeRange(),
    goModVersion: requiredGoVersion(),
    ...(config.temporal.address ? { temporalAddress: config.temporal.address } : {}),
    ports: stackPorts(config),
    disk: {
      dir: path.resolve(config.system.dataDir),
      minFreeMib: config.system.minResources.diskFreeMib,
      fix: 'free space there, or point NOVACRON_DATA_DIR at a larger disk',
    },
  };
}

/** What `npm test` needs: the servers it starts itself take free ports, and its files go to the temp dir. */
export function testContext(input: {
  env: NodeJS.ProcessEnv;
  scratchParent: string;
  minFreeMib: number;
}): PrerequisiteContext {
  return {
    nodeRange: nodeRange(),
    goModVersion: requiredGoVersion(),
    ...(input.env.TEMPORAL_ADDRESS ? { temporalAddress: input.env.TEMPORAL_ADDRESS } : {}),
    ports: [],
    disk: {
      dir: input.scratchParent,
      minFreeMib: input.minFreeMib,
      fix: 'free space there, or point TMPDIR at a larger disk',
    },
  };
}
