import os from 'node:os';
import path from 'node:path';

/**
 * The per-user build cache (`$NOVACRON_CACHE_DIR`, else `$XDG_CACHE_HOME/novacron`, else `~/.cache/novacron`):
 * artefacts that are slow to build and safe to share between checkouts, never state.
 */
export function novacronCacheRoot(): string {
  return (
    process.env.NOVACRON_CACHE_DIR ||
    path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'novacron')
  );
}
