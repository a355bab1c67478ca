/**
 * What every results file records about the run that wrote it, so that a published figure can be traced to the
 * command, the code, the machine and the load it was measured under. Node's `os` module and two git commands give
 * all of it; a package such as systeminformation would add a dependency for a handful of fields.
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';

/** The repository root, which commands and paths in results files are relative to. */
export const ROOT = path.resolve(__dirname, '..');
/** Enough to see what kind of change was in the tree; the count says how many more there were. */
const MAX_LISTED_CHANGES = 30;

/** 1, 5 and 15-minute load averages. */
export type LoadAverage = [number, number, number];

export interface RunMetadata {
  benchmark: string;
  /** The command line that reproduces the run, with the environment variables that shaped it. */
  command: string;
  startedAt: string;
  finishedAt: string;
  git: { commit: string; dirty: boolean; changes: string[]; changeCount: number };
  machine: { cpus: number; cpuModel: string; memoryGiB: number; kernel: string; node: string };
  loadAverage: { start: LoadAverage; end: LoadAverage };
}

/** Environment variables that change what a benchmark does, and so belong in the command that reruns it. */
const SHAPING_PREFIXES = ['NOVACRON_BENCH_', 'NOVACRON_DWCP_'];

export function benchCommand(name: string, env: NodeJS.ProcessEnv = process.env): string {
  const shaping = Object.entries(env)
    .filter(([key, value]) => value !== undefined && value !== '' && SHAPING_PREFIXES.some((p) => key.startsWith(p)))
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([key, value]) => `${key}=${value}`);
  return [...shaping, `npm run bench -- ${name}`].join(' ');
}

function git(args: string[]): string | undefined {
  try {
    return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    // Not a git checkout (an unpacked tarball): the results say so rather than failing the run.
    return undefined;
  }
}

function gitState(): RunMetadata['git'] {
  const commit = git(['rev-parse', 'HEAD'])?.trim() ?? 'unknown';
  const changes = (git(['status', '--porcelain', '--untracked-files=normal']) ?? '')
    .split('\n')
    .filter((line) => line.trim() !== '');
  return {
    commit,
    dirty: changes.length > 0,
    changes: changes.slice(0, MAX_LISTED_CHANGES).map((line) => line.trim()),
    changeCount: changes.length,
  };
}

/** The 1, 5 and 15 minute load averages, to two decimals. */
export function loadAverage(): LoadAverage {
  const [one = 0, five = 0, fifteen = 0] = os.loadavg().map((v) => Math.round(v * 100) / 100);
  return [one, five, fifteen];
}

export interface RunRecorder {
  readonly benchmark: string;
  readonly command: string;
  /** Called once the measuring is over: the end load average and time close the record. */
  finish(): RunMetadata;
}

/** Takes the start of the record: call it before the benchmark starts anything. */
export function startRun(input: { benchmark: string; command: string }): RunRecorder {
  const startedAt = new Date().toISOString();
  const start = loadAverage();
  const gitAtStart = gitState();
  const machine: RunMetadata['machine'] = {
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
  };
  return {
    benchmark: input.benchmark,
    command: input.command,
    finish: () => ({
      benchmark: input.benchmark,
      command: input.command,
      startedAt,
      finishedAt: new Date().toISOString(),
      git: gitAtStart,
      machine,
      loadAverage: { start, end: loadAverage() },
    }),
  };
}
