/**
 * The receiver's chunk index: chunk hash → where that content already sits on this host (a base image, the previous
 * version of the target). Chunk hashes are content addresses, so one index serves every chunking: a file is indexed
 * once per chunking that a sender asks for (the hash is part of a chunking, and keys name their hash), and a lookup
 * never returns content that does not match: readers verify the hash again before using a location, in case the file changed since it was indexed, unless this process hashed
 * that file itself and it is still the version it hashed (`hashedVersion`).
 *
 * Scanning an image costs a full read and hash, so a file's chunk list is also kept in a sidecar next to it
 * (`<file>.dwcp-index.<chunking>`), keyed by size and mtime: a receiver that restarts, or a target that a finished
 * transfer just wrote, is indexed without reading the image. A sidecar is only a hint, like the index itself: a
 * stale one costs sends (the copy fails its hash check and the chunk is asked for), never wrong content.
 */
import { createHash } from 'node:crypto';
import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { z } from 'zod';
import type { ChunkHash } from './chunk-hash';
import { chunkHashOf, chunkingKey, type ChunkingParams } from './chunking';
import { quietVersion, type FileVersion } from './file-version';
import type { DwcpWorkerPool } from './worker-pool';
import { MANIFEST_ENTRY_BYTES, manifestEntry } from './manifest';

export interface ChunkLocation {
  path: string;
  offset: number;
  length: number;
  /**
   * The version of the file this process read and hashed the chunk in, when it had been quiet long enough for that
   * version to vouch for its content (file-version.ts). Absent for entries from a sidecar or a file that had just
   * changed: those are hints, checked by hash before use.
   */
  hashedVersion?: FileVersion;
}

/** 2: content-defined scans cut zero blocks apart (manifest.ts); a version-1 sidecar's cuts would match less. */
const SIDECAR_VERSION = 2;

const SidecarHeaderSchema = z.object({
  v: z.literal(SIDECAR_VERSION),
  size: z.number().int().nonnegative(),
  mtimeMs: z.number(),
  chunking: z.string(),
  chunkCount: z.number().int().nonnegative(),
  entriesSha256: z.string(),
});

const SIDECAR_MARK = '.dwcp-index.';

/** Where the sidecar of `file` for `chunking` lives. */
export function sidecarPath(file: string, chunking: ChunkingParams): string {
  return `${file}${SIDECAR_MARK}${chunkingKey(chunking).replaceAll('/', '-')}`;
}

/** True for a sidecar (or its temporary): callers that list a directory of images should skip these. */
export function isSidecarPath(file: string): boolean {
  return file.includes(SIDECAR_MARK);
}

/**
 * Writes the sidecar for `file` (whose manifest entries are `entries`), stamped with the file's current size and
 * mtime. Written to a temporary name and renamed, so a reader never sees half of one. Best effort: a read-only
 * directory just means no sidecar.
 */
export async function writeSidecar(input: {
  file: string;
  chunking: ChunkingParams;
  entries: Buffer;
}): Promise<boolean> {
  const target = sidecarPath(input.file, input.chunking);
  const temporary = `${target}.tmp-${process.pid}`;
  try {
    const info = await stat(input.file);
    const header = {
      v: SIDECAR_VERSION,
      size: info.size,
      mtimeMs: info.mtimeMs,
      chunking: chunkingKey(input.chunking),
      chunkCount: input.entries.length / MANIFEST_ENTRY_BYTES,
      entriesSha256: createHash('sha256').update(input.entries).digest('hex'),
    } satisfies z.infer<typeof SidecarHeaderSchema>;
    await writeFile(temporary, Buffer.concat([Buffer.from(`${JSON.stringify(header)}\n`), input.entries]));
    await rename(temporary, target);
    return true;
  } catch {
    await rm(temporary, { force: true }).catch(() => undefined);
    return false;
  }
}

/** The entries of a sidecar that still describes `file` as it is now, or undefined. */
export async function readSidecar(input: {
  file: string;
  chunking: ChunkingParams;
  size: number;
  mtimeMs: number;
}): Promise<Buffer | undefined> {
  let data: Buffer;
  try {
    data = await readFile(sidecarPath(input.file, input.chunking));
  } catch {
    return undefined;
  }
  const newline = data.indexOf(10);
  if (newline < 0) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.subarray(0, newline).toString('utf8'));
  } catch {
    return undefined;
  }
  const header = SidecarHeaderSchema.safeParse(parsed);
  if (!header.success) return undefined;
  const entries = data.subarray(newline + 1);
  const h = header.data;
  if (
    h.size !== input.size ||
    h.mtimeMs !== input.mtimeMs ||
    h.chunking !== chunkingKey(input.chunking) ||
    entries.length !== h.chunkCount * MANIFEST_ENTRY_BYTES ||
    createHash('sha256').update(entries).digest('hex') !== h.entriesSha256
  ) {
    return undefined;
  }
  return entries;
}

