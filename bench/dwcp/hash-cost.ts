/**
 * What hashing every chunk costs on this machine, and what a cheaper chunk hash would save: the same sample is
 * hashed in 128 KiB chunks (the datacenter mode's average) by Node's sha256 (OpenSSL, what DWCP's workers use
 * today) and, through native/dwcp-native/examples/hash-throughput.rs, by Rust's sha2, BLAKE3 and xxh3-128, taking
 * turns each round. Each pass is timed by wall clock and by its thread's CPU. The sample is the data (holes left out)
 * of the benchmark's v1 image when its cache holds one, else random bytes. Needs cargo (the example's crates are
 * dev-dependencies, which `npm install` does not build). Writes bench/results/dwcp-hash-cost.json.
 *
 * node --import tsx bench/dwcp/hash-cost.ts [--mib 256] [--rounds 5]
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { dataExtents } from '../../native/dwcp/data-extents';
import { MODE_PARAMETERS } from '../../native/dwcp/mode';
import { repoPath, writeResults } from '../results';
import { startRun } from '../run-metadata';
import { threadCpuSeconds } from './thread-cpu';
import { cargoPath } from '../../native/dwcp-native/cargo-path';

const RESULTS_DIR = path.join(__dirname, '..', 'results');
const IMAGE = path.join(RESULTS_DIR, 'tmp', 'dwcp', 'rootfs-v1.img');
const CRATE = path.join(__dirname, '..', '..', 'native', 'dwcp-native');
const MiB = 1024 * 1024;

const PassSchema = z.object({
  algorithm: z.string(),
  round: z.number().int(),
  seconds: z.number(),
  cpuSeconds: z.number(),
});
type Pass = z.infer<typeof PassSchema> & { implementation: string };

/** Up to `bytes` of the image's data extents, read in order; the holes a scan skips are left out. */
function imageData(file: string, bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  const fd = openSync(file, 'r');
  let filled = 0;
  try {
    for (const extent of dataExtents(file)) {
      for (let at = extent.start; at < extent.end && filled < bytes;) {
        const n = readSync(fd, out, filled, Math.min(bytes - filled, extent.end - at), at);
        if (n === 0) break;
        filled += n;
        at += n;
      }
    }
  } finally {
    closeSync(fd);
  }
  return out.subarray(0, filled);
}

function nodeSha256Pass(sample: Buffer, chunkBytes: number, round: number): Pass {
  const cpu = threadCpuSeconds();
  const started = performance.now();
  for (let at = 0; at < sample.length; at += chunkBytes) {
    createHash('sha256')
      .update(sample.subarray(at, at + chunkBytes))
      .digest();
  }
  const seconds = (performance.now() - started) / 1000;
  return { implementation: 'node', algorithm: 'sha256', round, seconds, cpuSeconds: threadCpuSeconds() - cpu };
}

const EXAMPLE = path.join(CRATE, 'target', 'release', 'examples', 'hash-throughput');

function run(command: string, args: string[]): string {
  const done = spawnSync(command, args, { cwd: CRATE, encoding: 'utf8', maxBuffer: 16 * MiB });
  if (done.error !== undefined || done.status !== 0) {
    const why = done.error?.message ?? done.stderr.trim().split('\n').at(-1);
    throw new Error(`${path.basename(command)} ${args.join(' ')} failed: ${why}`);
  }
  return done.stdout;
}

/** One round of the example, built once beforehand: each of its hashes once over the sample. */
function rustPasses(samplePath: string, chunkBytes: number, round: number): Pass[] {
  const out = run(EXAMPLE, [samplePath, `${chunkBytes}`, '1']);
  return out
    .trim()
    .split('\n')
    .map((line) => ({ ...PassSchema.parse(JSON.parse(line)), round, implementation: 'rust' }));
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { mib: { type: 'string', default: '256' }, rounds: { type: 'string', default: '5' } },
  });
  const bytes = Number(values.mib) * MiB;
  const rounds = Number(values.rounds);
  if (!(bytes > 0 && Number.isInteger(rounds) && rounds > 0)) throw new Error('--mib and --rounds must be positive');
  const recorder = startRun({
    benchmark: 'dwcp-hash-cost',
    command: `node --import tsx bench/dwcp/hash-cost.ts --mib ${values.mib} --rounds ${values.rounds}`,
  });
  const chunkBytes = MODE_PARAMETERS.datacenter.chunkAvgBytes;
  const fromImage = existsSync(IMAGE);
  const sample = fromImage ? imageData(IMAGE, bytes) : randomBytes(bytes);
  const sampleName = fromImage ? `${repoPath(IMAGE)}, its first ${sample.length} bytes of data` : 'random bytes';
  const dir = await mkdtemp(path.join(tmpdir(), 'dwcp-hash-cost-'));
  try {
    const samplePath = path.join(dir, 'sample');
    await writeFile(samplePath, sample);
    run(cargoPath(), ['build', '--quiet', '--release', '--example', 'hash-throughput']);
    const passes: Pass[] = [];
    for (let round = 1; round <= rounds; round++) {
      // Alternating which goes first keeps a neighbour's burst from favouring one side.
      const node = (): void => void passes.push(nodeSha256Pass(sample, chunkBytes, round));
      const rust = (): void => void passes.push(...rustPasses(samplePath, chunkBytes, round));
      for (const pass of round % 2 === 1 ? [node, rust] : [rust, node]) pass();
    }
    const MB = sample.length / 1e6;
    const kinds = [...new Set(passes.map((p) => `${p.implementation} ${p.algorithm}`))];
    const summary = kinds.map((kind) => {
      const of = passes.filter((p) => `${p.implementation} ${p.algorithm}` === kind);
      return {
        hash: kind,
        MBps: MB / median(of.map((p) => p.seconds)),
        cpuMBps: MB / median(of.map((p) => p.cpuSeconds)),
        cpuSecondsPerGB: median(of.map((p) => p.cpuSeconds)) / (sample.length / 1e9),
      };
    });
    const baseline = summary.find((s) => s.hash === 'node sha256')!;
    const rows = summary.map((s) => ({ ...s, cpuVsNodeSha256: s.cpuMBps / baseline.cpuMBps }));
    const flags = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim().split(/\s+/) ?? [];
    const file = await writeResults({
      dir: RESULTS_DIR,
      name: 'dwcp-hash-cost.json',
      recorder,
      results: {
        sample: sampleName,
        sampleBytes: sample.length,
        chunkBytes,
        cpuFlags: ['sha_ni', 'avx2', 'avx512f'].filter((f) => flags.includes(f)),
        summary: rows,
        passes,
      },
    });
    process.stdout.write(
      `${sampleName} in ${chunkBytes}-byte chunks, medians of ${rounds} rounds, wrote ${repoPath(file)}\n` +
        '| hash | MB/s | MB per CPU s | CPU s per GB | per CPU s vs Node sha256 |\n| --- | ---: | ---: | ---: | ---: |\n' +
        rows
          .map(
            (r) =>
              `| ${r.hash} | ${r.MBps.toFixed(0)} | ${r.cpuMBps.toFixed(0)} | ${r.cpuSecondsPerGB.toFixed(3)} | ${r.cpuVsNodeSha256.toFixed(2)} |`,
          )
          .join('\n') +
        '\n',
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
