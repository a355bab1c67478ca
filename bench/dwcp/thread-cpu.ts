import { readFileSync } from 'node:fs';

/**
 * CPU seconds of the calling thread so far. Node 20 has no per-thread CPU call, so this reads
 * /proc/thread-self/schedstat (Linux only, as the DWCP benchmarks are); it works in worker threads too.
 */
export function threadCpuSeconds(): number {
  return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]) / 1e9;
}