export class ChunkIndex {
  private readonly locations = new Map<string, ChunkLocation>();
  /** path + chunking → the file's size and mtime when it was indexed. */
  private readonly indexed = new Map<string, string>();
  private readonly pool: DwcpWorkerPool;
  private readonly sidecars: boolean;

  constructor(input: { pool: DwcpWorkerPool; sidecars?: boolean }) {
    this.pool = input.pool;
    this.sidecars = input.sidecars ?? false;
  }

  get size(): number {
    return this.locations.size;
  }

  /**
   * Indexes `path` with `chunking` unless it was already indexed that way and has not changed since: from memory,
   * then from a current sidecar, and only then by scanning the file (which writes the sidecar for next time).
   */
  async addFile(input: { path: string; chunking: ChunkingParams }): Promise<number> {
    // A directory of images handed over as bases may hold sidecars too; they are never content worth indexing.
    if (isSidecarPath(input.path)) return 0;
    const info = await stat(input.path);
    const statAt = Date.now();
    const key = `${input.path}\0${chunkingKey(input.chunking)}`;
    const version = `${info.size}:${info.mtimeMs}`;
    if (this.indexed.get(key) === version) return 0;
    let entries = this.sidecars
      ? await readSidecar({ file: input.path, chunking: input.chunking, size: info.size, mtimeMs: info.mtimeMs })
      : undefined;
    let hashedVersion: FileVersion | undefined;
    if (entries === undefined) {
      entries = (await this.pool.run({ kind: 'index', path: input.path, chunking: input.chunking })).entries;
      // The scan read the file after this stat: if the file still has this version, it still has this content.
      hashedVersion = quietVersion(info, statAt);
      if (this.sidecars) await writeSidecar({ file: input.path, chunking: input.chunking, entries });
    }
    const added = this.addEntries({
      path: input.path,
      hash: chunkHashOf(input.chunking),
      entries,
      ...(hashedVersion ? { hashedVersion } : {}),
    });
    this.indexed.set(key, version);
    return added;
  }

  /** Indexes each of `paths` that exists, in order; a missing one (a target without a previous version) is skipped. */
  async addExistingFiles(input: { paths: readonly string[]; chunking: ChunkingParams }): Promise<void> {
    for (const file of input.paths) {
      try {
        await this.addFile({ path: file, chunking: input.chunking });
      } catch (err) {
        if (!(typeof err === 'object' && err !== null && 'code' in err && err.code === 'ENOENT')) throw err;
      }
    }
  }

  /**
   * Adds a file whose manifest is already known (a target a transfer just verified and wrote), and keeps its
   * sidecar, so the next version of it is indexed without a scan.
   */
  async addKnownFile(input: { path: string; chunking: ChunkingParams; entries: Buffer }): Promise<number> {
    const info = await stat(input.path);
    // Whatever was indexed at this path before described the content the new file replaced.
    for (const [key, location] of this.locations) if (location.path === input.path) this.locations.delete(key);
    const added = this.addEntries({ ...input, hash: chunkHashOf(input.chunking) });
    this.indexed.set(`${input.path}\0${chunkingKey(input.chunking)}`, `${info.size}:${info.mtimeMs}`);
    if (this.sidecars) await writeSidecar({ file: input.path, chunking: input.chunking, entries: input.entries });
    return added;
  }

  private addEntries(input: { path: string; hash: ChunkHash; entries: Buffer; hashedVersion?: FileVersion }): number {
    const manifest = { entries: input.entries, chunkCount: input.entries.length / MANIFEST_ENTRY_BYTES };
    let added = 0;
    for (let index = 0; index < manifest.chunkCount; index++) {
      const entry = manifestEntry({ manifest, index });
      // Zero chunks never need a copy: the receiver leaves a hole.
      if (entry.zero) continue;
      const key = locationKey({ digest: entry.hash, hash: input.hash });
      if (!this.locations.has(key)) added++;
      const { path, hashedVersion } = input;
      this.locations.set(key, {
        path,
        offset: entry.offset,
        length: entry.length,
        ...(hashedVersion && { hashedVersion }),
      });
    }
    return added;
  }

  lookup(chunk: ChunkAddress): ChunkLocation | undefined {
    return this.locations.get(locationKey(chunk));
  }

  /** Drops a location that no longer holds its content, so the next transfer asks for the data instead. */
  forget(chunk: ChunkAddress): void {
    this.locations.delete(locationKey(chunk));
  }
}

/** A chunk's name in the index: its digest and the hash that made it, so a sha256 never matches a BLAKE3. */
export interface ChunkAddress {
  digest: Buffer;
  hash: ChunkHash;
}

function locationKey(chunk: ChunkAddress): string {
  return `${chunk.hash}:${chunk.digest.toString('hex')}`;
}
