import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';

/** The cargo to run: rustup installs into ~/.cargo/bin, which a non-login shell (npm's, CI's) may not have on PATH. */
export function cargoPath(): string {
  const rustupCargo = path.join(homedir(), '.cargo', 'bin', 'cargo');
  return existsSync(rustupCargo) ? rustupCargo : 'cargo';
}
