/**
 * The hash that names a chunk: in manifest entries, in the receiver's chunk index and in every check before a write.
 * sha256 always works (Node's crypto); BLAKE3 is 2.3 times faster here (bench/dwcp/hash-cost.ts, docs/dwcp.md) but
 * comes only with dwcp-native. Both are collision-resistant, which a content-addressed index shared by every image on
 * a host needs; a fast non-cryptographic hash (xxh3) is not, so it is not offered.
 *
 * Peers agree on one per transfer in HELLO: the sender lists what it can compute, the receiver picks the first it
 * can check too, and sha256 is what a peer that says nothing (an older release) means. A host without the addon
 * therefore still talks to every other host, in sha256.
 */
import { createHash } from 'node:crypto';
import { DwcpProtocolError } from './errors';
import { dwcpNative } from './native-addon';

export const CHUNK_HASHES = ['blake3', 'sha256'] as const;
export type ChunkHash = (typeof CHUNK_HASHES)[number];

/** Both hashes are 32 bytes, so a manifest entry's layout does not depend on which one names it. */
export const CHUNK_HASH_BYTES = 32;

const nativeBlake3 = dwcpNative?.blake3Hash;

/** What this process can compute, best first: BLAKE3 when the addon has it. */
export const localChunkHashes: readonly ChunkHash[] = nativeBlake3 !== undefined ? ['blake3', 'sha256'] : ['sha256'];

export function hashChunk(data: Uint8Array, hash: ChunkHash): Buffer {
  if (hash === 'sha256') return createHash('sha256').update(data).digest();
  if (nativeBlake3 === undefined)
    throw new DwcpProtocolError('BLAKE3 chunk hashes need dwcp-native, which is not built');
  return nativeBlake3(data);
}

/** The receiver's choice: the first hash the sender offered that this end can also compute; sha256 otherwise. */
export function pickChunkHash(input: {
  offered: readonly ChunkHash[] | undefined;
  supported: readonly ChunkHash[];
}): ChunkHash {
  return input.offered?.find((hash) => input.supported.includes(hash)) ?? 'sha256';
}
