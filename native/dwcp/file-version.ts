/**
 * A file as stat saw it, to tell whether its content can have changed since: size, inode, and both mtime and ctime.
 * ctime matters because anyone can set mtime back (utimes), but nobody can set ctime; a write changes both.
 */
import type { Stats } from 'node:fs';

export interface FileVersion {
  size: number;
  ino: number;
  mtimeMs: number;
  ctimeMs: number;
}

/**
 * How long a file must have been left alone before a stat can vouch for it. The kernel stamps writes with a coarse
 * clock (one tick, at most 10 ms), so a write just after the stat could carry the same time as the write just
 * before it; once a file has been quiet for longer than a tick, any later write carries a later time.
 */
export const QUIET_BEFORE_TRUST_MS = 200;

export function fileVersion(stats: Stats): FileVersion {
  return { size: stats.size, ino: stats.ino, mtimeMs: stats.mtimeMs, ctimeMs: stats.ctimeMs };
}

export function sameVersion(a: FileVersion, b: FileVersion): boolean {
  return a.size === b.size && a.ino === b.ino && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}

/** The version of a file stat'ed at `statAt` (ms since the epoch), if it had been quiet long enough to vouch for. */
export function quietVersion(stats: Stats, statAt: number): FileVersion | undefined {
  const lastChange = Math.max(stats.mtimeMs, stats.ctimeMs);
  return statAt - lastChange >= QUIET_BEFORE_TRUST_MS ? fileVersion(stats) : undefined;
}
