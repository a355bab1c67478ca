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

function isHeavy(relativePath: string): boolean {
  return relativePath.startsWith(`test${path.sep}`) || relativePath.endsWith('.integration.test.ts');
}

/** Runs node's test runner over some files, echoing its output and reading its closing counts. */
async function runNodeTests(input: {
  files: string[];
  concurrency: string;
  env: NodeJS.ProcessEnv;
}): Promise<{ code: number; pass: number; fail: number }> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '--test',
        `--test-concurrency=${input.concurrency}`,
        '--test-reporter=spec',
        ...input.files.map((f) => path.relative(ROOT, f)),
      ],
      { cwd: ROOT, env: input.env, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let tail = '';
    child.stdout.on('data', (chunk: Buffer) => {
      process.stdout.write(chunk);
      tail = (tail + chunk.toString()).slice(-8192);
    });
    child.once('exit', (exitCode, signal) => {
      const count = (label: string) => Number(new RegExp(`ℹ ${label} (\\d+)`).exec(tail)?.[1] ?? 0);
      resolve({ code: exitCode ?? (signal ? 1 : 0), pass: count('pass'), fail: count('fail') });
    });
  });
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
    // Files that start hypervisors, stacks and worker processes run one at a time after the rest: on a 2-core
    // machine two of them at once starve each other's Temporal calls into deadline errors.
    const heavy = files.filter((f) => isHeavy(path.relative(ROOT, f)));
    const light = files.filter((f) => !heavy.includes(f));
    const totals = { pass: 0, fail: 0 };
    let code = 0;
    for (const [batch, concurrency] of [
      [light, process.env.NOVACRON_TEST_CONCURRENCY ?? '2'],
      [heavy, '1'],
    ] as const) {
      if (batch.length === 0) continue;
      const result = await runNodeTests({ files: batch, concurrency, env });
      totals.pass += result.pass;
      totals.fail += result.fail;
      if (result.code !== 0) code = result.code;
    }
    process.stdout.write(`\nnpm test: ${totals.pass} passed, ${totals.fail} failed\n`);
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
