/**
 * `npm test`: lint, then every *.test.ts under node's test runner, against real services started once here:
 * a Temporal dev server (in memory) and PostgreSQL (embedded, unless DATABASE_URL names a server, as in CI).
 * `npm test -- FILTER...` runs only files whose path contains a filter, and skips lint.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTemporalDevServer } from '../native/temporal';
import { startEmbeddedPostgres } from '../store/embedded-postgres';
import { freePort } from './support/ports';

const ROOT = path.resolve(__dirname, '..');
const SKIP_DIRS = new Set(['node_modules', 'dist', '.git', '.novacron']);

function findTests(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    if (SKIP_DIRS.has(entry.name)) return [];
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return findTests(full);
    return entry.name.endsWith('.test.ts') ? [full] : [];
  });
}

function runStep(name: string, command: string, args: string[]): void {
  process.stdout.write(`\n== ${name}: ${command} ${args.join(' ')}\n`);
  const result = spawnSync(command, args, { cwd: ROOT, stdio: 'inherit' });
  if (result.status !== 0) {
    process.stderr.write(`${name} failed (exit ${result.status ?? result.signal})\n`);
    process.exit(result.status ?? 1);
  }
}

async function main(): Promise<void> {
  const filters = process.argv.slice(2);
  const files = findTests(ROOT)
    .filter((f) => filters.length === 0 || filters.some((needle) => f.includes(needle)))
    .sort();
  if (files.length === 0) {
    process.stderr.write(`no test files match ${filters.join(' ')}\n`);
    process.exit(1);
  }
  if (filters.length === 0) runStep('lint', 'npm', ['run', '--silent', 'lint']);

  const scratch = mkdtempSync(path.join(os.tmpdir(), 'novacron-test-'));
  const cleanups: Array<() => Promise<void>> = [];
  try {
    let databaseUrl = process.env.DATABASE_URL;
    if (!databaseUrl) {
      process.stdout.write('starting embedded PostgreSQL for the tests\n');
      const pg = await startEmbeddedPostgres({
        dataDir: path.join(scratch, 'pg'),
        port: await freePort(),
        database: 'novacron_test',
      });
      cleanups.push(() => pg.stop());
      databaseUrl = pg.databaseUrl;
    }
    let temporalAddress = process.env.TEMPORAL_ADDRESS;
    if (!temporalAddress) {
      process.stdout.write('starting the embedded Temporal server (in memory) for the tests\n');
      const server = await startTemporalDevServer({ port: 0, namespaces: ['default'] });
      cleanups.push(() => server.stop());
      temporalAddress = server.address;
    }

    const env = {
      ...process.env,
      NOVACRON_TEST_DATABASE_URL: databaseUrl,
      NOVACRON_TEST_TEMPORAL_ADDRESS: temporalAddress,
      NOVACRON_TEST_SCRATCH: scratch,
    };
    // The integration and end-to-end files start processes of their own; two at a time suits a 2-core machine.
    const concurrency = process.env.NOVACRON_TEST_CONCURRENCY ?? '2';
    const code = await new Promise<number>((resolve) => {
      const child = spawn(
        process.execPath,
        [
          '--import',
          'tsx',
          '--test',
          `--test-concurrency=${concurrency}`,
          '--test-reporter=spec',
          ...files.map((f) => path.relative(ROOT, f)),
        ],
        { cwd: ROOT, env, stdio: 'inherit' },
      );
      child.once('exit', (exitCode, signal) => resolve(exitCode ?? (signal ? 1 : 0)));
    });
    process.exitCode = code;
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    rmSync(scratch, { recursive: true, force: true });
  }
}

// Exit explicitly with the runner's code: no library's exit hook may turn a failed run into a green one.
main().then(
  () => process.exit(process.exitCode ?? 0),
  (err: unknown) => {
    process.stderr.write(`npm test: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
