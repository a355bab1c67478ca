/**
 * Waiting on a condition instead of sleeping: a test polls for what it needs, under a deadline generous enough for
 * a loaded 2-core machine, so a slow run only waits longer and a broken one still fails, naming what never came.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export const DEFAULT_WAIT_MS = 60_000;

/** Polls `probe` until it returns a truthy value, and returns that value; fails after `timeoutMs`. */
export async function waitUntil<T>(
  what: string,
  probe: () => T | Promise<T>,
  options: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<NonNullable<T>> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_WAIT_MS;
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(options.intervalMs ?? 50);
  }
}
