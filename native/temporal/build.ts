// Builds the embedded Temporal dev server (main.go in this directory) once per source version and caches the binary
// outside the repository, so `npm start` and the tests pay the multi-minute Go compile only the first time.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants as fsConstants, existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { novacronCacheRoot } from '../../config/paths';

const SOURCE_DIR = __dirname;
const SOURCE_FILES = ['go.mod', 'go.sum', 'main.go'];
const BINARY_NAME = process.platform === 'win32' ? 'novacron-temporal.exe' : 'novacron-temporal';
const LOCK_POLL_MS = 1000;
const PROGRESS_EVERY_MS = 60_000;
// Far beyond any real build; only reached when the lock holder is on another host and cannot be probed.
const STALE_LOCK_MS = 45 * 60_000;

export interface EnsureTemporalBinaryOptions {
  log?: (msg: string) => void;
}

export class TemporalBuildError extends Error {
  override name = 'TemporalBuildError';
}

function defaultLog(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

export function temporalCacheRoot(): string {
  return path.join(novacronCacheRoot(), 'temporal');
}

// The key covers exactly what determines the binary, so editing main.go or bumping a module rebuilds on next use
// while every other start reuses the cached build. Computed once per process: the prerequisite check, the stack
// and the server start all ask for it.
let sourceHash: string | undefined;
export function temporalSourceHash(): string {
  sourceHash ??= hashSources();
  return sourceHash;
}

function hashSources(): string {
  const hash = createHash('sha256');
  for (const file of SOURCE_FILES) {
    hash.update(`${file}\0`);
    hash.update(readFileSync(path.join(SOURCE_DIR, file)));
    hash.update('\0');
  }
  return hash.digest('hex').slice(0, 16);
}

export function temporalBinaryPath(): string {
  return path.join(temporalCacheRoot(), temporalSourceHash(), BINARY_NAME);
}

/** The `go` line of go.mod: the Go that builds the server (an older Go >= 1.21 fetches it through the proxy). */
export function requiredGoVersion(): string {
  const version = /^go\s+(\S+)\s*$/m.exec(readFileSync(path.join(SOURCE_DIR, 'go.mod'), 'utf8'))?.[1];
  if (!version) throw new TemporalBuildError(`${path.join(SOURCE_DIR, 'go.mod')} has no go line`);
  return version;
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The server binary when no build is needed: NOVACRON_TEMPORAL_BIN, or the cached build of this source. */
export function builtTemporalBinary(): string | undefined {
  const override = process.env.NOVACRON_TEMPORAL_BIN;
  if (override) return isExecutable(override) ? override : undefined;
  const binary = temporalBinaryPath();
  return isExecutable(binary) ? binary : undefined;
}

function findGo(): string | undefined {
  const candidates = [process.env.GO, 'go', '/usr/local/go/bin/go', path.join(os.homedir(), 'go', 'bin', 'go')];
  for (const candidate of candidates) {
    if (!candidate) continue;
    const probe = spawnSync(candidate, ['version'], { stdio: 'ignore' });
    if (probe.status === 0) return candidate;
  }
  return undefined;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM means the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// A lock file keeps parallel test files (node --test runs them in separate processes) from compiling the same server
// twice on a small machine. Rename-into-place alone would stay correct without it, just wasteful.
async function withBuildLock<T>(lockFile: string, log: (msg: string) => void, fn: () => Promise<T>): Promise<T> {
  let announced = false;
  for (;;) {
    try {
      const handle = await open(lockFile, 'wx');
      await handle.writeFile(`${process.pid}\n${os.hostname()}\n`);
      await handle.close();
      break;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        // The cache directory was removed under us (someone clearing the cache); recreate it and retry.
        await mkdir(path.dirname(lockFile), { recursive: true });
        continue;
      }
      if (code !== 'EEXIST') throw err;
    }
    const [pidLine, host] = (await readFile(lockFile, 'utf8').catch(() => '')).split('\n');
    const pid = Number(pidLine);
    const age = Date.now() - ((await stat(lockFile).catch(() => undefined))?.mtimeMs ?? Date.now());
    const deadHere = host === os.hostname() && Number.isInteger(pid) && pid > 0 && !processAlive(pid);
    if (deadHere || age > STALE_LOCK_MS) {
      // The previous builder died without cleaning up; its half-written temp file is harmless.
      await rm(lockFile, { force: true });
      continue;
    }
    if (!announced) {
      log(`waiting for another build of the embedded Temporal server (pid ${pidLine || '?'}) to finish...`);
      announced = true;
    }
    await sleep(LOCK_POLL_MS);
    if (existsSync(path.join(path.dirname(lockFile), BINARY_NAME))) return fn();
  }
  try {
    return await fn();
  } finally {
    await rm(lockFile, { force: true });
  }
}

function runGoBuild(go: string, output: string, log: (msg: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    // -buildvcs=false: the binary must not depend on (or fail over) the state of the surrounding git checkout.
    const child = spawn(go, ['build', '-trimpath', '-buildvcs=false', '-o', output, '.'], {
      cwd: SOURCE_DIR,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: process.env,
    });
    let outputTail = '';
    const collect = (chunk: Buffer) => {
      outputTail = (outputTail + chunk.toString('utf8')).slice(-8000);
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    const progress = setInterval(() => {
      log(`still building the embedded Temporal server (${Math.round((Date.now() - started) / 1000)}s so far)...`);
    }, PROGRESS_EVERY_MS);
    progress.unref();
    child.on('error', (err) => {
      clearInterval(progress);
      reject(new TemporalBuildError(`could not run ${go}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearInterval(progress);
      if (code === 0) {
        log(`built the embedded Temporal server in ${Math.round((Date.now() - started) / 1000)}s`);
        resolve();
        return;
      }
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      reject(new TemporalBuildError(`go build of the embedded Temporal server ${how}:\n${outputTail.trim()}`));
    });
  });
}

export async function ensureTemporalBinary(opts: EnsureTemporalBinaryOptions = {}): Promise<string> {
  const log = opts.log ?? defaultLog;
  const override = process.env.NOVACRON_TEMPORAL_BIN;
  if (override) {
    if (!isExecutable(override)) {
      throw new TemporalBuildError(`NOVACRON_TEMPORAL_BIN=${override} is not an executable file`);
    }
    return override;
  }

  const binary = temporalBinaryPath();
  if (isExecutable(binary)) return binary;

  const go = findGo();
  if (!go) {
    throw new TemporalBuildError(
      'Go is required to build the embedded Temporal server but `go` was not found: install Go 1.21 or later ' +
        `(https://go.dev/dl/; it fetches go${requiredGoVersion()} itself) and retry, or set TEMPORAL_ADDRESS to use an ` +
        'external Temporal cluster',
    );
  }

  const dir = path.dirname(binary);
  await mkdir(dir, { recursive: true });
  return withBuildLock(path.join(dir, '.build.lock'), log, async () => {
    if (isExecutable(binary)) return binary;
    log(`building the Temporal server from Go modules, once, several minutes; cached in ${dir}`);
    const tmp = path.join(dir, `.${BINARY_NAME}.tmp-${process.pid}`);
    try {
      await runGoBuild(go, tmp, log);
      await chmod(tmp, 0o755);
      // Rename is atomic within a directory, so a concurrent reader sees either no binary or a complete one.
      await rename(tmp, binary);
    } finally {
      await rm(tmp, { force: true });
    }
    return binary;
  });
}

if (require.main === module) {
  ensureTemporalBinary()
    .then((binary) => {
      process.stdout.write(`${binary}\n`);
    })
    .catch((err: unknown) => {
      process.stderr.write(`novacron: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    });
}
