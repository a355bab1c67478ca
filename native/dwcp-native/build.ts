/**
 * Builds DWCP's native addon (native/dwcp-native, Rust through napi-rs) into dwcp-native.node, as npm install's
 * postinstall step. Without cargo, or when the build fails, DWCP runs on its TypeScript fallbacks (data-extents.ts
 * and chunking.ts say which is in use), so this never fails the install: it says what happened in one line.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, renameSync } from 'node:fs';
import path from 'node:path';
import { cargoPath } from './cargo-path';

const crateDir = __dirname;
const built = path.join(crateDir, 'target', 'release', 'libdwcp_native.so');
const addon = path.join(crateDir, 'dwcp-native.node');

function main(): void {
  if (process.platform !== 'linux') {
    process.stdout.write('dwcp-native: not built (Linux only); DWCP uses its TypeScript fallback\n');
    return;
  }
  const cargo = spawnSync(
    cargoPath(),
    ['build', '--release', '--quiet', '--manifest-path', path.join(crateDir, 'Cargo.toml')],
    {
      stdio: ['ignore', 'inherit', 'inherit'],
    },
  );
  if (cargo.error !== undefined || cargo.status !== 0) {
    const why =
      cargo.error !== undefined ? `cargo not runnable (${cargo.error.message})` : `cargo exited ${cargo.status}`;
    process.stdout.write(`dwcp-native: not built, ${why}; DWCP uses its TypeScript fallback\n`);
    return;
  }
  // Copied beside and renamed over: a process that has the old addon loaded keeps its mapping of the old file,
  // where rewriting that file in place could change the code under it.
  const staged = `${addon}.${process.pid}.tmp`;
  copyFileSync(built, staged);
  renameSync(staged, addon);
  process.stdout.write(`dwcp-native: built ${path.relative(process.cwd(), addon)}\n`);
}

main();
