/**
 * `npm test`: checks this machine's prerequisites for the selected files, runs lint, then every *.test.ts under
 * node's test runner, against real services started once here: a Temporal dev server (in memory) and PostgreSQL
 * (embedded, unless DATABASE_URL names a server, as in CI). `npm test -- FILTER...` runs only files whose path
 * contains a filter, and skips lint. The last line counts every test of both batches (test/runner/counts.ts).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../config/load-config';
import { startTemporalDevServer } from '../native/temporal';
import { startEmbeddedPostgres } from '../store/embedded-postgres';
import { systemProbes, testContext } from '../workers/prerequisite-probes';
import { checkPrerequisites, formatCheck } from '../workers/prerequisites';
import { runTestBatches } from './runner/batches';
import { prerequisitesFor } from './runner/needs';
import { reportRun } from './runner/report';
import { freePort } from './support/ports';

const ROOT = path.resolve(__dirname, '..');
const SKIP_DIRS = new Set(['node_modules', 'dist', '.git', '.novacron']);
// Node 20 applies --test-timeout to each file's process as a whole (batches.ts), so this bounds a file: it ends a
// hang, and it must exceed the slowest file on a loaded 2-core machine (vm-lifecycle allows itself 2 × 300 s).
const DEFAULT_TIMEOUT_MS = 20 * 60_000;

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

function positiveInteger(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name}=${text}: expected a positive integer`);
  return value;
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

  // Only what the selected files need: a filtered run of pure unit tests must not demand libvirt.
  const checks = await checkPrerequisites(
    systemProbes(),
    // Test databases, guest disks and images go to the temp dir: the floor the cluster's resources check uses.
    testContext({
      env: process.env,
      scratchParent: os.tmpdir(),
      minFreeMib: loadConfig({ env: {} }).system.minResources.diskFreeMib,
    }),
    prerequisitesFor(files, ROOT),
  );
  const missing = checks.filter((check) => !check.ok);
  if (missing.length > 0) {
    for (const check of missing) process.stderr.write(`${formatCheck(check)}\n`);
    process.stderr.write(`npm test: not run; fix the ${missing.length === 1 ? 'line' : 'lines'} above\n`);
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

    // The test processes inherit this process's environment (node's runner gives them no other).
    Object.assign(process.env, {
      NOVACRON_TEST_DATABASE_URL: databaseUrl,
      NOVACRON_TEST_TEMPORAL_ADDRESS: temporalAddress,
      NOVACRON_TEST_SCRATCH: scratch,
      // Every API the tests start checks each answer against its own /openapi.json (api/response-contract.ts).
      NOVACRON_CHECK_RESPONSES: '1',
    });
    const result = await runTestBatches({
      root: ROOT,
      files,
      lightConcurrency: positiveInteger('NOVACRON_TEST_CONCURRENCY', 2),
      timeoutMs: positiveInteger('NOVACRON_TEST_TIMEOUT_MS', DEFAULT_TIMEOUT_MS),
      output: process.stdout,
    });
    process.exitCode = reportRun(result, ROOT, (text) => process.stdout.write(text));
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
