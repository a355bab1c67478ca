/**
 * `npm run bench -- <name>...`: runs benchmarks, writes each one's results file under bench/results/ with the run's
 * record (command, commit, machine, load), and regenerates the docs sections that quote it. Benchmarks are not
 * tests: they measure, side by side in one run, and report what they saw.
 *
 * `npm run bench -- --docs [<name>...]` only regenerates the docs sections from the committed results files.
 */
import path from 'node:path';
import { dwcpBenchmark } from './dwcp';
import { failoverBenchmark } from './failover';
import { fleetBenchmark } from './fleet';
import { initBenchmark } from './init';
import { libvirtDriverBenchmark } from './libvirt-driver';
import { lifecycleBenchmark } from './lifecycle';
import { migrationBenchmark } from './migration';
import { repoPath, writeDocSection, type Benchmark } from './results';
import { benchCommand, startRun } from './run-metadata';

const BENCHMARKS: Benchmark[] = [
  initBenchmark,
  lifecycleBenchmark,
  fleetBenchmark,
  libvirtDriverBenchmark,
  dwcpBenchmark,
  migrationBenchmark,
  failoverBenchmark,
];
const OUT_DIR = path.join(__dirname, 'results');

async function publish(benchmark: Benchmark, file: string): Promise<void> {
  for (const section of benchmark.sections) {
    const doc = await writeDocSection(section, file);
    process.stdout.write(`${benchmark.name}: ${doc} section ${section.name} written from ${repoPath(file)}\n`);
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const docsOnly = args[0] === '--docs';
  const names = docsOnly ? args.slice(1) : args;
  const byName = new Map(BENCHMARKS.map((b) => [b.name, b]));
  const unknown = names.filter((n) => !byName.has(n));
  if ((!docsOnly && names.length === 0) || unknown.length > 0) {
    process.stderr.write(
      `usage: npm run bench -- [--docs] <${[...byName.keys()].join('|')}>...` +
        `${unknown.length ? ` (unknown: ${unknown.join(', ')})` : ''}\n`,
    );
    process.exit(2);
  }
  const chosen = names.length > 0 ? names.map((n) => byName.get(n)!) : BENCHMARKS;
  for (const benchmark of chosen) {
    if (docsOnly) {
      await publish(benchmark, await benchmark.publishedResults(OUT_DIR));
      continue;
    }
    const recorder = startRun({ benchmark: benchmark.name, command: benchCommand(benchmark.name) });
    const { file, publish: complete } = await benchmark.run({ outDir: OUT_DIR, recorder });
    process.stdout.write(`${benchmark.name}: results written to ${repoPath(file)}\n`);
    if (complete) await publish(benchmark, file);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
