/**
 * The receiver's chunk index: sha256 → where that content already sits on this host (a base image, the previous
 * version of the target). Chunk hashes are content addresses, so one index serves every chunking: a file is indexed
 * once per chunking that a sender asks for, and a lookup never returns content that does not match (readers verify
 * the hash again before using a location, in case the file changed since it was indexed).
 */
import { stat } from 'node:fs/promises';
import { chunkingKey, type ChunkingParams } from './chunking';
import type { DwcpWorkerPool } from './encoding';
import { manifestEntry } from './manifest';

export interface ChunkLocation {
  path: string;
  offset: number;
  length: number;
}

export class ChunkIndex {
  private readonly locations = new Map<string, ChunkLocation>();
  /** path + chunking → the file's size and mtime when it was indexed. */
  private readonly indexed = new Map<string, string>();
  private readonly pool: DwcpWorkerPool;

  constructor(input: { pool: DwcpWorkerPool }) {
    this.pool = input.pool;
  }

  get size(): number {
    return this.locations.size;
  }

  /** Indexes `path` with `chunking` unless it was already indexed that way and has not changed since. */
  async addFile(input: { path: string; chunking: ChunkingParams }): Promise<number> {
    const info = await stat(input.path);
    const key = `${input.path}\0${chunkingKey(input.chunking)}`;
    const version = `${info.size}:${info.mtimeMs}`;
    if (this.indexed.get(key) === version) return 0;
    const manifest = await this.pool.run({ kind: 'scan', path: input.path, chunking: input.chunking });
    let added = 0;
    for (let index = 0; index < manifest.chunkCount; index++) {
      const entry = manifestEntry({ manifest, index });
      // Zero chunks never need a copy: the receiver leaves a hole.
      if (entry.zero) continue;
      const hash = entry.hash.toString('hex');
      if (!this.locations.has(hash)) added++;
      this.locations.set(hash, { path: input.path, offset: entry.offset, length: entry.length });
    }
    this.indexed.set(key, version);
    return added;
  }

  lookup(hash: Buffer): ChunkLocation | undefined {
    return this.locations.get(hash.toString('hex'));
  }

  /** Drops a location that no longer holds its content, so the next transfer asks for the data instead. */
  forget(hash: Buffer): void {
    this.locations.delete(hash.toString('hex'));
  }
}
