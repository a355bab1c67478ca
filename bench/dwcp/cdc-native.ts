/**
 * What FastCDC costs in TypeScript and in native/dwcp-native on this machine: the same buffer is cut with the
 * benchmark's datacenter chunking (128 KiB average) in 8 MiB read blocks, as scanFileParts reads a file, by the
 * TypeScript loop and by the addon in turn, for a number of rounds, and each pass is timed by wall clock and by its
 * thread's CPU (/proc/thread-self/schedstat, Linux only). The buffers: N MiB (256 by default) of random data and
 * zero runs in about equal parts, and the benchmark's v1 image when its cache holds one. Both implementations must
 * give the same cuts, or the run fails. Writes bench/results/dwcp-cdc-native.json.
 *
 * node --import tsx bench/dwcp/cdc-native.ts [--mib 256] [--rounds 3]
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  blockChunkLengths,
  chunkingImplementation,
  chunkingParams,
  type ChunkingParams,
} from '../../native/dwcp/chunking';
import { MODE_PARAMETERS } from '../../native/dwcp/mode';
import { readResults, repoPath, writeResults } from '../results';
import { startRun, type RunMetadata } from '../run-metadata';
import { threadCpuSeconds } from './thread-cpu';

const BLOCK_BYTES = 8 * 1024 * 1024;
const RESULTS_DIR = path.join(__dirname, '..', 'results');
const IMAGE = path.join(RESULTS_DIR, 'tmp', 'dwcp', 'rootfs-v1.img');
const MiB = 1024 * 1024;

type Implementation = 'typescript' | 'native';

interface Pass {
  buffer: string;
  implementation: Implementation;
  round: number;
  seconds: number;
  cpuSeconds: number;
  MBps: number;
  /** Per CPU second of the cutting thread: what a shared machine's neighbours distort least. */
  cpuMBps: number;
}

/** Random segments of 1-4 MiB and zero runs of 1-4 MiB plus an odd tail, alternating, until `bytes`. */
function mixedBuffer(bytes: number): Buffer {
  const data = Buffer.alloc(bytes);
  let at = 0;
  for (let random = true; at < bytes; random = !random) {
    const length = Math.min(bytes - at, MiB * (1 + Math.floor(Math.random() * 3)) + Math.floor(Math.random() * 4096));
    if (random) randomBytes(length).copy(data, at);
    at += length;
  }
  return data;
}

