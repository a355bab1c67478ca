/**
 * DWCP's native addon (native/dwcp-native, Rust through napi-rs, built by npm install when cargo is present), loaded
 * once for every module that uses it. Each user falls back to TypeScript on its own when the addon is absent, or
 * when an addon built from an older crate lacks the function it needs: hence every function is optional here.
 */
import path from 'node:path';

/** What cutChunks needs of a chunking: chunking.ts derives the masks and the zero-run cut, the addon only uses them. */
export interface NativeCutInput {
  minBytes: number;
  avgBytes: number;
  maxBytes: number;
  fixed: boolean;
  smallMask: number;
  largeMask: number;
  zeroCut: number;
  final: boolean;
}

export interface DwcpNativeAddon {
  /** Flat [start, end, start, end, ...] data extents (SEEK_DATA/SEEK_HOLE). */
  dataExtents(file: string): number[];
  /** The FastCDC gear table; a second, different table is refused. */
  setGearTable(table: Int32Array): void;
  /** The lengths of the chunks cut from the start of `data`, up to the first that needs more data. */
  cutChunks(data: Uint8Array, input: NativeCutInput): Uint32Array;
  /** BLAKE3 of `data`, 32 bytes. */
  blake3Hash(data: Uint8Array): Buffer;
}

function loadNative(): Partial<DwcpNativeAddon> | undefined {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- a native addon loads through require only
    return require(path.join(__dirname, '..', 'dwcp-native', 'dwcp-native.node')) as Partial<DwcpNativeAddon>;
  } catch {
    return undefined;
  }
}

export const dwcpNative = loadNative();
