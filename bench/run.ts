/**
 * `npm run bench -- <name>`: runs a benchmark and writes its results under bench/results/. Benchmarks are not
 * tests: they measure, side by side in one run, and report what they saw.
 */
import path from 'node:path';
import { runDwcpBench } from './dwcp';
import { runBench as runInitBench } from './init';
import { runBench as runLifecycleBench } from './lifecycle';

const BENCHMARKS: Record<string, (input: { outDir: string }) => Promise<string>> = {
  init: runInitBench,
  lifecycle: runLifecycleBench,
  dwcp: runDwcpBench,
};

async function main(): Promise<void> {
  const names = process.argv.slice(2);
  const unknown = names.filter((n) => !BENCHMARKS[n]);
  if (names.length === 0 || unknown.length > 0) {
    process.stderr.write(
      `usage: npm run bench -- <${Object.keys(BENCHMARKS).join('|')}>...${unknown.length ? ` (unknown: ${unknown.join(', ')})` : ''}\n`,
    );
    process.exit(2);
  }
  const outDir = path.join(__dirname, 'results');
  for (const name of names) {
    const file = await BENCHMARKS[name]!({ outDir });
    process.stdout.write(`${name}: results written to ${path.relative(process.cwd(), file)}\n`);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