/** One pass over the buffer in read blocks, as scanFileParts cuts a file; returns the cut lengths' count and sum check. */
function cut(data: Buffer, params: ChunkingParams, implementation: Implementation): { chunks: number; check: number } {
  let chunks = 0;
  let check = 0;
  for (let start = 0; start < data.length;) {
    const end = Math.min(data.length, start + BLOCK_BYTES);
    const final = end === data.length;
    const lengths = blockChunkLengths({ data, start, end, params, final, fallback: implementation === 'typescript' });
    for (const length of lengths) {
      // Position-weighted, so that two implementations with the same total but different cuts differ here.
      check = (check * 31 + length) % 2 ** 31;
      start += length;
    }
    chunks += lengths.length;
  }
  return { chunks, check };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { mib: { type: 'string', default: '256' }, rounds: { type: 'string', default: '3' } },
  });
  const bytes = Number(values.mib) * MiB;
  const rounds = Number(values.rounds);
  if (!(bytes > 0 && Number.isInteger(rounds) && rounds > 0)) throw new Error('--mib and --rounds must be positive');
  if (chunkingImplementation !== 'native')
    throw new Error('native/dwcp-native is not built: run npm run build:dwcp-native');
  const recorder = startRun({
    benchmark: 'dwcp-cdc-native',
    command: `node --import tsx bench/dwcp/cdc-native.ts --mib ${values.mib} --rounds ${values.rounds}`,
  });
  const params = chunkingParams({ avgBytes: MODE_PARAMETERS.datacenter.chunkAvgBytes });
  const buffers: { name: string; data: Buffer }[] = [
    { name: `${values.mib} MiB random + zero runs`, data: mixedBuffer(bytes) },
  ];
  if (existsSync(IMAGE)) buffers.push({ name: repoPath(IMAGE), data: readFileSync(IMAGE) });
  const passes: Pass[] = [];
  const cuts: Record<string, { chunks: number; check: number }> = {};
  for (const { name, data } of buffers) {
    for (let round = 1; round <= rounds; round++) {
      // Alternating which goes first keeps a warming cache or a neighbour's burst from favouring one side.
      const order: Implementation[] = round % 2 === 1 ? ['typescript', 'native'] : ['native', 'typescript'];
      for (const implementation of order) {
        const cpu0 = threadCpuSeconds();
        const started = performance.now();
        const result = cut(data, params, implementation);
        const seconds = (performance.now() - started) / 1000;
        const cpuSeconds = threadCpuSeconds() - cpu0;
        const previous = cuts[name];
        if (previous !== undefined && (previous.chunks !== result.chunks || previous.check !== result.check)) {
          throw new Error(`${implementation} cut ${name} differently: ${JSON.stringify({ previous, result })}`);
        }
        cuts[name] = result;
        const MB = data.length / 1e6;
        passes.push({
          buffer: name,
          implementation,
          round,
          seconds,
          cpuSeconds,
          MBps: MB / seconds,
          cpuMBps: MB / cpuSeconds,
        });
      }
    }
  }
  const summary = buffers.map(({ name, data }) => {
    const median = (implementation: Implementation, rate: 'MBps' | 'cpuMBps'): number => {
      const sorted = passes
        .filter((p) => p.buffer === name && p.implementation === implementation)
        .map((p) => p[rate])
        .sort((a, b) => a - b);
      return sorted[Math.floor(sorted.length / 2)]!;
    };
    const rates = {
      typescriptMBps: median('typescript', 'MBps'),
      nativeMBps: median('native', 'MBps'),
      typescriptCpuMBps: median('typescript', 'cpuMBps'),
      nativeCpuMBps: median('native', 'cpuMBps'),
    };
    return {
      buffer: name,
      bytes: data.length,
      chunks: cuts[name]!.chunks,
      ...rates,
      ratio: rates.nativeMBps / rates.typescriptMBps,
      cpuRatio: rates.nativeCpuMBps / rates.typescriptCpuMBps,
    };
  });
  const file = await writeResults({
    dir: RESULTS_DIR,
    name: 'dwcp-cdc-native.json',
    recorder,
    results: { chunking: params, blockBytes: BLOCK_BYTES, summary, passes },
  });
  const { run } = await readResults<{ run: RunMetadata }>(file);
  const fmt = (n: number): string => n.toFixed(2);
  process.stdout.write(
    `${rounds} rounds, load ${run.loadAverage.start.map(fmt).join(' ')} → ${run.loadAverage.end.map(fmt).join(' ')}, wrote ${repoPath(file)}\n` +
      '| buffer | round | implementation | s | CPU s | MB/s | MB per CPU s |\n| --- | ---: | --- | ---: | ---: | ---: | ---: |\n' +
      passes
        .map(
          (p) =>
            `| ${p.buffer} | ${p.round} | ${p.implementation} | ${p.seconds.toFixed(3)} | ${p.cpuSeconds.toFixed(3)} | ${p.MBps.toFixed(0)} | ${p.cpuMBps.toFixed(0)} |`,
        )
        .join('\n') +
      "\n\nMedians of the rounds; per CPU s is the cutting thread's own CPU time, which neighbours distort least.\n\n" +
      '| buffer | chunks | TypeScript MB/s | native MB/s | native / TypeScript | TypeScript MB per CPU s | native MB per CPU s | native / TypeScript |\n' +
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n' +
      summary
        .map(
          (s) =>
            `| ${s.buffer} | ${s.chunks} | ${s.typescriptMBps.toFixed(0)} | ${s.nativeMBps.toFixed(0)} | ${s.ratio.toFixed(1)} | ${s.typescriptCpuMBps.toFixed(0)} | ${s.nativeCpuMBps.toFixed(0)} | ${s.cpuRatio.toFixed(1)} |`,
        )
        .join('\n') +
      '\n',
  );
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
