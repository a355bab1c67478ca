/**
 * The base a VM's overlay stands on, made ready in the VM's storage pool on the host that creates the VM. For
 * `local` that is the host's library replica, which only replicateImage puts there (DWCP, deduplicated against the
 * library). A shared pool holds one base per image for all its hosts, copied once from a host's ready replica and
 * checked against the image's sha256 before it appears under its final name, so a base that exists is verified.
 * A base is never written again: overlays of running guests read it.
 */
import { ApplicationFailure, cancellationSignal, Context } from '@temporalio/activity';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, link, mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { hashFileInPool, type DwcpWorkerPool } from '../native/dwcp';
import type { ImageFormat } from '../domain/image';
import { LOCAL_STORAGE_POOL } from '../domain/vm-spec';
import { imageBasePath, type HostStorage } from './storage-paths';

export interface ImageBaseDeps extends HostStorage {
  hostId: string;
  /** Hashes off the agent's event loop. */
  pool: DwcpWorkerPool;
}

export interface EnsureImageBaseInput {
  imageId: string;
  format: ImageFormat;
  sha256: string;
  sizeBytes: number;
  storagePool: string;
}

export type EnsureImageBaseResult =
  | { state: 'ready'; path: string; format: ImageFormat; copied: boolean }
  /** The host has no copy of the image to make the base from: replicate it here, then ask again. */
  | { state: 'needs-replica' };

const HEARTBEAT_MS = 2000;
const COPY_TIMEOUT_MS = 6 * 60 * 60_000;

async function fileSize(file: string): Promise<number | undefined> {
  const found = await stat(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  return found?.isFile() ? found.size : undefined;
}

/** cp keeps a sparse image sparse (and reflinks where the filesystem can), which a byte copy would not. */
function copySparse(from: string, to: string, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('cp', ['--sparse=always', '--reflink=auto', '--', from, to], {
      stdio: ['ignore', 'ignore', 'pipe'],
      signal,
      timeout: COPY_TIMEOUT_MS,
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString('utf8')).slice(-2000)));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`cp ${from} ${to} exited with ${code}: ${stderr.trim()}`)),
    );
  });
}

export function createImageBaseActivities(deps: ImageBaseDeps) {
  const { hostId } = deps;

  /** Heartbeats the phase every HEARTBEAT_MS while `work` runs: a copy or hash of a large image takes minutes. */
  const beating = async <T>(phase: string, work: Promise<T>): Promise<T> => {
    const context = Context.current();
    context.heartbeat({ phase });
    const timer = setInterval(() => context.heartbeat({ phase }), HEARTBEAT_MS);
    try {
      return await work;
    } finally {
      clearInterval(timer);
    }
  };

  const refuseWrongSize = (file: string, size: number, input: EnsureImageBaseInput): never => {
    throw ApplicationFailure.nonRetryable(
      `${file} on ${hostId} holds ${size} bytes, image ${input.imageId} has ${input.sizeBytes}: ` +
        'not replacing a base other VMs may stand on',
      'ImageBaseConflict',
    );
  };

  return {
    /**
     * The path of the image's base in the VM's pool, made there first when the pool is shared and this host has a
     * replica to copy. Idempotent, and safe when several hosts of a pool make the same base at once: each copies
     * under a private name and the first link into place wins.
     */
    async ensureImageBase(input: EnsureImageBaseInput): Promise<EnsureImageBaseResult> {
      const local = { pool: LOCAL_STORAGE_POOL, imageId: input.imageId, format: input.format };
      const replica = imageBasePath(deps, local);
      const base = imageBasePath(deps, { ...local, pool: input.storagePool });
      const baseSize = await fileSize(base);
      if (baseSize === input.sizeBytes) return { state: 'ready', path: base, format: input.format, copied: false };
      // A library file of another size is no replica of this image; replicateImage verifies and replaces it.
      if (input.storagePool === LOCAL_STORAGE_POOL) return { state: 'needs-replica' };
      if (baseSize !== undefined) refuseWrongSize(base, baseSize, input);
      const replicaSize = await fileSize(replica);
      if (replicaSize === undefined) return { state: 'needs-replica' };
      if (replicaSize !== input.sizeBytes) refuseWrongSize(replica, replicaSize, input);

      await mkdir(path.dirname(base), { recursive: true });
      const staging = path.join(
        path.dirname(base),
        `.${path.basename(base)}.copying-${randomBytes(6).toString('hex')}`,
      );
      try {
        await beating('copying', copySparse(replica, staging, cancellationSignal()));
        const sha256 = await beating('verifying', hashFileInPool({ pool: deps.pool, path: staging }));
        if (sha256 !== input.sha256) {
          throw ApplicationFailure.nonRetryable(
            `the copy of ${replica} on ${hostId} has sha256 ${sha256}, image ${input.imageId} is ${input.sha256}`,
            'ImageContentMismatch',
          );
        }
        await chmod(staging, 0o444);
        await link(staging, base);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        // Another host of the pool got there first, with content verified the same way.
        const raced = await fileSize(base);
        if (raced !== input.sizeBytes) refuseWrongSize(base, raced ?? 0, input);
        return { state: 'ready', path: base, format: input.format, copied: false };
      } finally {
        await rm(staging, { force: true });
      }
      Context.current().log.info('image base copied into storage pool', {
        hostId,
        imageId: input.imageId,
        storagePool: input.storagePool,
        path: base,
      });
      return { state: 'ready', path: base, format: input.format, copied: true };
    },
  };
}

export type ImageBaseActivities = ReturnType<typeof createImageBaseActivities>;
