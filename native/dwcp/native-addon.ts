/**
 * DWCP's native addon (native/dwcp-native, Rust through napi-rs, built by npm install when cargo is present), loaded
 * once for every module that uses it. Each user falls back to TypeScript on its own when the addon is absent, or
 * when an addon built from an older crate lacks the function it needs: hence every function is optional here.
 */
import path from 'node:path';

export interface DwcpNativeAddon {
  /** Flat [start, end, start, end, ...] data extents (SEEK_DATA/SEEK_HOLE). */
  dataExtents(file: string): number[];
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
